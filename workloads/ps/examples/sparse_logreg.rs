//! Sparse logistic regression on a parameter server, on an embedded Fleet cluster: the
//! template to copy for parameter-server training.
//!
//! ```sh
//! cargo run --release -p fleet-ps --example sparse_logreg                 # SSP(2), FTRL
//! cargo run --release -p fleet-ps --example sparse_logreg -- --consistency bsp --epochs 2
//! ```
//!
//! The data (`fleet_ps::data::SparseLogReg`) is generated from a seed: 1M examples over
//! 1M hashed feature ids with Zipf-like (1/r) frequencies, 20 features each, labels drawn
//! from a planted weight vector, so the best possible log-loss is known. 2 server shards
//! (FTRL-proximal, the sparse-LR classic) and 4 workers (remote tasks, each with its
//! quarter of the examples) pull the weights of each mini-batch's features and push their
//! gradients. This driver measures the held-out log-loss every 2 seconds while they train.
//! The last line is `logloss_gap_to_optimum <relative gap>`.
//!
//! Every shard is a primary and a backup actor. `--kill-primary-at SECONDS` SIGKILLs shard
//! 0's primary that far into training, to watch it come back: the run goes on, and at the
//! end every replica has applied each worker's every push exactly once.

use std::time::{Duration, Instant};

use fleet::ObjectRef;
use fleet_ps::data::SparseLogReg;
use fleet_ps::logreg::{logreg_worker, HeldOut, WorkerReport};
use fleet_ps::{Consistency, KeySpace, Optimizer, ParameterServer};

fn argument(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match argument(name) {
        Some(text) => text
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} {text:?}: expected a number")),
        None => Ok(default),
    }
}

#[fleet::main]
async fn main() -> anyhow::Result<()> {
    let examples: u64 = number("--examples", 1_000_000)?;
    let features: u64 = number("--features", 1_000_000)?;
    let workers: u64 = number("--workers", 4)?;
    let shards: usize = number("--shards", 2)?;
    let batch: u64 = number("--batch", 200)?;
    let epochs: u64 = number("--epochs", 2)?;
    let kill_at: Option<f64> = argument("--kill-primary-at")
        .map(|text| {
            text.parse()
                .map_err(|_| anyhow::anyhow!("--kill-primary-at {text:?}: expected seconds"))
        })
        .transpose()?;
    let consistency: Consistency = argument("--consistency")
        .as_deref()
        .unwrap_or("ssp2")
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--{e}"))?;
    anyhow::ensure!(
        examples >= workers && workers > 0 && batch > 0 && features > 1,
        "--examples, --features, --workers and --batch must be positive (and examples >= workers)"
    );
    let data = SparseLogReg {
        features,
        examples,
        active: 20,
        scale: 1.0,
        informative: (features / 100).max(1),
        seed: 2026,
    };
    let ps = ParameterServer::builder()
        .key_space(KeySpace::Hashed { buckets: 1 << 21 })
        .shards(shards)
        .workers(workers as usize)
        .optimizer(Optimizer::Ftrl {
            alpha: number("--alpha", 0.1f32)?,
            beta: 1.0,
            l1: number("--l1", 2.0f32)?,
            l2: 1.0,
        })
        .consistency(consistency)
        .build()
        .await?;
    let optimum = data.optimal_log_loss();
    let held_out = HeldOut::new(&data);
    let per_worker = examples / workers;
    let iterations = epochs * per_worker / batch;
    println!(
        "{examples} examples, {features} features ({} informative), {workers} workers, {shards} shards, {consistency:?}, FTRL; optimal held-out log-loss {optimum:.4}",
        data.informative
    );
    let started = Instant::now();
    // Under BSP and SSP every worker must run at once (a queued one would hold the
    // others at the staleness bound): each takes a share of this machine's CPUs.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let runs: Vec<ObjectRef<WorkerReport>> = (0..workers)
        .map(|w| {
            Ok(logreg_worker::options()
                .num_cpus(cpus / workers as f64)
                .remote(
                    ps.worker(w as usize)?,
                    data,
                    (w * per_worker, (w + 1) * per_worker),
                    iterations,
                    batch,
                ))
        })
        .collect::<anyhow::Result<_>>()?;
    let bar = indicatif::ProgressBar::new(iterations * workers);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} pushes  {msg}  [{elapsed} < {eta}]",
    )?);
    let finished = fleet::get_all(&runs);
    tokio::pin!(finished);
    let mut kill_at = kill_at;
    let reports = loop {
        if kill_at.is_some_and(|at| started.elapsed().as_secs_f64() >= at) {
            kill_at = None;
            let (primary, _) = ps.replicas().await?.swap_remove(0);
            let _ = std::process::Command::new("kill")
                .args(["-9", &primary.pid.to_string()])
                .status();
            bar.suspend(|| {
                println!(
                    "{:>6.1} s  SIGKILLed shard 0's primary (pid {}) at update {}",
                    started.elapsed().as_secs_f64(),
                    primary.pid,
                    primary.seq
                )
            });
        }
        tokio::select! {
            reports = &mut finished => break reports?,
            _ = tokio::time::sleep(Duration::from_millis(if kill_at.is_some() { 100 } else { 2000 })) => {
                if kill_at.is_some() {
                    continue;
                }
                let loss = held_out.log_loss(&ps).await?;
                let pushed: u64 = ps.clocks().await?.first().map_or(0, |(clocks, _)| clocks.iter().sum());
                bar.set_position(pushed);
                bar.set_message(format!("log-loss {loss:.4} (optimum {optimum:.4})"));
                bar.suspend(|| println!("{:>6.1} s  log-loss {loss:.4}  gap {:.2}%", started.elapsed().as_secs_f64(), 100.0 * (loss - optimum) / optimum));
            }
        }
    };
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    let loss = held_out.log_loss(&ps).await?;
    let keys: u64 = reports.iter().map(|r| r.keys).sum();
    let communication: f64 = reports
        .iter()
        .map(|r| r.communication / r.seconds)
        .sum::<f64>()
        / reports.len() as f64;
    println!(
        "{} pushes in {seconds:.1} s: {:.0} keys/s pulled+pushed, {:.0}% of worker time in pulls and pushes",
        reports.iter().map(|r| r.pushes).sum::<u64>(),
        keys as f64 / seconds,
        100.0 * communication
    );
    println!("held-out log-loss {loss:.4}, optimum {optimum:.4}");
    for recovery in ps.recoveries() {
        println!(
            "{} was lost and answered again after {:.2} s",
            recovery.replica, recovery.seconds
        );
    }
    // Every replica applied each worker's every push once (the workers pushed
    // `iterations` times each, all acknowledged).
    for (shard, (primary, backup)) in ps.replicas().await?.iter().enumerate() {
        anyhow::ensure!(
            primary
                .applied
                .iter()
                .chain(&backup.applied)
                .all(|a| *a == iterations)
                && primary.digest == backup.digest,
            "shard {shard}: primary applied {:?}, backup {:?}",
            primary.applied,
            backup.applied
        );
    }
    println!("every push applied exactly once on both replicas of every shard");
    ps.shutdown().await?;
    println!("logloss_gap_to_optimum {:.4}", (loss - optimum) / optimum);
    Ok(())
}
