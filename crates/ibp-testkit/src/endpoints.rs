//! Fake RPC endpoints on loopback for the monitor's checks: a Substrate node (WebSocket
//! JSON-RPC, a real `jsonrpsee` server), an Ethereum node (HTTP JSON-RPC, `jsonrpsee` too),
//! TLS listeners with certificates from a private CA, and raw servers for answers no real
//! server gives (malformed JSON-RPC, an HTTP 200 instead of an upgrade, an HTTP 500).
//!
//! Every endpoint sits behind a [`Gate`]: a loopback port that can be closed (connection
//! refused, like a stopped node) and opened again on the same port, optionally
//! terminating TLS with a certificate of a [`TestCa`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use jsonrpsee::RpcModule;
use jsonrpsee::server::{Server, ServerHandle};
use jsonrpsee::types::ErrorObjectOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::HarnessError;

fn crypto<E: std::fmt::Display>(e: E) -> HarnessError {
    HarnessError::Crypto(e.to_string())
}

/// A private certificate authority for TLS tests.
pub struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
    /// The CA certificate file (PEM), to trust.
    pub pem_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// A leaf certificate with its key.
#[derive(Clone)]
pub struct Leaf {
    /// DER certificate chain (leaf first).
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// DER private key.
    pub key: Arc<rustls::pki_types::PrivateKeyDer<'static>>,
}

impl TestCa {
    /// A new CA; its certificate is written to a temporary file.
    pub fn new() -> Result<TestCa, HarnessError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().map_err(crypto)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "ibp checks test CA");
        let cert = p.self_signed(&key).map_err(crypto)?;
        let dir = tempfile::tempdir()?;
        let pem_file = dir.path().join("ca.pem");
        std::fs::write(&pem_file, cert.pem())?;
        Ok(TestCa {
            key,
            cert,
            pem_file,
            _dir: dir,
        })
    }

    /// A certificate for `names`, valid from a day ago until `valid_secs` from now
    /// (negative: already expired).
    pub fn leaf(&self, names: &[&str], valid_secs: i64) -> Result<Leaf, HarnessError> {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().map_err(crypto)?;
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .map_err(crypto)?;
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        p.not_before = time::OffsetDateTime::from_unix_timestamp(now - 86_400).map_err(crypto)?;
        p.not_after =
            time::OffsetDateTime::from_unix_timestamp(now + valid_secs).map_err(crypto)?;
        let cert = p.signed_by(&key, &self.cert, &self.key).map_err(crypto)?;
        Ok(Leaf {
            chain: vec![cert.der().clone()],
            key: Arc::new(rustls::pki_types::PrivateKeyDer::Pkcs8(
                key.serialize_der().into(),
            )),
        })
    }

    /// The CA certificate file.
    pub fn path(&self) -> &Path {
        &self.pem_file
    }
}

fn server_config(leaf: &Leaf) -> Result<Arc<rustls::ServerConfig>, HarnessError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(crypto)?
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .map_err(crypto)?;
    Ok(Arc::new(cfg))
}

/// What a [`Gate`] does with a connection.
#[derive(Clone)]
enum Behind {
    /// Pipes it to a backend port.
    Backend(SocketAddr),
    /// Completes the TLS handshake, then holds the connection until the peer closes it.
    Hold,
    /// Answers with these bytes and closes.
    Raw(Arc<Vec<u8>>),
}

/// A loopback port in front of an endpoint, that can be closed and opened again.
pub struct Gate {
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    behind: Behind,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Gate {
    async fn open_on(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        behind: Behind,
    ) -> Result<Gate, HarnessError> {
        let listener = Self::bind(addr)?;
        let gate = Gate {
            addr: listener.local_addr()?,
            tls,
            behind,
            task: Mutex::new(None),
        };
        gate.serve(listener);
        Ok(gate)
    }

    fn bind(addr: SocketAddr) -> Result<TcpListener, HarnessError> {
        let socket = if addr.is_ipv6() {
            TcpSocket::new_v6()?
        } else {
            TcpSocket::new_v4()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(socket.listen(1024)?)
    }

    fn serve(&self, listener: TcpListener) {
        let tls = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let behind = self.behind.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tls = tls.clone();
                let behind = behind.clone();
                tokio::spawn(async move {
                    let _ = serve_conn(stream, tls, behind).await;
                });
            }
        });
        if let Ok(mut t) = self.task.lock() {
            *t = Some(task);
        }
    }

    /// The port's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the port: once this returns, new connections are refused.
    pub async fn close(&self) {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            t.abort();
            // The listener is dropped when the aborted task is: wait for it.
            let _ = t.await;
        }
    }

    /// Opens the port again (same address).
    pub async fn open(&self) -> Result<(), HarnessError> {
        self.close().await;
        let listener = Self::bind(self.addr)?;
        self.serve(listener);
        Ok(())
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().ok().and_then(|mut t| t.take()) {
            t.abort();
        }
    }
}

async fn serve_conn(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    behind: Behind,
) -> std::io::Result<()> {
    match tls {
        Some(acceptor) => {
            let s = acceptor.accept(stream).await?;
            finish(s, behind).await
        }
        None => finish(stream, behind).await,
    }
}

