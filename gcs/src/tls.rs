//! Optional TLS (rustls through tonic) for every connection of a cluster that spans hosts.
//!
//! Configured per process by three PEM files in the environment, which `fleet cluster up`
//! hands to every daemon (and a driver or operator sets the same): `FLEET_TLS_CERT` (this
//! process's certificate chain), `FLEET_TLS_KEY` (its private key) and `FLEET_TLS_CA` (the
//! cluster's CA). Both directions are authenticated: servers present their certificate and
//! require the client's (mutual TLS), each checked against the CA. A client checks the
//! server's certificate against the host of the address it dials, or against
//! `FLEET_TLS_SERVER_NAME` when the cluster uses one certificate for every process (its
//! name, e.g. `fleet.internal`, then has to be in the certificate). The cluster token is
//! checked on top of TLS, as without it.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Environment variable: this process's certificate chain (PEM file).
pub const TLS_CERT_ENV: &str = "FLEET_TLS_CERT";
/// Environment variable: this process's private key (PEM file).
pub const TLS_KEY_ENV: &str = "FLEET_TLS_KEY";
/// Environment variable: the cluster's certificate authority (PEM file).
pub const TLS_CA_ENV: &str = "FLEET_TLS_CA";
/// Environment variable: the name every server certificate is checked against (default:
/// the host of the address dialled).
pub const TLS_SERVER_NAME_ENV: &str = "FLEET_TLS_SERVER_NAME";

/// A PEM file larger than this is not a certificate or key.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// This process's TLS material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    cert: String,
    key: String,
    ca: String,
    server_name: Option<String>,
}

/// Where the three files are (as configured).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// The cluster's CA.
    pub ca: PathBuf,
    /// The name servers' certificates carry (None: the dialled host).
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// The environment entries that hand these files to a daemon.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (TLS_CERT_ENV.to_string(), self.cert.display().to_string()),
            (TLS_KEY_ENV.to_string(), self.key.display().to_string()),
            (TLS_CA_ENV.to_string(), self.ca.display().to_string()),
        ];
        if let Some(name) = &self.server_name {
            env.push((TLS_SERVER_NAME_ENV.to_string(), name.clone()));
        }
        env
    }
}

fn read_pem(variable: &str, path: &Path, kind: &str) -> Result<String, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| {
            format!(
                "{variable}={}: cannot read it ({e}); give the path of the {kind} (PEM)",
                path.display()
            )
        })?
        .len();
    if size > MAX_PEM_BYTES {
        return Err(format!(
            "{variable}={}: {size} bytes is not a PEM {kind}",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{variable}={}: cannot read it ({e})", path.display()))?;
    if !text.contains("-----BEGIN ") {
        return Err(format!(
            "{variable}={}: not a PEM file (no -----BEGIN line); give the {kind} in PEM form",
            path.display()
        ));
    }
    Ok(text)
}

impl TlsSettings {
    /// Reads the three files; the error names the variable, the file and the fix.
    pub fn load(files: &TlsFiles) -> Result<Self, String> {
        Ok(TlsSettings {
            cert: read_pem(TLS_CERT_ENV, &files.cert, "certificate chain")?,
            key: read_pem(TLS_KEY_ENV, &files.key, "private key")?,
            ca: read_pem(TLS_CA_ENV, &files.ca, "CA certificate")?,
            server_name: files.server_name.clone().filter(|n| !n.is_empty()),
        })
    }

    /// The files named by the environment: none set is plaintext (`None`); some but not
    /// all is an error naming the missing ones.
    pub fn files_from_env() -> Result<Option<TlsFiles>, String> {
        let get = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let (cert, key, ca) = (get(TLS_CERT_ENV), get(TLS_KEY_ENV), get(TLS_CA_ENV));
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                cert,
                key,
                ca,
                server_name: std::env::var(TLS_SERVER_NAME_ENV)
                    .ok()
                    .filter(|n| !n.is_empty()),
            })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), TLS_CERT_ENV),
                    (key.is_none(), TLS_KEY_ENV),
                    (ca.is_none(), TLS_CA_ENV),
                ]
                .into_iter()
                .filter_map(|(missing, name)| missing.then_some(name))
                .collect();
                Err(format!(
                    "TLS is half configured: {} not set; set all of {TLS_CERT_ENV}, {TLS_KEY_ENV} and {TLS_CA_ENV}, or none",
                    missing.join(" and ")
                ))
            }
        }
    }

    /// What a server presents, and the clients it accepts (those with a certificate from
    /// the cluster's CA).
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// What a client dialling `address` (`HOST:PORT`) presents and checks.
    pub fn client_config(&self, address: &str) -> ClientTlsConfig {
        let host = address
            .rsplit_once(':')
            .map_or(address, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(self.server_name.clone().unwrap_or_else(|| host.to_string()))
    }
}

/// `Some(Err)`: a configuration error, reported by every use until fixed.
static TLS: RwLock<Option<Result<Option<TlsSettings>, String>>> = RwLock::new(None);

/// This process's TLS settings: from the environment on first use, unless [`set`] gave
/// them. `Ok(None)`: plaintext.
pub fn current() -> Result<Option<TlsSettings>, String> {
    if let Some(settings) = TLS.read().unwrap_or_else(|e| e.into_inner()).clone() {
        return settings;
    }
    let settings = TlsSettings::files_from_env()
        .and_then(|files| files.as_ref().map(TlsSettings::load).transpose());
    *TLS.write().unwrap_or_else(|e| e.into_inner()) = Some(settings.clone());
    settings
}

/// Sets this process's TLS settings (connections and servers made later use them).
pub fn set(settings: Option<TlsSettings>) {
    *TLS.write().unwrap_or_else(|e| e.into_inner()) = Some(Ok(settings));
}

/// A server builder with this process's TLS, when configured.
pub fn server_builder() -> Result<tonic::transport::Server, String> {
    let builder = tonic::transport::Server::builder();
    match current()? {
        None => Ok(builder),
        Some(tls) => builder
            .tls_config(tls.server_config())
            .map_err(|e| format!("the TLS certificate or key is unusable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_configured_or_unreadable_tls_names_the_variable_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = TlsFiles {
            cert: dir.path().join("absent.pem"),
            key: dir.path().join("absent.key"),
            ca: dir.path().join("ca.pem"),
            server_name: None,
        };
        let error = TlsSettings::load(&missing).expect_err("no such file");
        assert!(
            error.contains(TLS_CERT_ENV) && error.contains("absent.pem"),
            "{error}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let error = TlsSettings::load(&TlsFiles {
            cert: garbage.clone(),
            key: garbage.clone(),
            ca: garbage,
            server_name: None,
        })
        .expect_err("not PEM");
        assert!(error.contains("not a PEM file"), "{error}");
    }
}
