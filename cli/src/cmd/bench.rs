//! `fleet bench`: the runtime microbenchmark (Ray's metric names) and `fleet bench gcs`
//! (control-store writes, side by side with etcd).

pub mod actors;
pub mod channel;
pub mod collective;
pub mod nexmark;
pub mod placement;
pub mod ps;
pub mod runtime;
pub mod train;
pub mod transfer;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use fleet_gcs::bench::{BenchOptions, BenchSystem};

/// `fleet bench [runtime|gcs]`
#[derive(Args)]
pub struct BenchCommand {
    #[command(subcommand)]
    target: Option<BenchTarget>,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Tasks, actor calls, puts and gets on an embedded single-node cluster, with Ray's
    /// microbenchmark metric names (the default).
    Runtime(RuntimeBenchArgs),
    /// Control-store write throughput, p50/p99 latency and leader failover, vs etcd.
    Gcs(GcsBenchArgs),
    /// Actor creation at scale (actors/s for N = 1,000 and 10,000 until each answered a
    /// ping), idle memory per actor and worker processes; `--peer` adds Ray.
    Actors(actors::ActorsBenchArgs),
    /// The child of the Unix-socket round-trip floor (started by `fleet bench runtime`).
    #[command(hide = true)]
    UnixEcho {
        /// The abstract socket to echo on.
        name: String,
    },
    /// Placement group create/removal (ops/s) on an embedded cluster, as in Ray's benchmark.
    Placement(placement::PlacementBenchArgs),
    /// Node-to-node object transfer (GB/s) vs a plain TCP socket on loopback.
    Transfer(TransferBenchArgs),
    /// `fleet::channel` on a two-node loopback cluster: same node vs memcpy, across nodes
    /// vs a TCP socket, small messages per second.
    Channel(ChannelBenchArgs),
    /// `fleet-collective` all-reduce bus bandwidth on a two-node loopback cluster (2 ranks
    /// on one node, 2 across nodes, 4), against memcpy and TCP bounds; `--peer` adds gloo.
    Collective(CollectiveBenchArgs),
    /// Data-parallel training of nanoGPT's CPU GPT (`fleet-train`): tokens/s for 1 and 2
    /// ranks, step time split into computation and communication; `--peer` adds PyTorch DDP.
    Train(TrainBenchArgs),
    /// The parameter server (`fleet-ps`): keys/s for 1/2/4 workers and 1/2 shards, time to
    /// 1% of the optimal log-loss under BSP, SSP(2), ASP; `--peer` adds the Ray version.
    Ps(PsBenchArgs),
    /// Nexmark queries on `fleet-stream`: events/s per core (checkpoints every second) and
    /// end-to-end latency p50/p99 at a paced rate; `--peer` adds Apache Flink on the same
    /// events.
    Nexmark(NexmarkBenchArgs),
}

#[derive(Args)]
struct NexmarkBenchArgs {
    /// Queries, comma-separated (q0, q1, q2, q3, q5, q7, q8).
    #[arg(long, default_value = "q0,q1,q2,q3,q5,q7,q8")]
    query: String,
    /// Events per throughput run.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Instances of every operator.
    #[arg(long, default_value_t = 2)]
    parallelism: usize,
    /// Throughput runs per query (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Input rate of the latency runs, events/s (0: no latency runs).
    #[arg(long, default_value_t = 100_000)]
    latency_rate: u64,
    /// Length of each latency run, seconds.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Also run Apache Flink (bench/flink_nexmark.py) with this Python (a virtualenv with
    /// `apache-flink`; needs a JDK).
    #[arg(long)]
    peer: Option<String>,
}