async fn finish<S>(mut s: S, behind: Behind) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match behind {
        Behind::Backend(addr) => {
            let mut b = TcpStream::connect(addr).await?;
            let _ = tokio::io::copy_bidirectional(&mut s, &mut b).await;
        }
        Behind::Hold => {
            let mut buf = [0u8; 1024];
            while s.read(&mut buf).await? > 0 {}
        }
        Behind::Raw(bytes) => {
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            s.write_all(&bytes).await?;
            s.shutdown().await?;
        }
    }
    Ok(())
}

/// A TLS listener presenting `leaf` (the `ssl` check's peer).
pub async fn tls_listener(leaf: &Leaf) -> Result<Gate, HarnessError> {
    Gate::open_on(
        "127.0.0.1:0".parse().map_err(crypto)?,
        Some(server_config(leaf)?),
        Behind::Hold,
    )
    .await
}

/// A loopback port answering every connection with `bytes` (TLS-wrapped with `leaf`).
pub async fn raw_responder(bytes: &[u8], leaf: Option<&Leaf>) -> Result<Gate, HarnessError> {
    Gate::open_on(
        "127.0.0.1:0".parse().map_err(crypto)?,
        leaf.map(server_config).transpose()?,
        Behind::Raw(Arc::new(bytes.to_vec())),
    )
    .await
}

/// How a fake Substrate node answers (checks.md §6). Shared: change it while it runs.
#[derive(Debug, Clone)]
pub struct Substrate {
    /// `chain_getBlockHash []` (`None`: `null`).
    pub latest: Option<String>,
    /// `chain_getBlockHash [0]`.
    pub genesis: String,
    /// `system_chain`.
    pub chain: String,
    /// The genesis header's `stateRoot` (`None`: no such field).
    pub state_root: Option<String>,
    /// `system_health.peers`.
    pub peers: Value,
    /// `system_health.isSyncing` (`None`: the field is absent).
    pub syncing: Option<bool>,
    /// `system_health` answers this error instead.
    pub health_error: Option<(i32, String)>,
    /// This method never answers.
    pub silent: Option<String>,
    /// The latest header's number (`chain_getHeader []`).
    pub head: u64,
}

impl Default for Substrate {
    fn default() -> Self {
        Substrate {
            latest: Some(format!("0x{}", "11".repeat(32))),
            genesis: format!("0x{}", "77".repeat(32)),
            chain: "Testnet".into(),
            state_root: Some("0xabc1".into()),
            peers: json!(5),
            syncing: Some(false),
            health_error: None,
            silent: None,
            head: 100,
        }
    }
}

/// A running fake node: its behaviour, its gate and its server.
pub struct FakeNode<B> {
    /// What it answers; change it at any time.
    pub behaviour: Arc<Mutex<B>>,
    /// The port checks dial.
    pub gate: Gate,
    server: ServerHandle,
}

impl<B> FakeNode<B> {
    /// The port checks dial.
    pub fn port(&self) -> u16 {
        self.gate.addr().port()
    }

    /// Changes what it answers.
    pub fn set(&self, f: impl FnOnce(&mut B)) {
        if let Ok(mut b) = self.behaviour.lock() {
            f(&mut b);
        }
    }
}

impl<B> Drop for FakeNode<B> {
    fn drop(&mut self) {
        let _ = self.server.stop();
    }
}

