//! `fleet bench actors`: actor creation at scale on an embedded single-node cluster.
//!
//! - `actor_creation_N` (actors/s): N actors spawned at once (a bounded number of spawns in
//!   flight, as a program creating thousands would), until every one answered a ping.
//! - `actor_memory_idle_kib`: the worker processes' resident memory grown per actor, with
//!   the largest N's actors alive and idle (RSS of this process's children, read from
//!   `/proc`, after minus before).
//! - `actor_processes`: how many worker processes host them.
//!
//! `--peer PYTHON` runs the same on Ray (`bench/ray_actors.py`) and prints `ratio_*` lines.

use std::time::Instant;

use clap::Args;

#[fleet::actor]
pub struct Idle {
    index: u32,
}

#[fleet::actor]
impl Idle {
    pub fn new(index: u32) -> Self {
        Idle { index }
    }

    pub fn ping(&self) -> u32 {
        self.index
    }
}

/// `fleet bench actors` options.
#[derive(Args)]
pub struct ActorsBenchArgs {
    /// Actor counts, comma-separated (each gets a fresh set of actors).
    #[arg(long, default_value = "1000,10000")]
    counts: String,
    /// Spawns in flight at once.
    #[arg(long, default_value_t = 512)]
    in_flight: usize,
    /// Runs per count; the median is reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Also create actors on Ray (bench/ray_actors.py) with this Python.
    #[arg(long)]
    peer: Option<String>,
    /// Actors the Ray peer creates (one Python process each: keep it small).
    #[arg(long, default_value_t = 20)]
    peer_count: usize,
}

/// Resident memory (bytes) of this process's children and their descendants.
fn children_rss_bytes() -> u64 {
    let me = std::process::id();
    let mut parents: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
    let mut rss: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("PPid:") {
                if let Ok(ppid) = v.trim().parse() {
                    parents.insert(pid, ppid);
                }
            } else if let Some(v) = line.strip_prefix("VmRSS:") {
                let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                rss.insert(pid, kib * 1024);
            }
        }
    }
    let descends = |mut pid: u32| {
        for _ in 0..64 {
            match parents.get(&pid) {
                Some(&p) if p == me => return true,
                Some(&p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    };
    parents
        .keys()
        .filter(|&&pid| descends(pid))
        .map(|pid| rss.get(pid).copied().unwrap_or(0))
        .sum()
}

fn worker_processes() -> usize {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...: the comm may hold spaces, so split after ')'.
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(me)
        })
        .count()
}

/// Spawns `count` actors (`in_flight` spawns at a time) and pings every one; returns the
/// handles and the seconds it took.
async fn create_and_ping(count: usize, in_flight: usize) -> anyhow::Result<(Vec<IdleHandle>, f64)> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let started = Instant::now();
    let actors: Vec<IdleHandle> = stream::iter(0..count)
        .map(|i| async move {
            let actor = Idle::remote(i as u32).spawn().await?;
            let answer = actor.ping().await?;
            anyhow::ensure!(answer == i as u32, "actor {i} answered {answer}");
            Ok::<_, anyhow::Error>(actor)
        })
        .buffer_unordered(in_flight.max(1))
        .try_collect()
        .await?;
    Ok((actors, started.elapsed().as_secs_f64()))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs the benchmark and prints `name value unit` lines.
pub async fn run(args: ActorsBenchArgs) -> anyhow::Result<()> {
    let counts = super::numbers(&args.counts, "--counts")?;
    fleet::init().await?;
    let mut fleet_rates = Vec::new();
    for &count in &counts {
        let mut rates = Vec::new();
        let mut memory = None;
        for run in 0..args.repeat.max(1) {
            let before = children_rss_bytes();
            let (actors, seconds) = create_and_ping(count, args.in_flight).await?;
            let rate = count as f64 / seconds;
            eprintln!("actor_creation_{count} {rate:.1} actors/s ({seconds:.2} s)");
            rates.push(rate);
            if run == 0 {
                // Let the creations' transient buffers go, then read the idle footprint.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let after = children_rss_bytes();
                memory = Some((
                    after.saturating_sub(before) as f64 / 1024.0 / count as f64,
                    worker_processes(),
                ));
            }
            let last = count == counts[counts.len() - 1] && run + 1 == args.repeat.max(1);
            if !last {
                // The next round starts from an empty node (the last one's actors end with
                // the cluster).
                for actor in &actors {
                    fleet::kill(actor.raw()).await?;
                }
            }
        }
        let rate = median(rates);
        println!("actor_creation_{count} {rate:.1} actors/s");
        fleet_rates.push((count, rate));
        if let Some((kib, processes)) = memory {
            println!("actor_memory_idle_kib_{count} {kib:.1} KiB");
            println!("actor_processes_{count} {processes} processes");
        }
    }
    fleet::shutdown().await;
    if let Some(python) = &args.peer {
        let text = super::run_peer(
            python,
            "ray_actors.py",
            &[args.peer_count.to_string()],
            "Ray",
        )?;
        let ray_rate = text
            .lines()
            .filter_map(|l| l.strip_prefix("actor_creation_"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .next();
        if let Some(ray_rate) = ray_rate {
            for (count, rate) in fleet_rates {
                println!("ratio_actor_creation_{count} {:.1} x", rate / ray_rate);
            }
        }
    }
    Ok(())
}
