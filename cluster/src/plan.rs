//! Config → the daemons of a cluster and their command lines. No I/O: the providers
//! ([`crate::local`], [`crate::hosts`]) carry a plan out.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ClusterConfig, NodeSpec, Provider};

/// One GCS replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GcsDaemon {
    /// Raft id (from 1).
    pub id: u64,
    /// The machine ("127.0.0.1" for the local provider).
    pub host: String,
    /// HOST:PORT clients and peers use.
    pub address: String,
    /// Raft log and snapshots.
    pub data_dir: PathBuf,
    /// stdout and stderr.
    pub log: PathBuf,
    /// Environment added to its process (the chaos harness's network settings).
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// One raylet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeDaemon {
    /// Position in the expanded node list (from 0).
    pub index: usize,
    /// The node id it registers (a restart gets a new one).
    pub node_id: String,
    /// The machine.
    pub host: String,
    /// HOST:PORT it listens on (port 0: any).
    pub listen: String,
    /// Job binaries and worker logs.
    pub node_dir: PathBuf,
    /// Its object store (shared memory); removed when the node stops.
    pub object_store_dir: PathBuf,
    /// Where the object store spills.
    pub spill_dir: PathBuf,
    /// stdout and stderr.
    pub log: PathBuf,
    /// Resources and labels.
    pub spec: NodeSpec,
    /// Environment added to its process (and so to its workers').
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// Every daemon of a cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterPlan {
    /// The config it came from.
    pub config: ClusterConfig,
    /// The cluster directory (on each machine, for the hosts provider).
    pub dir: PathBuf,
    /// Random per-`up` token that keeps shared-memory names of clusters apart.
    pub token: String,
    /// The replicas.
    pub gcs: Vec<GcsDaemon>,
    /// The raylets.
    pub nodes: Vec<NodeDaemon>,
}

impl ClusterPlan {
    /// Lays the cluster out under `dir`. `gcs_ports[i]` is replica `i + 1`'s port;
    /// object stores go under `shm_root`.
    pub fn new(
        config: &ClusterConfig,
        dir: &Path,
        shm_root: &Path,
        token: &str,
        gcs_ports: &[u16],
    ) -> Self {
        // Every daemon gets the TLS files (their paths; the files stay where they are).
        let tls_env: Vec<(String, String)> = config
            .tls
            .as_ref()
            .map(|tls| tls.files().env())
            .unwrap_or_default();
        let gcs = (0..config.gcs.replicas as usize)
            .map(|i| {
                let id = i as u64 + 1;
                let host = match config.provider {
                    Provider::Local => "127.0.0.1".to_string(),
                    Provider::Hosts => config.gcs.hosts.get(i).cloned().unwrap_or_default(),
                };
                let port = gcs_ports.get(i).copied().unwrap_or(config.gcs.base_port);
                GcsDaemon {
                    id,
                    address: format!("{host}:{port}"),
                    host,
                    data_dir: dir.join(format!("gcs-{id}")),
                    log: dir.join("logs").join(format!("gcs-{id}.log")),
                    env: tls_env.clone(),
                }
            })
            .collect();
        let nodes = config
            .expanded_nodes()
            .into_iter()
            .enumerate()
            .map(|(index, spec)| {
                let host = spec.host.clone().unwrap_or_else(|| "127.0.0.1".into());
                let node_dir = dir.join(format!("node-{index}"));
                NodeDaemon {
                    index,
                    node_id: node_id(index, 0),
                    listen: format!("{host}:{}", spec.port),
                    host,
                    object_store_dir: shm_root
                        .join(format!("fleet-{}-{token}-node-{index}", config.name)),
                    spill_dir: node_dir.join("spill"),
                    log: dir.join("logs").join(format!("node-{index}.log")),
                    node_dir,
                    spec,
                    env: tls_env.clone(),
                }
            })
            .collect();
        ClusterPlan {
            config: config.clone(),
            dir: dir.to_path_buf(),
            token: token.to_string(),
            gcs,
            nodes,
        }
    }