fn read<B: Clone>(b: &Arc<Mutex<B>>) -> B {
    b.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

async fn silence<B: Clone>(b: &Arc<Mutex<B>>, method: &str, silent: impl Fn(&B) -> Option<String>) {
    if silent(&read(b)).as_deref() == Some(method) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// A Substrate-like JSON-RPC server over WebSocket (a real `jsonrpsee` server), behind a
/// gate on 127.0.0.1 that terminates TLS with `leaf` when given.
pub async fn substrate(
    behaviour: Substrate,
    leaf: Option<&Leaf>,
) -> Result<FakeNode<Substrate>, HarnessError> {
    substrate_at("127.0.0.1".parse().map_err(crypto)?, behaviour, leaf).await
}

/// [`substrate`] with its gate on `ip` (any loopback address: 127.0.0.0/8, ::1), so several
/// fake members can have addresses of their own.
pub async fn substrate_at(
    ip: std::net::IpAddr,
    behaviour: Substrate,
    leaf: Option<&Leaf>,
) -> Result<FakeNode<Substrate>, HarnessError> {
    let b = Arc::new(Mutex::new(behaviour));
    let mut m = RpcModule::new(b.clone());
    let rpc = |e: jsonrpsee::core::RegisterMethodError| crypto(e);
    m.register_async_method("chain_getBlockHash", |p, ctx, _| async move {
        silence(&ctx, "chain_getBlockHash", |s: &Substrate| s.silent.clone()).await;
        let s = read(&ctx);
        let raw = p.as_str().unwrap_or("[]").replace(' ', "");
        if raw == "[0]" {
            Ok::<Value, ErrorObjectOwned>(json!(s.genesis))
        } else {
            Ok(s.latest.map(Value::from).unwrap_or(Value::Null))
        }
    })
    .map_err(rpc)?;
    m.register_async_method("system_chain", |_, ctx, _| async move {
        silence(&ctx, "system_chain", |s: &Substrate| s.silent.clone()).await;
        Ok::<Value, ErrorObjectOwned>(json!(read(&ctx).chain))
    })
    .map_err(rpc)?;
    m.register_async_method("chain_getHeader", |p, ctx, _| async move {
        silence(&ctx, "chain_getHeader", |s: &Substrate| s.silent.clone()).await;
        let s = read(&ctx);
        let raw = p.as_str().unwrap_or("[]").replace(' ', "");
        if raw == "[]" || raw.is_empty() || raw == "null" {
            return Ok::<Value, ErrorObjectOwned>(
                json!({"number": format!("0x{:x}", s.head), "parentHash": "0x00"}),
            );
        }
        let mut h = json!({"number": "0x0", "parentHash": "0x00"});
        if let Some(r) = s.state_root {
            h["stateRoot"] = json!(r);
        }
        Ok(h)
    })
    .map_err(rpc)?;
    m.register_async_method("system_health", |_, ctx, _| async move {
        silence(&ctx, "system_health", |s: &Substrate| s.silent.clone()).await;
        let s = read(&ctx);
        if let Some((code, msg)) = s.health_error {
            return Err(ErrorObjectOwned::owned(code, msg, None::<()>));
        }
        let mut h = json!({"peers": s.peers, "shouldHavePeers": true});
        if let Some(sy) = s.syncing {
            h["isSyncing"] = json!(sy);
        }
        Ok::<Value, ErrorObjectOwned>(h)
    })
    .map_err(rpc)?;
    start(m, b, leaf, ip).await
}

/// How a fake Ethereum node answers (checks.md §6).
#[derive(Debug, Clone)]
pub struct Ethereum {
    /// `eth_chainId`.
    pub chain_id: Value,
    /// `eth_blockNumber`.
    pub block: Value,
    /// `net_version`.
    pub net_version: Value,
    /// `eth_syncing`.
    pub syncing: Value,
    /// A method answering this JSON-RPC error.
    pub error: Option<(String, i32, String)>,
}

impl Default for Ethereum {
    fn default() -> Self {
        Ethereum {
            chain_id: json!("0x190f1b41"),
            block: json!("0x1"),
            net_version: json!("420420417"),
            syncing: json!(false),
            error: None,
        }
    }
}

/// An Ethereum-like JSON-RPC server over HTTP (a real `jsonrpsee` server).
pub async fn ethereum(
    behaviour: Ethereum,
    leaf: Option<&Leaf>,
) -> Result<FakeNode<Ethereum>, HarnessError> {
    let b = Arc::new(Mutex::new(behaviour));
    let mut m = RpcModule::new(b.clone());
    for method in [
        "eth_chainId",
        "eth_blockNumber",
        "net_version",
        "eth_syncing",
    ] {
        m.register_method(method, move |_, ctx: &Arc<Mutex<Ethereum>>, _| {
            let e = read(ctx);
            if let Some((m, code, msg)) = &e.error
                && m == method
            {
                return Err(ErrorObjectOwned::owned(*code, msg.clone(), None::<()>));
            }
            Ok::<Value, ErrorObjectOwned>(match method {
                "eth_chainId" => e.chain_id,
                "eth_blockNumber" => e.block,
                "net_version" => e.net_version,
                _ => e.syncing,
            })
        })
        .map_err(crypto)?;
    }
    start(m, b, leaf, "127.0.0.1".parse().map_err(crypto)?).await
}

async fn start<B: Send + Sync + 'static>(
    m: RpcModule<Arc<Mutex<B>>>,
    b: Arc<Mutex<B>>,
    leaf: Option<&Leaf>,
    ip: std::net::IpAddr,
) -> Result<FakeNode<B>, HarnessError> {
    let config = jsonrpsee::server::ServerConfig::builder()
        .max_connections(10_000)
        .build();
    let server = Server::builder()
        .set_config(config)
        .build("127.0.0.1:0")
        .await?;
    let backend = server.local_addr()?;
    let handle = server.start(m);
    let gate = Gate::open_on(
        SocketAddr::new(ip, 0),
        leaf.map(server_config).transpose()?,
        Behind::Backend(backend),
    )
    .await?;
    Ok(FakeNode {
        behaviour: b,
        gate,
        server: handle,
    })
}

/// A WebSocket server that answers each text frame with what `reply` returns for it
/// (`None`: no answer), for replies no JSON-RPC server would send.
pub async fn scripted_ws(
    reply: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> Result<Gate, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let backend = listener.local_addr()?;
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = msg
                        && let Some(r) = reply(t.as_str())
                        && ws
                            .send(tokio_tungstenite::tungstenite::Message::Text(r.into()))
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    Gate::open_on(
        "127.0.0.1:0".parse().map_err(crypto)?,
        None,
        Behind::Backend(backend),
    )
    .await
}
