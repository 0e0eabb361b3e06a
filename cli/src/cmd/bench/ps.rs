//! `fleet bench ps`: the parameter server (`fleet-ps`) on an embedded single-node cluster.
//! Keys pulled+pushed per second (sparse, 1,000 random keys per call, each call waited
//! for) for each worker and shard count; the time sparse logistic regression takes to come
//! within 1% of the known optimal held-out log-loss under BSP, SSP(2) and ASP. With `--peer
//! PYTHON`, the same parameter server written in Ray's documented pattern (server actors
//! holding numpy arrays, workers as Ray tasks; `bench/ray_ps.py`) runs first on the same
//! data, on a quiet machine, and `ratio_*` lines compare the two.

use std::time::Duration;

use fleet_ps::bench::{export, keys_per_second, time_to_target};
use fleet_ps::data::SparseLogReg;
use fleet_ps::{Consistency, KeySpace, Optimizer, ParameterServer};

/// What to run.
pub struct PsBench {
    /// Worker counts for keys/s.
    pub workers: Vec<usize>,
    /// Shard counts for keys/s.
    pub shards: Vec<usize>,
    /// Timed calls per worker.
    pub calls: u64,
    /// Keys per call.
    pub keys_per_call: usize,
    /// Consistency models for time-to-target.
    pub consistency: Vec<Consistency>,
    /// Epochs of the time-to-target run (an upper bound: it stops at the end of them).
    pub epochs: u64,
    /// The relative gap to the optimum that counts as reached.
    pub gap: f64,
    /// A Python with Ray, to run the peer.
    pub peer_python: Option<String>,
}

/// Workers and shards of the time-to-target runs.
const TARGET_WORKERS: u64 = 4;
const TARGET_SHARDS: usize = 2;
/// Hashed slots of every server.
const BUCKETS: u64 = 1 << 20;
/// Examples per worker per push.
const BATCH: u64 = 200;
/// How often the driver samples the held-out log-loss.
const EVAL_EVERY: Duration = Duration::from_millis(100);

/// The time-to-target data: 200k examples of 20 features over 10k ids, 100 of them
/// informative, and 20k held out (with 100k ids the gap stalls near 2.7%: the estimation
/// error of the rare ids, not the optimizer, sets it).
fn data() -> SparseLogReg {
    SparseLogReg {
        features: 10_000,
        examples: 200_000,
        active: 20,
        scale: 1.0,
        informative: 100,
        seed: 2026,
    }
}

fn ftrl() -> Optimizer {
    // The same hyper-parameters as bench/ray_ps.py's.
    Optimizer::Ftrl {
        alpha: 0.1,
        beta: 1.0,
        l1: 1.0,
        l2: 1.0,
    }
}

