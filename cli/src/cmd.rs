//! One module per top-level command.

pub mod bench;
pub mod gcs;
pub mod kv;

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

/// `--address` / `FLEET_ADDRESS`, shared by client commands.
#[derive(clap::Args, Clone, Debug)]
pub struct AddressArgs {
    /// GCS replicas, comma-separated HOST:PORT.
    #[arg(long, env = "FLEET_ADDRESS", default_value = "127.0.0.1:6380")]
    pub address: String,
    /// Give up after this many seconds without an answer from a leader.
    #[arg(long, env = "FLEET_TIMEOUT_SECS", default_value_t = 30)]
    pub timeout_secs: u64,
}

impl AddressArgs {
    /// A GCS client for these flags.
    pub fn client(&self) -> anyhow::Result<fleet_gcs::GcsClient> {
        let options = fleet_gcs::client::ClientOptions {
            deadline: std::time::Duration::from_secs(self.timeout_secs.max(1)),
            ..Default::default()
        };
        Ok(fleet_gcs::GcsClient::connect_with(&self.address, options)?)
    }
}
