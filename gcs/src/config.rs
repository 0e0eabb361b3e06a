//! Configuration of one GCS replica, validated before anything starts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Everything one replica needs. Build it from flags (the CLI) or directly (embedded mode,
/// tests); call [`GcsConfig::validate`] before [`crate::server::run`].
#[derive(Clone, Debug)]
pub struct GcsConfig {
    /// This replica's Raft id (non-zero, unique in the cluster).
    pub id: u64,
    /// The address clients and peers reach this replica at (what peers put in `--peers`).
    pub advertise_address: String,
    /// Initial members: Raft id → address. Must contain `id` unless `join` is set.
    pub peers: BTreeMap<u64, String>,
    /// Where the Raft log, hard state and snapshots live (sled).
    pub data_dir: PathBuf,
    /// Replicas of differently named clusters refuse each other's data dirs and messages.
    pub cluster_name: String,
    /// Start with an empty log and wait to be added by `fleet gcs member add` instead of
    /// bootstrapping the initial membership from `peers`.
    pub join: bool,
    /// One Raft tick.
    pub tick_interval: Duration,
    /// Election timeout in ticks (randomized in [election_ticks, 1.5 × election_ticks)).
    pub election_ticks: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// Take a snapshot and compact the log once this many entries were applied since the
    /// last snapshot.
    pub snapshot_threshold: u64,
    /// fsync the log before acknowledging (turn off only for benchmarks that say so).
    pub fsync: bool,
    /// Changes kept in memory for watchers to resume from; older resumes get a resync.
    pub watch_history: usize,
    /// How long a write or read waits for commit before the client is told to retry.
    pub request_timeout: Duration,
    /// How often the leader health-checks raylets (zero: never).
    pub health_check_period: Duration,
    /// A raylet silent this long is declared dead.
    pub node_timeout: Duration,
    /// How many ended rows (dead actors, finished jobs, removed placement groups) the
    /// tables keep; the same on every replica.
    pub retention: crate::state_machine::Retention,
}

impl GcsConfig {
    /// A single-replica group in `data_dir`, listening at `address` (embedded mode, tests).
    pub fn single(address: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        let address = address.into();
        GcsConfig {
            id: 1,
            peers: BTreeMap::from([(1, address.clone())]),
            advertise_address: address,
            data_dir: data_dir.into(),
            ..GcsConfig::default()
        }
    }

    /// The election timeout (lower bound).
    pub fn election_timeout(&self) -> Duration {
        self.tick_interval * self.election_ticks as u32
    }

    /// Checks every field; the error names the field and the fix.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, reason: String| Err(Error::InvalidConfig { field, reason });
        if self.id == 0 {
            return invalid(
                "--id",
                "replica ids start at 1; 0 is reserved by Raft".into(),
            );
        }
        if self.cluster_name.is_empty() {
            return invalid("--cluster-name", "must not be empty".into());
        }
        if self.peers.contains_key(&0) {
            return invalid(
                "--peers",
                "replica ids start at 1; 0 is reserved by Raft".into(),
            );
        }
        if !self.join && !self.peers.contains_key(&self.id) {
            return invalid(
                "--peers",
                format!(
                    "lists replicas {:?} but not this replica's id {}; add {}=ADDR, or pass \
                     --join to start empty and be added with `fleet gcs member add`",
                    self.peers.keys().collect::<Vec<_>>(),
                    self.id,
                    self.id
                ),
            );
        }
        for (id, address) in &self.peers {
            if address.parse::<std::net::SocketAddr>().is_err() && !address.contains(':') {
                return invalid(
                    "--peers",
                    format!("replica {id} has address '{address}', expected HOST:PORT"),
                );
            }
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return invalid(
                "election_ticks",
                format!(
                    "must be greater than heartbeat_ticks ({}), typically 10×",
                    self.heartbeat_ticks
                ),
            );
        }
        if self.heartbeat_ticks == 0 {
            return invalid("heartbeat_ticks", "must be at least 1".into());
        }
        if self.tick_interval.is_zero() {
            return invalid("tick_interval", "must be positive, e.g. 100ms".into());
        }
        if self.snapshot_threshold == 0 {
            return invalid("--snapshot-threshold", "must be at least 1 entry".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("--data-dir", "must name a directory".into());
        }
        Ok(())
    }
}

impl Default for GcsConfig {
    fn default() -> Self {
        GcsConfig {
            id: 1,
            advertise_address: "127.0.0.1:6380".into(),
            peers: BTreeMap::new(),
            data_dir: PathBuf::from("fleet-gcs-data"),
            cluster_name: "fleet".into(),
            join: false,
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_threshold: 10_000,
            fsync: true,
            watch_history: 100_000,
            request_timeout: Duration::from_secs(5),
            health_check_period: Duration::from_millis(500),
            node_timeout: Duration::from_millis(3000),
            retention: crate::state_machine::Retention::default(),
        }
    }
}

/// Parses `1=127.0.0.1:6380,2=127.0.0.1:6381` into a map, naming the bad part on error.
pub fn parse_peers(spec: &str) -> Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((id, address)) = part.split_once('=') else {
            return Err(Error::InvalidConfig {
                field: "--peers",
                reason: format!("'{part}' is not ID=HOST:PORT (e.g. 1=127.0.0.1:6380)"),
            });
        };
        let id: u64 = id.trim().parse().map_err(|_| Error::InvalidConfig {
            field: "--peers",
            reason: format!("'{id}' in '{part}' is not a replica id (a positive integer)"),
        })?;
        if peers.insert(id, address.trim().to_string()).is_some() {
            return Err(Error::InvalidConfig {
                field: "--peers",
                reason: format!("replica {id} is listed twice"),
            });
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peers_and_names_bad_parts() {
        let peers = parse_peers("1=127.0.0.1:1, 2=127.0.0.1:2").expect("valid");
        assert_eq!(peers.len(), 2);
        let err = parse_peers("1=a:1,x=b:2").expect_err("bad id").to_string();
        assert!(err.contains("'x'"), "{err}");
        let err = parse_peers("1").expect_err("no =").to_string();
        assert!(err.contains("ID=HOST:PORT"), "{err}");
        assert!(parse_peers("1=a:1,1=b:2").is_err());
    }

    #[test]
    fn validate_names_the_field() {
        let mut config = GcsConfig::single("127.0.0.1:1", "/tmp/x");
        config.validate().expect("valid");
        config.id = 2;
        let err = config.validate().expect_err("id not in peers").to_string();
        assert!(err.contains("--peers") && err.contains("--join"), "{err}");
        config.join = true;
        config
            .validate()
            .expect("joining replica need not be in peers");
    }
}