#[derive(Args)]
struct PsBenchArgs {
    /// Worker counts for keys/s, comma-separated.
    #[arg(long, default_value = "1,2,4")]
    workers: String,
    /// Shard counts for keys/s, comma-separated.
    #[arg(long, default_value = "1,2")]
    shards: String,
    /// Timed pull+push rounds per worker.
    #[arg(long, default_value_t = 200)]
    calls: u64,
    /// Keys per pull and per push.
    #[arg(long, default_value_t = 1000)]
    keys_per_call: usize,
    /// Consistency models of the time-to-target runs (bsp, ssp<N>, asp), comma-separated.
    #[arg(long, default_value = "bsp,ssp2,asp")]
    consistency: String,
    /// Epochs of each time-to-target run (it ends there, reached or not).
    #[arg(long, default_value_t = 3)]
    epochs: u64,
    /// The relative gap to the optimal log-loss that counts as the target.
    #[arg(long, default_value_t = 0.01)]
    gap: f64,
    /// Also run the Ray version (bench/ray_ps.py) with this Python (a virtualenv with
    /// `ray[default]` and numpy).
    #[arg(long)]
    peer: Option<String>,
}

fn numbers(text: &str, flag: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(|n| {
            n.trim()
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("{flag} {n:?}: expected numbers like 1,2,4"))
        })
        .collect()
}

#[derive(Args)]
struct TrainBenchArgs {
    /// Rank counts, comma-separated.
    #[arg(long, default_value = "1,2")]
    ranks: String,
    /// Steps per run.
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// Sequences (of 64 characters) per rank per step.
    #[arg(long, default_value_t = 12)]
    batch: u64,
    /// Also run PyTorch DDP (bench/torch_ddp_gpt.py) with this Python.
    #[arg(long)]
    peer: Option<String>,
}

/// Runs a peer's script from `bench/` with `python` and `args`, echoes its `name value
/// unit` lines and returns them; `what` names the peer in the error.
pub fn run_peer(python: &str, script: &str, args: &[String], what: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bench")
        .join(script);
    let output = std::process::Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("running {} with {python}", script.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "the {what} peer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{text}");
    Ok(text)
}

#[derive(Args)]
struct CollectiveBenchArgs {
    /// Buffer sizes (f32), comma-separated.
    #[arg(long, default_value = "1KiB,64KiB,1MiB,16MiB,256MiB")]
    sizes: String,
    /// Placements: 2r_same_node, 2r_cross_node, 4r_two_nodes, 4r_same_node (comma-separated).
    #[arg(long, default_value = "2r_same_node,2r_cross_node,4r_two_nodes")]
    placements: String,
    /// Also run torch.distributed's gloo (bench/torch_allreduce.py) with this Python.
    #[arg(long)]
    peer: Option<String>,
}

