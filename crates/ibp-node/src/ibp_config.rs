//! The IBP member and service lists (`System.ConfigUrls`; the format of the public
//! `ibp-network/config` repository), with the reference lookups, loaded from an http(s)
//! URL or a local path and reloaded periodically. A failed fetch or invalid JSON keeps the
//! last good copy: a node never stops because a remote config is down.

use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use ibp_lists::{IbpConfig, Member, Service, host_of};

/// Size and time limits of one list fetch: a misbehaving server (or a wrong URL pointing at
/// something huge) must not grow the node's memory or hold a reload forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// Largest accepted document, bytes.
    pub max_bytes: u64,
    /// Time limit of the whole fetch, connection to last byte.
    pub timeout: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_bytes: 8 << 20,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Reads an http(s) URL or a local path, within `limits`.
pub async fn fetch(source: &str, limits: FetchLimits) -> Result<String, String> {
    match tokio::time::timeout(limits.timeout, fetch_unbounded_time(source, limits)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{source}: not complete within {:?} (IbpNode.lists.timeout)",
            limits.timeout
        )),
    }
}

async fn fetch_unbounded_time(source: &str, limits: FetchLimits) -> Result<String, String> {
    let too_big = || {
        format!(
            "{source}: larger than {} bytes (IbpNode.lists.max_bytes); refused",
            limits.max_bytes
        )
    };
    let bytes = if source.starts_with("http://") || source.starts_with("https://") {
        // The whole fetch is bounded by the caller's timeout, which names the setting.
        let client = reqwest::Client::builder()
            .connect_timeout(limits.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let mut resp = client
            .get(source)
            .send()
            .await
            .map_err(|e| format!("GET {source}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {source}: HTTP {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > limits.max_bytes) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("GET {source}: {e}"))?
        {
            if (body.len() + chunk.len()) as u64 > limits.max_bytes {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        body
    } else {
        use tokio::io::AsyncReadExt;
        let path = source.strip_prefix("file://").unwrap_or(source);
        let f = tokio::fs::File::open(path)
            .await
            .map_err(|e| format!("read {path}: {e}"))?;
        let mut body = Vec::new();
        f.take(limits.max_bytes + 1)
            .read_to_end(&mut body)
            .await
            .map_err(|e| format!("read {path}: {e}"))?;
        if body.len() as u64 > limits.max_bytes {
            return Err(too_big());
        }
        body
    };
    String::from_utf8(bytes).map_err(|e| format!("{source}: not UTF-8 text: {e}"))
}

/// The current member/service lists, shared by a node's services, reloaded in the
/// background.
#[derive(Debug, Clone)]
pub struct SharedIbpConfig {
    inner: Arc<RwLock<Option<Arc<IbpConfig>>>>,
    limits: FetchLimits,
    /// Bumped after every successful load.
    loads: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for SharedIbpConfig {
    fn default() -> Self {
        SharedIbpConfig::with_limits(FetchLimits::default())
    }
}

impl SharedIbpConfig {
    /// A holder with a fixed config (tests, the demo).
    pub fn fixed(cfg: IbpConfig) -> SharedIbpConfig {
        SharedIbpConfig {
            inner: Arc::new(RwLock::new(Some(Arc::new(cfg)))),
            limits: FetchLimits::default(),
            loads: Arc::new(tokio::sync::watch::channel(1).0),
        }
    }

    /// A watch bumped after every successful load (services rebuild what depends on the
    /// lists).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.loads.subscribe()
    }

    /// An empty holder whose fetches keep within `limits`.
    pub fn with_limits(limits: FetchLimits) -> SharedIbpConfig {
        SharedIbpConfig {
            inner: Arc::default(),
            limits,
            loads: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// The last good copy, if any was ever loaded.
    pub fn get(&self) -> Option<Arc<IbpConfig>> {
        self.inner.read().ok().and_then(|g| g.clone())
    }

    /// Loads once from `members` and `services`; on failure keeps the last good copy and
    /// returns the error.
    pub async fn reload(&self, members: &str, services: &str) -> Result<(), String> {
        let (m, s) = tokio::join!(fetch(members, self.limits), fetch(services, self.limits));
        let cfg = IbpConfig::parse(&m?, &s?)?;
        if let Ok(mut g) = self.inner.write() {
            *g = Some(Arc::new(cfg));
        }
        self.loads.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Reloads every `period` until `stop` fires. Failures are logged and keep the last copy.
    pub fn spawn_reloader(
        &self,
        members: String,
        services: String,
        period: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match me.reload(&members, &services).await {
                    Ok(()) => {
                        let n = me
                            .get()
                            .map(|c| (c.members.len(), c.services.len()))
                            .unwrap_or_default();
                        tracing::info!(
                            members = n.0,
                            services = n.1,
                            "member and service lists loaded"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, kept_last_good = me.get().is_some(), "member/service lists not reloaded")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stop.changed() => break,
                }
            }
        })
    }
}
