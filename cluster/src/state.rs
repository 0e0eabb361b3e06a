//! The cluster directory and its `cluster.json`: what `up` started, so that `down`,
//! `status` and `job` find the cluster again from another process.
//!
//! Layout of `${FLEET_HOME:-$HOME/.fleet}/clusters/<name>/`: `cluster.json`, `logs/`
//! (`gcs-N.log`, `node-K.log`), `gcs-N/` (Raft data), `node-K/` (job binaries, worker logs,
//! `spill/`), `jobs/` (`<job id>.log`). Object stores live in shared memory, named in
//! `cluster.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ClusterConfig, Provider};
use crate::error::{Error, Result};
use crate::plan::{ClusterPlan, GcsDaemon, NodeDaemon};
use crate::process::ProcessId;

/// The state file's name in a cluster directory.
pub const STATE_FILE: &str = "cluster.json";

/// A replica and its process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GcsRecord {
    /// Where and how it runs.
    #[serde(flatten)]
    pub daemon: GcsDaemon,
    /// Its process (None while stopped, or on another host without a known pid).
    pub pid: Option<ProcessId>,
}

/// A raylet and its process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Where and how it runs (its `node_id` is the current incarnation's).
    #[serde(flatten)]
    pub daemon: NodeDaemon,
    /// Starts so far minus one (0: never restarted).
    pub incarnation: u32,
    /// Its process (it leads the process group of its workers).
    pub pid: Option<ProcessId>,
}

/// Everything `cluster.json` records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The cluster's name.
    pub name: String,
    /// Where the daemons run.
    pub provider: Provider,
    /// The GCS address (`FLEET_ADDRESS`).
    pub address: String,
    /// The cluster directory.
    pub dir: PathBuf,
    /// The `fleet` program the daemons run (local), or the remote one (hosts).
    pub fleet_binary: PathBuf,
    /// When `up` started it.
    pub started_at_ms: u64,
    /// The per-`up` token in shared-memory names.
    pub token: String,
    /// The config it was started from.
    pub config: ClusterConfig,
    /// The replicas.
    pub gcs: Vec<GcsRecord>,
    /// The raylets.
    pub nodes: Vec<NodeRecord>,
}

/// `$FLEET_HOME`, else `$HOME/.fleet`.
pub fn fleet_home() -> PathBuf {
    fleet_gcs::auth::fleet_home()
}

/// The directory of cluster `name` on this machine.
pub fn cluster_dir(name: &str) -> PathBuf {
    fleet_home().join("clusters").join(name)
}

impl ClusterState {
    /// A state for a plan about to start (no pids yet).
    pub fn new(plan: &ClusterPlan, fleet_binary: &Path) -> Self {
        ClusterState {
            name: plan.config.name.clone(),
            provider: plan.config.provider,
            address: plan.address(),
            dir: plan.dir.clone(),
            fleet_binary: fleet_binary.to_path_buf(),
            started_at_ms: crate::process::now_ms(),
            token: plan.token.clone(),
            config: plan.config.clone(),
            gcs: plan
                .gcs
                .iter()
                .map(|daemon| GcsRecord {
                    daemon: daemon.clone(),
                    pid: None,
                })
                .collect(),
            nodes: plan
                .nodes
                .iter()
                .map(|daemon| NodeRecord {
                    daemon: daemon.clone(),
                    incarnation: 0,
                    pid: None,
                })
                .collect(),
        }
    }

    /// The plan the state carries out (with current node ids).
    pub fn plan(&self) -> ClusterPlan {
        ClusterPlan {
            config: self.config.clone(),
            dir: self.dir.clone(),
            token: self.token.clone(),
            gcs: self.gcs.iter().map(|r| r.daemon.clone()).collect(),
            nodes: self.nodes.iter().map(|r| r.daemon.clone()).collect(),
        }
    }

    /// The state file of cluster directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads `dir/cluster.json`; None when there is none.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::CorruptState {
                path,
                reason: e.to_string(),
            })
    }

    /// Writes `cluster.json` atomically (a temp file renamed over it).
    pub fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io("create", &self.dir, e))?;
        let path = Self::path(&self.dir);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::CorruptState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))
    }

    /// Deletes `cluster.json` (the cluster is stopped).
    pub fn remove(&self) -> Result<()> {
        let path = Self::path(&self.dir);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    /// Whether any recorded local process still runs (hosts: whether any pid is recorded).
    pub fn is_running(&self) -> bool {
        let pids = self
            .gcs
            .iter()
            .filter_map(|r| r.pid)
            .chain(self.nodes.iter().filter_map(|r| r.pid));
        match self.provider {
            Provider::Local => pids.into_iter().any(|p| p.is_alive() || p.group_alive()),
            Provider::Hosts => pids.count() > 0,
        }
    }

    /// Where `fleet job submit` puts drivers' logs.
    pub fn jobs_dir(&self) -> PathBuf {
        self.dir.join("jobs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_json() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let config = ClusterConfig::from_toml_str(
            "name = \"t\"\n[[nodes]]\nnum_cpus = 2\ncount = 2\nlabels = { zone = \"a\" }\n",
            "test",
        )?;
        let plan = ClusterPlan::new(
            &config,
            dir.path(),
            Path::new("/dev/shm"),
            "abc",
            &[1, 2, 3],
        );
        let mut state = ClusterState::new(&plan, Path::new("/usr/bin/fleet"));
        state.gcs[0].pid = Some(ProcessId {
            pid: 42,
            start_ticks: Some(7),
        });
        state.save()?;
        let loaded = ClusterState::load(dir.path())?;
        assert_eq!(loaded.as_ref(), Some(&state));
        assert_eq!(state.plan(), plan);
        let text = std::fs::read_to_string(ClusterState::path(dir.path()))?;
        assert!(text.contains("\"object_store_dir\"") && text.contains("\"log\""));
        state.remove()?;
        assert_eq!(ClusterState::load(dir.path())?, None);
        Ok(())
    }

    #[test]
    fn corrupt_state_names_the_file() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(ClusterState::path(dir.path()), "{ not json")?;
        let error = ClusterState::load(dir.path()).err().map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(
            error.contains("cluster.json") && error.contains("delete"),
            "{error}"
        );
        Ok(())
    }
}
