//! `fleet cluster up|down|status`: thin over `fleet_cluster`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use fleet_cluster::config::{ClusterConfig, Provider};
use fleet_cluster::state::cluster_dir;
use fleet_cluster::{hosts, ClusterHandle, ClusterState, LocalCluster};

/// `fleet cluster ...`
#[derive(Args)]
pub struct ClusterCommand {
    #[command(subcommand)]
    action: ClusterAction,
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Start a cluster in the background (default: 3 GCS replicas and 2 local nodes).
    Up {
        /// The cluster config (TOML; see docs/cluster.md). Default: a local cluster.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// The cluster's name (overrides the config's `name`).
        #[arg(long, env = "FLEET_CLUSTER")]
        name: Option<String>,
        /// The `fleet` program the local daemons run (default: this one).
        #[arg(long)]
        fleet_binary: Option<PathBuf>,
        /// Wait this long for readiness (overrides `ready_timeout_secs`).
        #[arg(long)]
        timeout_secs: Option<u64>,
        /// Print the daemons' command lines instead of starting them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop every daemon the cluster's `up` started and remove its shared memory.
    Down {
        /// The cluster's name.
        #[arg(long, env = "FLEET_CLUSTER", default_value = "default")]
        name: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 10)]
        grace_secs: u64,
    },
    /// Same as `fleet status`.
    Status(super::status::StatusCommand),
}

impl ClusterCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.action {
            ClusterAction::Up {
                config,
                name,
                fleet_binary,
                timeout_secs,
                dry_run,
            } => up(config, name, fleet_binary, timeout_secs, dry_run).await,
            ClusterAction::Down { name, grace_secs } => {
                down(&name, Duration::from_secs(grace_secs))
            }
            ClusterAction::Status(status) => status.run().await,
        }
    }
}

async fn up(
    config_path: Option<PathBuf>,
    name: Option<String>,
    fleet_binary: Option<PathBuf>,
    timeout_secs: Option<u64>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let mut config = match &config_path {
        Some(path) => ClusterConfig::load(path)?,
        None => ClusterConfig::default_local(),
    };
    if let Some(name) = name {
        config.name = name;
    }
    if let Some(secs) = timeout_secs {
        config.ready_timeout_secs = secs;
    }
    config.validate()?;
    let dir = cluster_dir(&config.name);
    let binary = match fleet_binary {
        Some(path) => path,
        None => std::env::current_exe()
            .context("cannot find this program's path; pass --fleet-binary")?,
    };
    if dry_run {
        print_plan(&config, &dir, &binary);
        return Ok(());
    }
    let (state, leader) = match config.provider {
        Provider::Local => {
            eprintln!(
                "starting cluster '{}': {} GCS replica(s), {} node(s) ...",
                config.name,
                config.gcs.replicas,
                config.expanded_nodes().len()
            );
            let handle = LocalCluster::up(&config, &binary, &dir).await?;
            let leader = handle.gcs_leader().await;
            (handle.state().clone(), leader)
        }
        Provider::Hosts => (hosts::up(&config, &dir).await?, None),
    };
    println!(
        "cluster '{}' is up: {} GCS replica(s){}, {} node(s)",
        state.name,
        state.gcs.len(),
        leader
            .map(|id| format!(" (leader gcs-{id})"))
            .unwrap_or_default(),
        state.nodes.len()
    );
    println!("  state and logs: {}", state.dir.display());
    println!("  stop it with:   fleet cluster down --name {}", state.name);
    println!("export FLEET_ADDRESS={}", state.address);
    Ok(())
}

fn print_plan(config: &ClusterConfig, dir: &std::path::Path, binary: &std::path::Path) {
    match config.provider {
        Provider::Local => {
            let ports: Vec<u16> = (0..config.gcs.replicas as u16)
                .map(|i| config.gcs.base_port.saturating_add(i))
                .collect();
            let plan = fleet_cluster::plan::ClusterPlan::new(
                config,
                dir,
                &fleet_cluster::process::shm_root(),
                "TOKEN",
                &ports,
            );
            let program = hosts::shell_quote(&binary.display().to_string());
            let lines = plan
                .gcs
                .iter()
                .filter_map(|g| plan.gcs_args(g.id))
                .chain(plan.nodes.iter().filter_map(|n| plan.raylet_args(n.index)));
            for args in lines {
                let args: Vec<String> = args.iter().map(|a| hosts::shell_quote(a)).collect();
                println!("{program} {}", args.join(" "));
            }
        }
        Provider::Hosts => {
            for command in hosts::start_commands(&hosts::plan(config, "TOKEN")) {
                println!("{}", command.to_shell());
            }
        }
    }
}

fn down(name: &str, grace: Duration) -> anyhow::Result<()> {
    let dir = cluster_dir(name);
    let Some(state) = ClusterState::load(&dir)? else {
        println!(
            "no cluster '{name}' is running on this machine (no {}); nothing to stop",
            ClusterState::path(&dir).display()
        );
        return Ok(());
    };
    match state.provider {
        Provider::Local => {
            let was_running = state.is_running();
            let stopped = ClusterHandle::from_state(state).down(grace)?;
            if !was_running {
                println!("cluster '{name}' was not running any more; cleaned up its state");
                return Ok(());
            }
            let killed: Vec<&str> = stopped
                .iter()
                .filter(|s| s.outcome == fleet_cluster::process::StopOutcome::Killed)
                .map(|s| s.daemon.as_str())
                .collect();
            println!(
                "cluster '{name}' is down: stopped {} daemon(s){}",
                stopped.len(),
                if killed.is_empty() {
                    String::new()
                } else {
                    format!(" ({} needed SIGKILL)", killed.join(", "))
                }
            );
        }
        Provider::Hosts => {
            hosts::down(&state, grace)?;
            state.remove()?;
            println!("cluster '{name}' is down");
        }
    }
    Ok(())
}
