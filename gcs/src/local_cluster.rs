//! A GCS cluster of real `fleet gcs` processes on loopback ports: what the process tests, the
//! benchmark and (later) the chaos harness start, kill with SIGKILL, wipe and restart.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::GcsClient;
use crate::error::{Error, Result};

/// Tunables passed to every replica.
#[derive(Clone, Debug)]
pub struct LocalClusterOptions {
    /// Raft tick in milliseconds.
    pub tick_ms: u64,
    /// Election timeout in ticks.
    pub election_ticks: usize,
    /// Entries between snapshots.
    pub snapshot_threshold: u64,
    /// fsync the Raft log.
    pub fsync: bool,
    /// The cluster's name.
    pub cluster_name: String,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        LocalClusterOptions {
            tick_ms: 100,
            election_ticks: 10,
            snapshot_threshold: 10_000,
            fsync: true,
            cluster_name: "fleet".into(),
        }
    }
}

struct Replica {
    address: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Replica processes; all are SIGKILLed when this is dropped.
pub struct LocalCluster {
    binary: PathBuf,
    base_dir: PathBuf,
    options: LocalClusterOptions,
    replicas: BTreeMap<u64, Replica>,
    initial_peers: String,
}

/// A free loopback port (bound and released; the caller binds it soon after).
pub fn free_loopback_address() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Listen {
        address: "127.0.0.1:0".into(),
        source,
    })?;
    let address = listener.local_addr().map_err(|source| Error::Listen {
        address: "127.0.0.1:0".into(),
        source,
    })?;
    Ok(address.to_string())
}

impl LocalCluster {
    /// Starts replicas 1..=n of `binary` (the `fleet` executable) under `base_dir`.
    pub fn start(
        binary: &Path,
        base_dir: &Path,
        n: u64,
        options: LocalClusterOptions,
    ) -> Result<Self> {
        let mut replicas = BTreeMap::new();
        for id in 1..=n {
            replicas.insert(
                id,
                Replica {
                    address: free_loopback_address()?,
                    data_dir: base_dir.join(format!("gcs-{id}")),
                    log: base_dir.join(format!("gcs-{id}.log")),
                    child: None,
                },
            );
        }
        let initial_peers = replicas
            .iter()
            .map(|(id, r)| format!("{id}={}", r.address))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LocalCluster {
            binary: binary.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
            options,
            replicas,
            initial_peers,
        };
        for id in 1..=n {
            cluster.spawn(id, false)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, id: u64, join: bool) -> Result<()> {
        let peers = self.initial_peers.clone();
        let options = self.options.clone();
        let binary = self.binary.clone();
        let replica = self
            .replicas
            .get_mut(&id)
            .ok_or_else(|| Error::InvalidRequest(format!("no replica {id}")))?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&replica.log)
            .map_err(|e| Error::StorageWrite {
                path: replica.log.clone(),
                reason: e.to_string(),
            })?;
        let log_err = log.try_clone().map_err(|e| Error::StorageWrite {
            path: replica.log.clone(),
            reason: e.to_string(),
        })?;
        let mut command = Command::new(&binary);
        command
            .args([
                "gcs",
                "--id",
                &id.to_string(),
                "--listen",
                &replica.address,
                "--peers",
                &peers,
            ])
            .arg("--data-dir")
            .arg(&replica.data_dir)
            .args(["--cluster-name", &options.cluster_name])
            .args(["--tick-ms", &options.tick_ms.to_string()])
            .args(["--election-ticks", &options.election_ticks.to_string()])
            .args([
                "--snapshot-threshold",
                &options.snapshot_threshold.to_string(),
            ])
            // The replicas share this process's token (made in memory if it has none), so
            // its clients are let in.
            .env(
                crate::auth::TOKEN_ENV,
                crate::auth::ensure_process_token().secret(),
            )
            .env(
                "RUST_LOG",
                std::env::var("FLEET_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if !options.fsync {
            command.arg("--no-fsync");
        }
        if join {
            command.arg("--join");
        }
        let child = command.spawn().map_err(|e| Error::InvalidConfig {
            field: "binary",
            reason: format!("cannot start {}: {e}", binary.display()),
        })?;
        replica.child = Some(child);
        Ok(())
    }

    /// Every replica's address, comma-separated (the `--address` form).
    pub fn addresses(&self) -> String {
        self.replicas
            .values()
            .map(|r| r.address.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One replica's address.
    pub fn address(&self, id: u64) -> Option<&str> {
        self.replicas.get(&id).map(|r| r.address.as_str())
    }

    /// The replica ids.
    pub fn ids(&self) -> Vec<u64> {
        self.replicas.keys().copied().collect()
    }

    /// A client for the whole cluster.
    pub fn client(&self) -> Result<GcsClient> {
        GcsClient::connect(&self.addresses())
    }

    /// The replica's log file.
    pub fn log_path(&self, id: u64) -> Option<&Path> {
        self.replicas.get(&id).map(|r| r.log.as_path())
    }

    /// SIGKILLs a replica and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.replicas.get_mut(&id).and_then(|r| r.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Deletes a (killed) replica's data directory, as a lost disk would.
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        if let Some(replica) = self.replicas.get(&id) {
            if replica.data_dir.exists() {
                std::fs::remove_dir_all(&replica.data_dir).map_err(|e| Error::StorageWrite {
                    path: replica.data_dir.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        Ok(())
    }

    /// Starts a killed replica again (with `join`, an empty one waits to be caught up).
    pub fn restart(&mut self, id: u64, join: bool) -> Result<()> {
        self.kill(id);
        self.spawn(id, join)
    }

    /// Prepares and starts a new replica with `--join` (add it with a member change first or
    /// after); returns its address.
    pub fn start_joining(&mut self, id: u64) -> Result<String> {
        let address = free_loopback_address()?;
        self.replicas.insert(
            id,
            Replica {
                address: address.clone(),
                data_dir: self.base_dir.join(format!("gcs-{id}")),
                log: self.base_dir.join(format!("gcs-{id}.log")),
                child: None,
            },
        );
        self.spawn(id, true)?;
        Ok(address)
    }

    /// Forgets a replica (after it was removed from the membership), killing it.
    pub fn forget(&mut self, id: u64) {
        self.kill(id);
        self.replicas.remove(&id);
    }

    /// Whether the replica's process is still running.
    pub fn is_running(&mut self, id: u64) -> bool {
        match self.replicas.get_mut(&id).and_then(|r| r.child.as_mut()) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Polls the live replicas until one reports itself leader with a quorum-agreed term;
    /// returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64> {
        let client = self.client()?;
        let started = Instant::now();
        loop {
            for (id, replica) in &self.replicas {
                if replica.child.is_none() {
                    continue;
                }
                if let Ok(status) = client.replica_status(&replica.address).await {
                    if status.role == "leader" {
                        return Ok(*id);
                    }
                }
            }
            if started.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: "a GCS leader",
                    millis: timeout.as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.replicas.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}
