//! The certificates TLS checks trust: the system store (with `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`, as the Go monitor honours them) plus an optional extra CA file.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A TLS client configuration for checks: verifies chain and hostname, TLS 1.2–1.3.
#[derive(Clone)]
pub struct Trust {
    config: Arc<rustls::ClientConfig>,
    roots: usize,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").field("roots", &self.roots).finish()
    }
}

impl Trust {
    /// Loads the system roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` win, as in Go) and the PEM
    /// certificates of `ca_file`. Fails only when `ca_file` cannot be read or nothing at all
    /// is trusted.
    pub fn load(ca_file: Option<&Path>) -> Result<Trust, String> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "a system certificate could not be loaded");
        }
        let (added, _) = roots.add_parsable_certificates(native.certs);
        let mut n = added;
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("checks.ca_file {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("checks.ca_file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "checks.ca_file {}: no PEM certificate in it",
                    path.display()
                ));
            }
            let (ok, bad) = roots.add_parsable_certificates(certs);
            if bad > 0 {
                return Err(format!(
                    "checks.ca_file {}: {bad} certificate(s) could not be used",
                    path.display()
                ));
            }
            n += ok;
        }
        if n == 0 {
            return Err(
                "no trusted certificates: install ca-certificates, or set SSL_CERT_FILE or IbpNode.checks.ca_file"
                    .into(),
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Trust {
            config: Arc::new(config),
            roots: n,
        })
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }
}
