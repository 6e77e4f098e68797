//! Who may write through the HTTP API. Reads stay open (Go DNS nodes read `/results`
//! without credentials); every write — any method but GET, HEAD and OPTIONS, on any path
//! but `/results`, `/dns` (PowerDNS's questions) and `/process` — needs the bearer token when one is configured, and is refused outright
//! on a non-loopback listener without one.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The write policy of one listener.
#[derive(Clone, PartialEq, Eq)]
pub enum WriteLock {
    /// Loopback listener, no token: writes are open to local processes.
    Open,
    /// Writes need `Authorization: Bearer <token>`.
    Token(String),
    /// A non-loopback listener without a token: writes are refused.
    Disabled {
        /// The listen address, for the message.
        addr: std::net::SocketAddr,
    },
}

impl std::fmt::Debug for WriteLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteLock::Open => f.write_str("Open"),
            WriteLock::Token(_) => f.write_str("Token(<set>)"),
            WriteLock::Disabled { addr } => write!(f, "Disabled({addr})"),
        }
    }
}

impl WriteLock {
    /// The policy for a listener on `addr` with an optional token.
    pub fn for_listener(addr: std::net::SocketAddr, token: Option<String>) -> WriteLock {
        match token {
            Some(t) => WriteLock::Token(t),
            None if addr.ip().is_loopback() => WriteLock::Open,
            None => WriteLock::Disabled { addr },
        }
    }

    /// What to say at start, if anything.
    pub fn warning(&self) -> Option<String> {
        match self {
            WriteLock::Disabled { addr } => Some(format!(
                "HTTP writes (POST /v1/observations, /v1/usage/hits, /v1/usage/collect) are disabled: the API listens on {addr}, not loopback, and IbpNode.security.http_write_token_file is not set"
            )),
            _ => None,
        }
    }
}

fn is_write(req: &Request) -> bool {
    // `/dns` is PowerDNS asking questions (POST), and `/process` flushes counters the
    // node holds anyway: neither changes what the node decides or answers.
    !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && !matches!(req.uri().path(), "/results" | "/dns" | "/process")
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refuse(status: StatusCode, msg: String) -> Response {
    let mut r = (status, axum::Json(json!({ "error": msg }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The middleware.
pub async fn write_lock(State(lock): State<WriteLock>, req: Request, next: Next) -> Response {
    if !is_write(&req) {
        return next.run(req).await;
    }
    match &lock {
        WriteLock::Open => next.run(req).await,
        WriteLock::Disabled { addr } => refuse(
            StatusCode::FORBIDDEN,
            format!(
                "writes are disabled: this node listens on {addr}, not loopback, and has no write token; set IbpNode.security.http_write_token_file and send Authorization: Bearer <token>"
            ),
        ),
        WriteLock::Token(t) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match given {
                Some(g) if same(g.as_bytes(), t.as_bytes()) => next.run(req).await,
                Some(_) => refuse(StatusCode::UNAUTHORIZED, "write token rejected".into()),
                None => refuse(
                    StatusCode::UNAUTHORIZED,
                    "writes need Authorization: Bearer <token> (IbpNode.security.http_write_token_file)".into(),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_follows_the_listener_and_the_token() {
        let lo: std::net::SocketAddr = "127.0.0.1:6101".parse().expect("addr");
        let v6lo: std::net::SocketAddr = "[::1]:6101".parse().expect("addr");
        let any: std::net::SocketAddr = "0.0.0.0:6101".parse().expect("addr");
        assert_eq!(WriteLock::for_listener(lo, None), WriteLock::Open);
        assert_eq!(WriteLock::for_listener(v6lo, None), WriteLock::Open);
        assert_eq!(
            WriteLock::for_listener(any, None),
            WriteLock::Disabled { addr: any }
        );
        assert!(WriteLock::for_listener(any, None).warning().is_some());
        assert_eq!(
            WriteLock::for_listener(lo, Some("t".into())),
            WriteLock::Token("t".into())
        );
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