/// Runs the benchmark; prints `name value unit` lines.
pub async fn run(options: PsBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.calls >= 1
            && options.keys_per_call >= 1
            && options.epochs >= 1
            && options.gap > 0.0
            && options.workers.iter().all(|w| *w >= 1)
            && options.shards.iter().all(|s| *s >= 1),
        "--calls, --keys-per-call, --epochs, every worker and shard count must be at least 1, and --gap above 0"
    );
    let data = data();
    // The peer first, on a quiet machine (no cluster processes yet), on the same examples.
    let mut peer = String::new();
    if let Some(python) = &options.peer_python {
        let dir = std::env::temp_dir().join(format!("fleet-bench-ps-{}", std::process::id()));
        export(&data, &dir)?;
        let list = |v: &[usize]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let args: Vec<String> = [
            "--data",
            &dir.display().to_string(),
            "--workers",
            &list(&options.workers),
            "--shards",
            &list(&options.shards),
            "--calls",
            &options.calls.to_string(),
            "--keys-per-call",
            &options.keys_per_call.to_string(),
            "--buckets",
            &BUCKETS.to_string(),
            "--batch",
            &BATCH.to_string(),
            "--epochs",
            &options.epochs.to_string(),
            "--gap",
            &options.gap.to_string(),
            "--eval-every",
            &EVAL_EVERY.as_secs_f64().to_string(),
            "--target-workers",
            &TARGET_WORKERS.to_string(),
            "--target-shards",
            &TARGET_SHARDS.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let outcome = super::run_peer(python, "ray_ps.py", &args, "Ray parameter server");
        let _ = std::fs::remove_dir_all(&dir);
        peer = outcome?;
    }
    let most = options.workers.iter().copied().max().unwrap_or(1) as u64;
    fleet::init_with(fleet::InitOptions {
        num_cpus: Some(most.max(TARGET_WORKERS) as f64),
        ..Default::default()
    })
    .await?;
    let outcome = measure(&options, &data).await;
    fleet::shutdown().await;
    let ours = outcome?;
    let peer_figure = |name: &str| {
        super::collective::figures_with_prefix(&peer, name)
            .into_iter()
            .find(|(rest, _)| rest.is_empty())
            .map(|(_, value)| value)
    };
    for (name, value) in &ours {
        if let Some(keys) = name.strip_prefix("ps_keys_per_s_") {
            if let Some(theirs) = peer_figure(&format!("ray_ps_keys_per_s_{keys}")) {
                println!(
                    "ratio_fleet_over_ray_ps_keys_per_s_{keys} {:.2} ratio",
                    value / theirs
                );
            }
        }
    }
    if let Some(keys) = ours
        .iter()
        .find(|(n, _)| n == "ps_keys_per_s_4w_2s")
        .map(|f| f.1)
    {
        if let Some(theirs) = peer_figure("ray_ps_keys_per_s_4w_2s") {
            println!(
                "ratio_fleet_over_ray_ps_keys_per_s {:.2} ratio",
                keys / theirs
            );
        }
    }
    let fleet_asp = ours
        .iter()
        .find(|(n, _)| n == "ps_time_to_target_s_asp")
        .map(|f| f.1);
    if let (Some(ours), Some(theirs)) = (fleet_asp, peer_figure("ray_ps_time_to_target_s_asp")) {
        // Time: the peer's over ours, so that above 1 is Fleet ahead, as the other ratios.
        println!(
            "ratio_ray_over_fleet_ps_time_to_target_asp {:.2} ratio",
            theirs / ours
        );
    }
    Ok(())
}

/// Fleet's figures, printed as they come and returned as (name, value).
async fn measure(options: &PsBench, data: &SparseLogReg) -> anyhow::Result<Vec<(String, f64)>> {
    let mut figures = Vec::new();
    for &shards in &options.shards {
        for &workers in &options.workers {
            let ps = ParameterServer::builder()
                .key_space(KeySpace::Hashed { buckets: BUCKETS })
                .shards(shards)
                .workers(workers)
                .optimizer(ftrl())
                .consistency(Consistency::Asp)
                .build()
                .await?;
            let rate =
                keys_per_second(&ps, workers, options.keys_per_call, options.calls, 1.0).await;
            ps.shutdown().await?;
            let name = format!("ps_keys_per_s_{workers}w_{shards}s");
            let rate = rate?;
            println!("{name} {rate:.0} keys/s");
            figures.push((name, rate));
        }
    }
    for &consistency in &options.consistency {
        let ps = ParameterServer::builder()
            .key_space(KeySpace::Hashed { buckets: BUCKETS })
            .shards(TARGET_SHARDS)
            .workers(TARGET_WORKERS as usize)
            .optimizer(ftrl())
            .consistency(consistency)
            .build()
            .await?;
        let run = time_to_target(
            &ps,
            data,
            TARGET_WORKERS,
            BATCH,
            options.epochs,
            options.gap,
            EVAL_EVERY,
            1.0,
        )
        .await;
        ps.shutdown().await?;
        let run = run?;
        let label = consistency.to_string();
        let seconds = run.seconds.unwrap_or(f64::NAN);
        println!("ps_time_to_target_s_{label} {seconds:.2} s");
        println!(
            "ps_final_gap_{label} {:.4} ratio",
            (run.final_loss - run.optimum) / run.optimum
        );
        figures.push((format!("ps_time_to_target_s_{label}"), seconds));
    }
    Ok(figures)
}
