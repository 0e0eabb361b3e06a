//! `fleet bench collective`: `fleet-collective`'s all-reduce on a real two-node cluster
//! (one GCS replica and two raylets started as daemons on loopback, this binary as driver
//! and rank actors), for each placement and size, next to its bound measured in the same
//! run and, with `--peer`, torch.distributed's gloo on the same machine:
//! - bus bandwidth, `busbw = algbw · 2(n−1)/n` (the bytes each rank must send and receive
//!   in any all-reduce, per second), and the median time per all-reduce;
//! - the bound on one node: one core's memcpy bandwidth over buffers larger than the caches
//!   (every byte a rank sends must be copied across processes at least once, by one of the
//!   two ends; the ranks copy in parallel, each its share: busbw cannot pass one core's
//!   copy rate);
//! - the bound across nodes: plain TCP sockets on loopback, two at once in opposite
//!   directions (a ring rank sends and receives at the same time), each one's rate.

use std::time::{Duration, Instant};

use anyhow::Context;
use fleet::{ObjectRef, Scheduling};
use fleet_collective::{Group, GroupOptions, ReduceOp};

use super::channel::{median, tcp_gbps, two_node_cluster};

/// One rank of a benchmarked group.
#[fleet::actor]
pub struct CollectiveBenchRank {
    group: Option<Group>,
}

#[fleet::actor]
impl CollectiveBenchRank {
    pub fn new() -> Self {
        CollectiveBenchRank { group: None }
    }

    pub fn node(&self) -> String {
        fleet::node_id()
    }

