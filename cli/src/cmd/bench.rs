//! `fleet bench gcs`: GCS write throughput and latency (and etcd's, side by side).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use fleet_gcs::bench::{BenchOptions, BenchSystem};

/// `fleet bench ...`
#[derive(Args)]
pub struct BenchCommand {
    #[command(subcommand)]
    target: BenchTarget,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Control-store write throughput, p50/p99 latency and leader failover, vs etcd.
    Gcs(GcsBenchArgs),
}

#[derive(Args)]
struct GcsBenchArgs {
    /// fleet, etcd or both.
    #[arg(long, default_value = "both")]
    system: BenchSystem,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds measured per configuration.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 128)]
    value_size: usize,
    /// Skip the leader-failover measurement.
    #[arg(long)]
    no_failover: bool,
    /// Keep data dirs and logs here.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Rounds; each metric is the median over them.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Run Fleet's replicas without fsync (diagnosis only: not equal durability).
    #[arg(long)]
    no_fsync: bool,
    /// The etcd binary (Debian's etcd-server).
    #[arg(long, default_value = "etcd")]
    etcd_binary: PathBuf,
}

impl BenchCommand {
    /// Runs the benchmark and prints `name value unit` lines.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.target {
            BenchTarget::Gcs(args) => {
                if args.clients == 0 || args.seconds == 0 {
                    anyhow::bail!("--clients and --seconds must be at least 1");
                }
                let binary = std::env::current_exe()?;
                let options = BenchOptions {
                    system: args.system,
                    clients: args.clients,
                    duration: Duration::from_secs(args.seconds),
                    value_size: args.value_size,
                    failover: !args.no_failover,
                    work_dir: args.work_dir,
                    etcd_binary: args.etcd_binary,
                    fsync: !args.no_fsync,
                    repeat: args.repeat,
                };
                fleet_gcs::bench::run(options, &binary).await?;
            }
        }
        Ok(())
    }
}
