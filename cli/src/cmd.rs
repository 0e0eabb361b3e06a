//! One module per top-level command.

pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod gcs;
pub mod job;
pub mod kv;
pub mod list;
pub mod raylet;
pub mod status;
pub mod token;

use tokio_util::sync::CancellationToken;

/// Cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        cancel.cancel();
    });
    token
}

/// `--address` / `FLEET_ADDRESS` / the local cluster's `cluster.json`, shared by client
/// commands.
#[derive(clap::Args, Clone, Debug)]
pub struct AddressArgs {
    /// GCS replicas, comma-separated HOST:PORT (default: FLEET_ADDRESS, then the cluster
    /// that `fleet cluster up` started on this machine).
    #[arg(
        long,
        env = "FLEET_ADDRESS",
        default_value = "",
        hide_default_value = true
    )]
    pub address: String,
    /// The local cluster to use when no address is given.
    #[arg(long = "cluster", env = "FLEET_CLUSTER", default_value = "default")]
    pub cluster_name: String,
    /// Give up after this many seconds without an answer from a leader.
    #[arg(long, env = "FLEET_TIMEOUT_SECS", default_value_t = 30)]
    pub timeout_secs: u64,
}

/// Where a client command's cluster is.
pub struct ResolvedAddress {
    /// The GCS address.
    pub address: String,
    /// The local cluster's state, when the address came from it (or matches it).
    pub state: Option<fleet_cluster::ClusterState>,
}

impl AddressArgs {
    /// The address: `--address`, then `FLEET_ADDRESS`, then the `cluster.json` of the
    /// local cluster named by `--cluster` (default "default").
    pub fn resolve(&self) -> anyhow::Result<ResolvedAddress> {
        let resolved = self.resolve_address()?;
        if let Some(state) = &resolved.state {
            adopt_cluster_token(&state.dir)?;
            // The cluster's TLS files, unless this process was given its own.
            if let Some(tls) = &state.config.tls {
                if fleet_gcs::tls::TlsSettings::files_from_env()
                    .map_err(anyhow::Error::msg)?
                    .is_none()
                {
                    tls.adopt()?;
                }
            }
        }
        Ok(resolved)
    }

    fn resolve_address(&self) -> anyhow::Result<ResolvedAddress> {
        let dir = fleet_cluster::state::cluster_dir(&self.cluster_name);
        let state = fleet_cluster::ClusterState::load(&dir)?;
        let address = self.address.trim();
        if !address.is_empty() {
            let state = state.filter(|s| s.address == address);
            return Ok(ResolvedAddress {
                address: address.to_string(),
                state,
            });
        }
        match state {
            Some(state) if state.is_running() => Ok(ResolvedAddress {
                address: state.address.clone(),
                state: Some(state),
            }),
            Some(state) => anyhow::bail!(
                "cluster '{}' recorded in {} is not running (its daemons are gone); \
                 `fleet cluster down --name {}` cleans up, `fleet cluster up` starts one, \
                 or pass --address / set FLEET_ADDRESS",
                state.name,
                fleet_cluster::ClusterState::path(&dir).display(),
                state.name
            ),
            None => anyhow::bail!(
                "no cluster address: pass --address HOST:PORT[,HOST:PORT...], set FLEET_ADDRESS, \
                 or start a cluster on this machine with `fleet cluster up` (no {} found)",
                fleet_cluster::ClusterState::path(&dir).display()
            ),
        }
    }

    /// A GCS client for these flags (with the cluster's token, see [`adopt_cluster_token`]).
    pub fn client(&self) -> anyhow::Result<fleet_gcs::GcsClient> {
        self.client_for(&self.resolve()?.address)
    }

    /// A GCS client for a resolved address, with these flags' deadline.
    pub fn client_for(&self, address: &str) -> anyhow::Result<fleet_gcs::GcsClient> {
        let options = fleet_gcs::client::ClientOptions {
            deadline: std::time::Duration::from_secs(self.timeout_secs.max(1)),
            ..Default::default()
        };
        Ok(fleet_gcs::GcsClient::connect_with(address, options)?)
    }
}

/// A client command talking to a cluster recorded on this machine uses that cluster's token
/// file, unless the user gave one (`--token-file`, `FLEET_TOKEN`, `FLEET_TOKEN_FILE`).
fn adopt_cluster_token(cluster_dir: &std::path::Path) -> anyhow::Result<()> {
    use fleet_gcs::auth;
    let given = auth::process_token().is_some_and(
        |t| !matches!(t.source(), auth::TokenSource::File(p) if *p == auth::default_token_file()),
    );
    if given {
        return Ok(());
    }
    let file = cluster_dir.join(auth::TOKEN_FILE_NAME);
    if file.exists() {
        auth::set_process_token(auth::ClusterToken::read_file(&file).map_err(anyhow::Error::msg)?);
    }
    Ok(())
}