    pub async fn form(&mut self, name: String, world: usize, rank: usize) -> Result<(), String> {
        self.group = None;
        let group = Group::init_with(&name, world, rank, GroupOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        self.group = Some(group);
        Ok(())
    }

    /// Seconds per all-reduce of `bytes` of f32, `iters` times after two warm-ups, each
    /// started after a barrier.
    pub async fn time_all_reduce(
        &mut self,
        bytes: usize,
        iters: usize,
    ) -> Result<Vec<f64>, String> {
        let group = self.group.as_mut().ok_or("no group formed")?;
        let mut data = vec![1.0f32; (bytes / 4).max(1)];
        for _ in 0..2 {
            group
                .all_reduce(&mut data, ReduceOp::Sum)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters {
            group.barrier().await.map_err(|e| e.to_string())?;
            let started = Instant::now();
            group
                .all_reduce(&mut data, ReduceOp::Sum)
                .await
                .map_err(|e| e.to_string())?;
            times.push(started.elapsed().as_secs_f64());
        }
        Ok(times)
    }

    pub async fn leave(&mut self) -> Result<(), String> {
        self.group = None;
        Ok(())
    }
}

/// Options of `fleet bench collective`.
pub struct CollectiveBench {
    /// Sizes in bytes, with their labels.
    pub sizes: Vec<(String, usize)>,
    /// Placements: (label, node of each rank).
    pub placements: Vec<(String, Vec<&'static str>)>,
    /// A Python with PyTorch, to run `bench/torch_allreduce.py` (the gloo peer).
    pub peer_python: Option<String>,
}

/// Parses "1KiB,16MiB,256MiB".
pub fn parse_sizes(text: &str) -> anyhow::Result<Vec<(String, usize)>> {
    text.split(',')
        .map(|item| {
            let item = item.trim();
            let (digits, factor) = if let Some(d) = item.strip_suffix("GiB") {
                (d, 1usize << 30)
            } else if let Some(d) = item.strip_suffix("MiB") {
                (d, 1 << 20)
            } else if let Some(d) = item.strip_suffix("KiB") {
                (d, 1 << 10)
            } else {
                (item.strip_suffix('B').unwrap_or(item), 1)
            };
            let count: usize = digits.parse().with_context(|| {
                format!("size {item:?}: write a number with KiB, MiB or GiB (1KiB,16MiB)")
            })?;
            anyhow::ensure!(count > 0, "size {item:?} is zero");
            Ok((item.to_string(), count * factor))
        })
        .collect()
}

/// About 0.5 GB per size, between 5 and 200 all-reduces.
fn iterations(bytes: usize) -> usize {
    ((512usize << 20) / bytes.max(1)).clamp(5, 200)
}

/// One core's copy rate over `bytes`-sized buffers larger than the caches, in GB/s (the
/// median of a few copies into memory already touched).
fn memcpy_gbps(bytes: usize) -> f64 {
    let source: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    let mut target = vec![0u8; bytes];
    let mut rates = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        target.copy_from_slice(&source);
        std::hint::black_box(&mut target);
        rates.push(bytes as f64 / started.elapsed().as_secs_f64() / 1e9);
    }
    median(&mut rates)
}

async fn rank_on(node: &str) -> anyhow::Result<CollectiveBenchRankHandle> {
    let rank = CollectiveBenchRank::remote()
        .scheduling(Scheduling::NodeAffinity {
            node_id: node.into(),
            soft: false,
        })
        .spawn()
        .await?;
    let placed = rank.node().await?;
    anyhow::ensure!(placed == node, "a rank landed on {placed}, not {node}");
    Ok(rank)
}

/// Runs the benchmark; prints `name value unit` lines.
pub async fn run(options: CollectiveBench) -> anyhow::Result<()> {
    // The peer first, on a quiet machine (no cluster processes yet, none winding down).
    let peer_output = match &options.peer_python {
        Some(python) => Some(peer(python, &options)?),
        None => None,
    };
    let (home, cluster) = two_node_cluster("collective").await?;
    let outcome = measure(&options).await;
    fleet::shutdown().await;
    drop(cluster);
    drop(home);
    let fleet_figures = outcome?;
    if let Some(peer_output) = peer_output {
        print_ratios(&peer_output, &fleet_figures);
    }
    Ok(())
}

/// Fleet's busbw per (placement, size label).
type Figures = Vec<(String, String, f64)>;

async fn measure(options: &CollectiveBench) -> anyhow::Result<Figures> {
    let largest = options.sizes.iter().map(|s| s.1).max().unwrap_or(1 << 20);
    let memcpy = memcpy_gbps((64usize << 20).max(largest.min(256 << 20)));
    // A ring rank sends and receives at once: the bound across nodes is two loopback
    // sockets carrying bytes in opposite directions at the same time (each one's rate), on
    // the same cores the ranks share. One socket alone is printed for reference.
    let (mut single, mut pair) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        single.push(tcp_gbps(1 << 20, 512).await?);
        let (a, b) = tokio::try_join!(tcp_gbps(1 << 20, 512), tcp_gbps(1 << 20, 512))?;
        pair.push((a + b) / 2.0);
    }
    let tcp = median(&mut pair);
    println!("tcp_loopback_one_socket {:.3} GB/s", median(&mut single));
    println!("tcp_loopback_two_sockets_each {tcp:.3} GB/s");
    println!("memcpy_one_core {memcpy:.3} GB/s");
    let mut figures = Vec::new();
    for (index, (placement, nodes)) in options.placements.iter().enumerate() {
        let world = nodes.len();
        let mut ranks = Vec::new();
        for node in nodes {
            ranks.push(rank_on(node).await?);
        }
        let name = format!("bench-{index}-{}", std::process::id());
        let forming: Vec<ObjectRef<()>> = ranks
            .iter()
            .enumerate()
            .map(|(rank, actor)| actor.form(name.clone(), world, rank))
            .collect();
        fleet::get_all(&forming).await?;
        // A ring with ranks on two nodes crosses TCP; on one node it is memory traffic.
        let one_node = nodes.iter().all(|n| *n == nodes[0]);
        let bound = if one_node { memcpy } else { tcp };
        println!("allreduce_bound_{placement} {bound:.3} GB/s");
        for (label, bytes) in &options.sizes {
            let iters = iterations(*bytes);
            let timing: Vec<ObjectRef<Vec<f64>>> = ranks
                .iter()
                .map(|r| r.time_all_reduce(*bytes, iters))
                .collect();
            let per_rank = fleet::get_all(&timing).await?;
            // An all-reduce ends when its last rank has the result.
            let mut slowest: Vec<f64> = (0..iters)
                .map(|i| per_rank.iter().map(|t| t[i]).fold(0.0, f64::max))
                .collect();
            let seconds = median(&mut slowest);
            let busbw = *bytes as f64 / seconds * 2.0 * (world - 1) as f64 / world as f64 / 1e9;
            println!("allreduce_us_{placement}_{label} {:.1} us", seconds * 1e6);
            println!("allreduce_busbw_{placement}_{label} {busbw:.4} GB/s");
            println!(
                "allreduce_vs_bound_{placement}_{label} {:.3} ratio",
                busbw / bound
            );
            figures.push((placement.clone(), label.clone(), busbw));
            figures.push((placement.clone(), format!("us:{label}"), seconds * 1e6));
        }
        let leaving: Vec<ObjectRef<()>> = ranks.iter().map(|r| r.leave()).collect();
        fleet::get_all(&leaving).await?;
        fleet_collective::remove_group(&name).await?;
        for rank in &ranks {
            fleet::kill(rank.raw()).await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(figures)
}

/// Runs the gloo peer for each rank count benchmarked; returns (ranks, its output).
fn peer(python: &str, options: &CollectiveBench) -> anyhow::Result<Vec<(usize, String)>> {
    let sizes: Vec<&str> = options.sizes.iter().map(|s| s.0.as_str()).collect();
    let mut worlds: Vec<usize> = options.placements.iter().map(|p| p.1.len()).collect();
    worlds.sort_unstable();
    worlds.dedup();
    let mut outputs = Vec::new();
    for world in worlds {
        let args = [
            "--ranks".to_string(),
            world.to_string(),
            "--sizes".to_string(),
            sizes.join(","),
        ];
        let text = super::run_peer(python, "torch_allreduce.py", &args, "gloo")?;
        outputs.push((world, text));
    }
    Ok(outputs)
}

/// Fleet over gloo for bandwidth, gloo over Fleet for latency (both: how many times
/// better Fleet is), per placement and size.
fn print_ratios(peer_output: &[(usize, String)], figures: &Figures) {
    for (world, text) in peer_output {
        let ours = |placement: &str| placement.starts_with(&format!("{world}r_"));
        for (label, gloo) in
            figures_with_prefix(text, &format!("gloo_allreduce_busbw_{world}r_same_node_"))
        {
            for (placement, size, busbw) in figures {
                if *size == label && ours(placement) && gloo > 0.0 {
                    println!(
                        "ratio_fleet_over_gloo_allreduce_{placement}_{label} {:.3} ratio",
                        busbw / gloo
                    );
                }
            }
        }
        for (label, gloo_us) in
            figures_with_prefix(text, &format!("gloo_allreduce_us_{world}r_same_node_"))
        {
            for (placement, size, fleet_us) in figures {
                if size.strip_prefix("us:") == Some(label.as_str()) && ours(placement) {
                    println!(
                        "ratio_gloo_over_fleet_latency_{placement}_{label} {:.3} ratio",
                        gloo_us / fleet_us
                    );
                }
            }
        }
    }
}

/// The `name value unit` lines whose name starts with `prefix`: (rest of the name, value).
pub fn figures_with_prefix(text: &str, prefix: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let label = parts.next()?.strip_prefix(prefix)?;
            let value = parts.next()?.parse::<f64>().ok()?;
            Some((label.to_string(), value))
        })
        .collect()
}
