//! `IbpNode.security`: the node's key, the trust list, the mode, and the HTTP write lock.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ibp_trust::{Identity, Mode, TrustEntry, TrustList};
use serde::Deserialize;

use super::{ConfigError, cerr, duration};
use crate::security::{DEFAULT_REPLAY_MEMORY, Security, TrustSources};

/// Default largest HTTP request body.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;
/// Default most HTTP connections at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The file section (these names are part of the interface).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySection {
    /// `off` (default), `verify` or `enforce`.
    pub mode: Option<String>,
    /// The node's NKey seed file (default: `IbpNode.nats.nkey_seed`).
    pub seed_file: Option<PathBuf>,
    /// Trusted keys.
    pub trust: Option<Vec<TrustEntry>>,
    /// More trusted keys, in a file holding the same array; reloaded like the member list.
    pub trust_file: Option<PathBuf>,
    /// The age window of a signature (`2m`).
    pub max_age: Option<String>,
    /// The bearer token HTTP write endpoints require.
    pub http_write_token_file: Option<PathBuf>,
    /// Signatures remembered against replays (262144).
    pub replay_memory: Option<usize>,
    /// Largest HTTP request body, bytes (4 MiB); larger gets 413.
    pub http_max_body: Option<usize>,
    /// Most HTTP connections at once (1024); more are closed at once.
    pub http_max_connections: Option<usize>,
}

/// The resolved settings.
#[derive(Clone)]
pub struct SecurityConfig {
    /// The mode.
    pub mode: Mode,
    /// The node's key.
    pub identity: Option<Arc<Identity>>,
    /// Where the key came from (for `check-config`).
    pub identity_source: Option<String>,
    /// Where the trust list comes from.
    pub sources: TrustSources,
    /// The list as loaded at start.
    pub trust: TrustList,
    /// The age window.
    pub max_age: Duration,
    /// The replay memory.
    pub replay_memory: usize,
    /// The HTTP write token.
    pub http_write_token: Option<String>,
    /// Largest request body.
    pub http_max_body: usize,
    /// Most connections.
    pub http_max_connections: usize,
    /// Things to say at start (a readable seed file, an untrusted own key, …).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("mode", &self.mode)
            .field(
                "public_key",
                &self.identity.as_ref().map(|i| i.public_key()),
            )
            .field("identity_source", &self.identity_source)
            .field("trusted", &self.trust.len())
            .field("trust_file", &self.sources.file)
            .field("max_age", &self.max_age)
            .field(
                "http_write_token",
                &self.http_write_token.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            mode: Mode::Off,
            identity: None,
            identity_source: None,
            sources: TrustSources::default(),
            trust: TrustList::default(),
            max_age: Duration::from_secs(120),
            replay_memory: DEFAULT_REPLAY_MEMORY,
            http_write_token: None,
            http_max_body: DEFAULT_MAX_BODY,
            http_max_connections: DEFAULT_MAX_CONNECTIONS,
            warnings: Vec::new(),
        }
    }
}

fn read_secret(
    field: &str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| cerr(field, format!("cannot read {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            warnings.push(format!(
                "{field}: {} is readable by other users (mode {:o}); chmod 600 it",
                path.display(),
                m.permissions().mode() & 0o777
            ));
        }
    }
    let t = text.trim().to_string();
    if t.is_empty() {
        return Err(cerr(field, format!("{} is empty", path.display())));
    }
    Ok(t)
}

impl SecurityConfig {
    /// Resolves the section; `nkey_seed` is `IbpNode.nats.nkey_seed`.
    pub fn resolve(
        sec: Option<&SecuritySection>,
        nkey_seed: Option<&str>,
    ) -> Result<SecurityConfig, ConfigError> {
        let d = SecuritySection::default();
        let sec = sec.unwrap_or(&d);
        let mut out = SecurityConfig::default();
        if let Some(m) = &sec.mode {
            out.mode = m
                .parse()
                .map_err(|e: String| cerr("IbpNode.security.mode", e))?;
        }
        if let Some(p) = &sec.seed_file {
            let seed = read_secret("IbpNode.security.seed_file", p, &mut out.warnings)?;
            let id = Identity::from_seed(&seed).map_err(|e| {
                cerr(
                    "IbpNode.security.seed_file",
                    format!("{}: {e}", p.display()),
                )
            })?;
            out.identity = Some(Arc::new(id));
            out.identity_source = Some(format!("IbpNode.security.seed_file ({})", p.display()));
        } else if let Some(seed) = nkey_seed {
            let id = Identity::from_seed(seed)
                .map_err(|e| cerr("IbpNode.nats.nkey_seed", e.to_string()))?;
            out.identity = Some(Arc::new(id));
            out.identity_source = Some("IbpNode.nats.nkey_seed".into());
        }
        out.sources = TrustSources {
            inline: sec.trust.clone().unwrap_or_default(),
            file: sec.trust_file.clone(),
        };
        out.trust = out.sources.load().map_err(|e| {
            let (field, reason) = e.split_once(": ").unwrap_or(("IbpNode.security.trust", &e));
            cerr(field, reason)
        })?;
        if let Some(a) = &sec.max_age {
            out.max_age = duration("IbpNode.security.max_age", a)?;
            if out.max_age.is_zero() {
                return Err(cerr("IbpNode.security.max_age", "must be positive"));
            }
        }
        if let Some(n) = sec.replay_memory {
            if n == 0 {
                return Err(cerr("IbpNode.security.replay_memory", "must be positive"));
            }
            out.replay_memory = n;
        }
        if let Some(p) = &sec.http_write_token_file {
            out.http_write_token = Some(read_secret(
                "IbpNode.security.http_write_token_file",
                p,
                &mut out.warnings,
            )?);
        }
        if let Some(n) = sec.http_max_body {
            if n == 0 {
                return Err(cerr("IbpNode.security.http_max_body", "must be positive"));
            }
            out.http_max_body = n;
        }
        if let Some(n) = sec.http_max_connections {
            if n == 0 {
                return Err(cerr(
                    "IbpNode.security.http_max_connections",
                    "must be positive",
                ));
            }
            out.http_max_connections = n;
        }
        if out.mode == Mode::Enforce {
            if out.identity.is_none() {
                return Err(cerr(
                    "IbpNode.security.mode",
                    "enforce needs this node's key (IbpNode.security.seed_file or IbpNode.nats.nkey_seed): the others drop what it does not sign",
                ));
            }
            if out.trust.is_empty() {
                return Err(cerr(
                    "IbpNode.security.trust",
                    "enforce needs a trust list (trust or trust_file): without one every message is dropped",
                ));
            }
        }
        if out.mode == Mode::Verify && out.trust.is_empty() {
            out.warnings.push(
                "IbpNode.security.mode is verify with an empty trust list: every message will be reported untrusted".into(),
            );
        }
        Ok(out)
    }

    /// The node's runtime security state.
    pub fn runtime(&self) -> Security {
        Security::new(
            self.mode,
            self.identity.clone(),
            self.sources.clone(),
            self.trust.clone(),
            self.max_age,
            self.replay_memory,
        )
    }
}
