//! Dialling a member: TCP to its IP, TLS with the hostname as SNI, error texts shaped like
//! the Go monitor's (`dial tcp 127.0.0.1:443: connect: connection refused`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::tls::Trust;

/// A TCP or TLS stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects TCP to `ip:port` within `timeout`.
pub async fn dial(ip: IpAddr, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addr = SocketAddr::new(ip, port);
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {}", io_text(&e))),
        Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// The TLS handshake over `tcp` with `host` as SNI, verified against `trust`.
pub async fn tls(
    tcp: TcpStream,
    host: &str,
    trust: &Trust,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("invalid server name {host:?}: {e}"))?;
    tokio_rustls::TlsConnector::from(trust.config())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))
}

/// An I/O error as Go words it.
pub fn io_text(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset by peer".into(),
        K::TimedOut => "i/o timeout".into(),
        K::UnexpectedEof => "EOF".into(),
        _ => match e.raw_os_error() {
            Some(101) => "network is unreachable".into(),
            Some(113) => "no route to host".into(),
            _ => e.to_string(),
        },
    }
}
