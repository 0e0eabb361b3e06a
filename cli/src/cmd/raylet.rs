//! `fleet raylet`: run one node of a cluster (see `fleet_raylet::daemon`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use fleet_raylet::RayletConfig;

use super::shutdown_on_signal;

/// Flags of `fleet raylet`.
#[derive(Args)]
pub struct RayletCommand {
    /// The GCS replicas, comma-separated HOST:PORT.
    #[arg(long, env = "FLEET_ADDRESS")]
    gcs: String,
    /// Address to serve at (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// This node's id (default: generated).
    #[arg(long)]
    node_id: Option<String>,
    /// CPUs to offer (default: this machine's).
    #[arg(long)]
    num_cpus: Option<f64>,
    /// GPUs to offer (default: detected; declare them to test GPU placement without GPUs).
    #[arg(long)]
    num_gpus: Option<u32>,
    /// Memory to offer, in bytes (the `memory` resource).
    #[arg(long)]
    memory: Option<u64>,
    /// A custom resource, NAME=AMOUNT (repeatable).
    #[arg(long = "resource", value_name = "NAME=AMOUNT")]
    resources: Vec<String>,
    /// A label, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Shared-memory directory of the object store (default: /dev/shm/fleet-NODE).
    #[arg(long)]
    object_store_dir: Option<PathBuf>,
    /// Where objects spill when the store is full (default: NODE_DIR/spill).
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// Object store capacity in bytes.
    #[arg(long, default_value_t = 2 << 30)]
    object_store_bytes: u64,
    /// The node's directory: job binaries and worker logs (default: TMP/fleet-NODE).
    #[arg(long)]
    node_dir: Option<PathBuf>,
    /// Shared actor-host processes per job on this node (default: the CPUs offered); actors
    /// without `isolate()` are spread over them.
    #[arg(long)]
    actor_hosts_per_job: Option<usize>,
}

fn split_pair<'a>(flag: &str, text: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim(), value.trim())),
        _ => bail!("{flag} {text:?}: expected KEY=VALUE"),
    }
}

impl RayletCommand {
    fn config(self) -> anyhow::Result<(RayletConfig, String)> {
        let node_id = self
            .node_id
            .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
        let cpus = match self.num_cpus {
            Some(cpus) => cpus,
            None => std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0),
        };
        let num_gpus = match self.num_gpus {
            Some(n) => n,
            None => fleet_raylet::gpu::detect_gpus().count,
        };
        // Workers run the job's uploaded binary; this one is only a fallback for leases that
        // name none (which cluster drivers never send).
        let binary = std::env::current_exe().context("cannot find the fleet binary")?;
        let mut config = RayletConfig::local(node_id.clone(), cpus, num_gpus, binary, self.gcs);
        config.prestart_workers = 0;
        if let Some(hosts) = self.actor_hosts_per_job {
            config.actor_hosts_per_job = hosts;
        }
        for resource in &self.resources {
            let (name, amount) = split_pair("--resource", resource)?;
            let amount: f64 = amount
                .parse()
                .ok()
                .filter(|a: &f64| a.is_finite() && *a >= 0.0)
                .with_context(|| {
                    format!("--resource {resource:?}: the amount must be a non-negative number")
                })?;
            if name == "GPU" {
                bail!("--resource GPU=...: declare GPUs with --num-gpus so they get ids");
            }
            config.resources.insert(name.to_string(), amount);
        }
        if let Some(memory) = self.memory {
            config.resources.insert("memory".into(), memory as f64);
        }
        let mut labels = BTreeMap::new();
        for label in &self.labels {
            let (key, value) = split_pair("--label", label)?;
            labels.insert(key.to_string(), value.to_string());
        }
        config.labels = labels;
        config.node_dir = self
            .node_dir
            .unwrap_or_else(|| std::env::temp_dir().join(format!("fleet-{node_id}")));
        if let Some(dir) = self.object_store_dir {
            config.object_store_dir = dir;
        }
        config.spill_dir = self
            .spill_dir
            .unwrap_or_else(|| config.node_dir.join("spill"));
        config.object_store_bytes = self.object_store_bytes;
        config.validate()?;
        Ok((config, self.listen))
    }

    /// Runs the node until SIGTERM / Ctrl-C.
    pub async fn run(self) -> anyhow::Result<()> {
        let (config, listen) = self.config()?;
        super::token::require_daemon_token("fleet raylet")?;
        let node_id = config.node_id.clone();
        std::fs::create_dir_all(&config.node_dir).with_context(|| {
            format!(
                "cannot create the node directory {}",
                config.node_dir.display()
            )
        })?;
        let stop = shutdown_on_signal();
        let ended = fleet_raylet::daemon::run(config, &listen, stop, |address| {
            println!("raylet {node_id} listening on {address}");
        })
        .await?;
        match ended {
            fleet_raylet::daemon::Ended::Stopped => Ok(()),
            fleet_raylet::daemon::Ended::DeclaredDead(cause) => bail!(
                "node {node_id} was declared dead by the GCS ({cause}); its work has moved elsewhere. Start it again to rejoin"
            ),
        }
    }
}
