//! Check targets (checks.md §1.4, `parseCheckTarget`): what host, port and request URI a
//! check dials for an RPC URL or a domain. Hostnames are never resolved: the member's IP is
//! dialled and the hostname goes only into SNI and `Host`.

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Lower-case scheme.
    pub scheme: String,
    /// Lower-case hostname, without brackets or port.
    pub host: String,
    /// The explicit port, else the original scheme's default (`443` for https/wss, `80` for
    /// http/ws, empty otherwise).
    pub port: String,
    /// Escaped path (`/` when empty) plus `?query`; no fragment or userinfo.
    pub request_uri: String,
    /// `scheme://host[:port if not the scheme default]request_uri`.
    pub url: String,
}

/// How a check dials a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// Over TLS (anything but `http`/`ws`).
    pub secure: bool,
    /// The TCP port (the scheme's default when none or a bad one is given).
    pub port: u16,
    /// The URL to ask for, with the check's own scheme and the default port left out.
    pub url: String,
}

impl Target {
    /// How to dial this target with `tls` or `plain` as the URL scheme (`https`/`http`,
    /// `wss`/`ws`).
    pub fn dial(&self, tls: &str, plain: &str) -> Dial {
        let secure = !matches!(self.scheme.as_str(), "http" | "ws");
        let scheme = if secure { tls } else { plain };
        let default_port = if secure { "443" } else { "80" };
        let port: u16 = self.port.parse().unwrap_or(if secure { 443 } else { 80 });
        let authority = if self.port == default_port || self.port.is_empty() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        Dial {
            secure,
            port,
            url: format!("{scheme}://{authority}{}", self.request_uri),
        }
    }
}

/// Parses `raw` as Go's `parseCheckTarget(raw, default_scheme)` does.
pub fn parse_check_target(raw: &str, default_scheme: &str) -> Result<Target, String> {
    let t = raw.trim();
    if t.is_empty() {
        return Err("empty target".into());
    }
    let with_scheme = if t.contains("://") {
        t.to_string()
    } else {
        format!("{default_scheme}://{t}")
    };
    let u = url::Url::parse(&with_scheme).map_err(|e| format!("invalid target {raw:?}: {e}"))?;
    let scheme = u.scheme().to_ascii_lowercase();
    let host = u
        .host_str()
        .map(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        })
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("target {raw:?} is missing a host"))?;
    let default_port = match scheme.as_str() {
        "https" | "wss" => "443",
        "http" | "ws" => "80",
        _ => "",
    };
    let port = u
        .port()
        .map(|p| p.to_string())
        .unwrap_or_else(|| default_port.to_string());
    let path = if u.path().is_empty() { "/" } else { u.path() };
    let request_uri = match u.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let host_in_url = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let url = if port.is_empty() || port == default_port {
        format!("{scheme}://{host_in_url}{request_uri}")
    } else {
        format!("{scheme}://{host_in_url}:{port}{request_uri}")
    };
    Ok(Target {
        scheme,
        host,
        port,
        request_uri,
        url,
    })
}

/// The hostname of a URL (`domain(u)`), empty when it does not parse. Never a port.
pub fn domain(url: &str) -> String {
    parse_check_target(url, "https")
        .map(|t| t.host)
        .unwrap_or_default()
}

/// The port a URL names or implies (`443` for wss/https, `80` for ws/http).
pub fn port(url: &str, default_scheme: &str) -> Option<u16> {
    parse_check_target(url, default_scheme)
        .ok()
        .and_then(|t| t.port.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_the_go_monitor_does() {
        let t = parse_check_target("wss://RPC.Dotters.Network/paseo", "wss").expect("ok");
        assert_eq!(
            (
                t.scheme.as_str(),
                t.host.as_str(),
                t.port.as_str(),
                t.request_uri.as_str()
            ),
            ("wss", "rpc.dotters.network", "443", "/paseo")
        );
        assert_eq!(t.url, "wss://rpc.dotters.network/paseo");
        let t =
            parse_check_target("ws://rpc.example.test:9944/testnet?x=1#frag", "wss").expect("ok");
        assert_eq!(t.port, "9944");
        assert_eq!(t.request_uri, "/testnet?x=1");
        assert_eq!(t.url, "ws://rpc.example.test:9944/testnet?x=1");
        let t = parse_check_target("paseo.dotters.network", "https").expect("ok");
        assert_eq!((t.port.as_str(), t.request_uri.as_str()), ("443", "/"));
        assert_eq!(
            parse_check_target("  ", "https"),
            Err("empty target".into())
        );
        assert!(parse_check_target("wss://", "wss").is_err());
        assert_eq!(
            domain("wss://eth-asset-hub-paseo.dotters.network/x"),
            "eth-asset-hub-paseo.dotters.network"
        );
        assert_eq!(domain("::"), "");
        assert_eq!(port("wss://a.b:8443/x", "wss"), Some(8443));
        assert_eq!(port("wss://a.b/x", "wss"), Some(443));
    }
}