    /// Every daemon finds the cluster token in `token_file` (`FLEET_TOKEN_FILE`: the path
    /// is in its environment, the secret only in the file).
    pub fn hand_out_token_file(&mut self, token_file: &Path) {
        let entry = (
            fleet_gcs::auth::TOKEN_FILE_ENV.to_string(),
            token_file.display().to_string(),
        );
        for env in self
            .gcs
            .iter_mut()
            .map(|g| &mut g.env)
            .chain(self.nodes.iter_mut().map(|n| &mut n.env))
        {
            env.retain(|(key, _)| key != fleet_gcs::auth::TOKEN_FILE_ENV);
            env.push(entry.clone());
        }
    }

    /// The GCS address clients use: every replica, comma-separated.
    pub fn address(&self) -> String {
        self.gcs
            .iter()
            .map(|g| g.address.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `--peers`: ID=HOST:PORT,...
    pub fn peers(&self) -> String {
        self.gcs
            .iter()
            .map(|g| format!("{}={}", g.id, g.address))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `fleet` arguments that run replica `id` (None: no such replica).
    pub fn gcs_args(&self, id: u64) -> Option<Vec<String>> {
        let daemon = self.gcs.iter().find(|g| g.id == id)?;
        let gcs = &self.config.gcs;
        let mut args: Vec<String> = vec!["gcs".into(), "--id".into(), id.to_string()];
        match self.config.provider {
            Provider::Local => args.extend(["--listen".into(), daemon.address.clone()]),
            Provider::Hosts => {
                let port = daemon.address.rsplit(':').next().unwrap_or_default();
                args.extend([
                    "--listen".into(),
                    format!("0.0.0.0:{port}"),
                    "--advertise".into(),
                    daemon.address.clone(),
                ]);
            }
        }
        args.extend([
            "--peers".into(),
            self.peers(),
            "--data-dir".into(),
            daemon.data_dir.display().to_string(),
            "--cluster-name".into(),
            self.config.name.clone(),
            "--tick-ms".into(),
            gcs.tick_ms.to_string(),
            "--election-ticks".into(),
            gcs.election_ticks.to_string(),
        ]);
        if let Some(ms) = gcs.health_check_ms {
            args.extend(["--health-check-ms".into(), ms.to_string()]);
        }
        if let Some(ms) = gcs.node_timeout_ms {
            args.extend(["--node-timeout-ms".into(), ms.to_string()]);
        }
        if !gcs.fsync {
            args.push("--no-fsync".into());
        }
        Some(args)
    }

    /// The `fleet` arguments that run raylet `index` (None: no such node).
    pub fn raylet_args(&self, index: usize) -> Option<Vec<String>> {
        let node = self.nodes.get(index)?;
        let spec = &node.spec;
        let mut args: Vec<String> = vec![
            "raylet".into(),
            "--gcs".into(),
            self.address(),
            "--listen".into(),
            node.listen.clone(),
            "--node-id".into(),
            node.node_id.clone(),
        ];
        if let Some(cpus) = spec.num_cpus {
            args.extend(["--num-cpus".into(), cpus.to_string()]);
        }
        if let Some(gpus) = spec.num_gpus {
            args.extend(["--num-gpus".into(), gpus.to_string()]);
        }
        if let Some(bytes) = spec.memory_bytes {
            args.extend(["--memory".into(), bytes.to_string()]);
        }
        for (name, amount) in &spec.resources {
            args.extend(["--resource".into(), format!("{name}={amount}")]);
        }
        for (key, value) in &spec.labels {
            args.extend(["--label".into(), format!("{key}={value}")]);
        }
        args.extend([
            "--object-store-dir".into(),
            node.object_store_dir.display().to_string(),
            "--spill-dir".into(),
            node.spill_dir.display().to_string(),
        ]);
        if let Some(bytes) = spec.object_store_bytes {
            args.extend(["--object-store-bytes".into(), bytes.to_string()]);
        }
        args.extend(["--node-dir".into(), node.node_dir.display().to_string()]);
        Some(args)
    }
}

/// The node id of node `index`'s `incarnation`-th start (0: first).
pub fn node_id(index: usize, incarnation: u32) -> String {
    if incarnation == 0 {
        format!("node-{index}")
    } else {
        format!("node-{index}-r{incarnation}")
    }
}