#[derive(Args)]
struct ChannelBenchArgs {
    /// Bytes per large message.
    #[arg(long, default_value_t = 1 << 20)]
    message_bytes: usize,
    /// Large messages per round.
    #[arg(long, default_value_t = 1024)]
    messages: usize,
    /// Small (u64) messages per round.
    #[arg(long, default_value_t = 2_000_000)]
    small_messages: usize,
    /// Rounds; each metric is the median over them.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

#[derive(Args)]
struct TransferBenchArgs {
    /// Object size in bytes (default 1 GiB).
    #[arg(long, default_value_t = 1 << 30)]
    bytes: usize,
    /// Rounds; each metric is the median over them.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
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

#[derive(Args, Default)]
struct RuntimeBenchArgs {
    /// Seconds measured per metric.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Runs; each metric is reported as the median.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Only metrics whose name contains this.
    #[arg(long)]
    only: Option<String>,
}

impl BenchCommand {
    /// Runs the benchmark and prints `name value unit` lines.
    pub async fn run(self) -> anyhow::Result<()> {
        match self
            .target
            .unwrap_or(BenchTarget::Runtime(RuntimeBenchArgs {
                seconds: 2.0,
                repeat: 1,
                only: None,
            })) {
            BenchTarget::Runtime(args) => {
                if args.seconds.is_nan() || args.seconds <= 0.0 {
                    anyhow::bail!("--seconds must be positive");
                }
                fleet::init().await?;
                let duration = Duration::from_secs_f64(args.seconds);
                let mut runs: Vec<Vec<runtime::Measured>> = Vec::new();
                for _ in 0..args.repeat.max(1) {
                    runs.push(runtime::run_all(duration, args.only.as_deref()).await?);
                }
                let mut medians = std::collections::BTreeMap::new();
                for (i, first) in runs[0].iter().enumerate() {
                    let mut values: Vec<f64> = runs
                        .iter()
                        .filter_map(|r| r.get(i))
                        .map(|m| m.value)
                        .collect();
                    values.sort_by(f64::total_cmp);
                    let median = values[values.len() / 2];
                    let listed: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
                    println!(
                        "{} {median:.3} {}  # runs: {}",
                        first.name,
                        first.unit,
                        listed.join(" ")
                    );
                    medians.insert(first.name, median);
                }
                // The synchronous metrics against the floor measured in the same run
                // (target: at least 0.5, i.e. within 2x of a raw round trip).
                if let Some(floor) = medians.get("raw_unix_socket_round_trip") {
                    for name in ["1_1_actor_calls_sync", "single_client_tasks_sync"] {
                        if let Some(rate) = medians.get(name) {
                            println!("ratio_{name}_vs_unix_round_trip {:.3} x", rate / floor);
                        }
                    }
                }
                fleet::shutdown().await;
            }
            BenchTarget::Transfer(args) => transfer::run(args.bytes, args.repeat).await?,
            BenchTarget::Placement(args) => placement::run(args).await?,
            BenchTarget::Actors(args) => actors::run(args).await?,
            BenchTarget::UnixEcho { name } => runtime::unix_echo(&name)?,
            BenchTarget::Collective(args) => {
                let placements = args
                    .placements
                    .split(',')
                    .map(|p| {
                        let nodes: Vec<&'static str> = match p.trim() {
                            "2r_same_node" => vec!["node-0", "node-0"],
                            "2r_cross_node" => vec!["node-0", "node-1"],
                            "4r_two_nodes" => vec!["node-0", "node-0", "node-1", "node-1"],
                            "4r_same_node" => vec!["node-0"; 4],
                            other => anyhow::bail!(
                                "unknown placement {other:?}: use 2r_same_node, 2r_cross_node, 4r_two_nodes or 4r_same_node"
                            ),
                        };
                        Ok((p.trim().to_string(), nodes))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                collective::run(collective::CollectiveBench {
                    sizes: collective::parse_sizes(&args.sizes)?,
                    placements,
                    peer_python: args.peer,
                })
                .await?
            }
            BenchTarget::Train(args) => {
                let ranks = args
                    .ranks
                    .split(',')
                    .map(|r| {
                        r.trim().parse::<usize>().map_err(|_| {
                            anyhow::anyhow!("--ranks {r:?}: expected numbers like 1,2")
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                train::run(train::TrainBench {
                    ranks,
                    steps: args.steps,
                    batch: args.batch,
                    peer_python: args.peer,
                })
                .await?
            }
            BenchTarget::Ps(args) => {
                let consistency = args
                    .consistency
                    .split(',')
                    .map(|c| c.parse().map_err(|e: String| anyhow::anyhow!("--{e}")))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                ps::run(ps::PsBench {
                    workers: numbers(&args.workers, "--workers")?,
                    shards: numbers(&args.shards, "--shards")?,
                    calls: args.calls,
                    keys_per_call: args.keys_per_call,
                    consistency,
                    epochs: args.epochs,
                    gap: args.gap,
                    peer_python: args.peer,
                })
                .await?
            }
            BenchTarget::Nexmark(args) => {
                let queries = args
                    .query
                    .split(',')
                    .map(|q| {
                        fleet_stream::nexmark::Query::parse(q).ok_or_else(|| {
                            anyhow::anyhow!(
                                "--query {q:?}: Fleet has q0, q1, q2, q3, q5, q7 and q8"
                            )
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                anyhow::ensure!(args.events > 0, "--events must be at least 1");
                nexmark::run(nexmark::NexmarkBench {
                    queries,
                    events: args.events,
                    parallelism: args.parallelism.max(1),
                    repeat: args.repeat,
                    latency_rate: args.latency_rate,
                    latency_seconds: args.latency_seconds,
                    peer_python: args.peer,
                })
                .await?
            }
            BenchTarget::Channel(args) => {
                channel::run(channel::ChannelBench {
                    message_bytes: args.message_bytes,
                    messages: args.messages,
                    small_messages: args.small_messages,
                    repeat: args.repeat,
                })
                .await?
            }
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
