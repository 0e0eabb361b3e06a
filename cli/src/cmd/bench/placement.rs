//! `fleet bench placement`: Ray's `placement group create/removal` metric (ops/s), the
//! same shape as Ray's `ray_perf.py`: on an embedded single-node cluster offering
//! `{custom: 100}`, create 100 one-bundle groups of `{custom: 0.001}` at once, wait until
//! every one is reserved, then remove them all; a group created and removed is one op.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use fleet::{InitOptions, PlacementGroup};

/// Groups per round (Ray's `NUM_PGS`).
const GROUPS: usize = 100;

/// `fleet bench placement` options.
#[derive(Args)]
pub struct PlacementBenchArgs {
    /// Runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Seconds measured per run (whole rounds of 100 groups, after a warm-up round).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

/// One round: 100 groups created concurrently, all awaited, then all removed.
async fn round() -> anyhow::Result<u64> {
    let mut creates = tokio::task::JoinSet::new();
    for _ in 0..GROUPS {
        creates.spawn(
            PlacementGroup::new(vec![BTreeMap::from([("custom".to_string(), 0.001)])]).create(),
        );
    }
    let mut groups = Vec::with_capacity(GROUPS);
    while let Some(created) = creates.join_next().await {
        groups.push(created??);
    }
    for group in &groups {
        fleet::remove_placement_group(group).await?;
    }
    Ok(groups.len() as u64)
}

/// Runs the benchmark and prints `placement_group_create/removal <median> ops/s`.
pub async fn run(args: PlacementBenchArgs) -> anyhow::Result<()> {
    if args.seconds.is_nan() || args.seconds <= 0.0 {
        anyhow::bail!("--seconds must be positive");
    }
    fleet::init_with(InitOptions {
        resources: BTreeMap::from([("custom".to_string(), 100.0)]),
        ..InitOptions::default()
    })
    .await?;
    let duration = Duration::from_secs_f64(args.seconds);
    let mut values = Vec::new();
    for _ in 0..args.repeat.max(1) {
        round().await?;
        let started = Instant::now();
        let mut done = 0;
        while started.elapsed() < duration {
            done += round().await?;
        }
        let rate = done as f64 / started.elapsed().as_secs_f64();
        eprintln!("placement_group_create/removal {rate:.1} ops/s");
        values.push(rate);
    }
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    let listed: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
    println!(
        "placement_group_create/removal {median:.3} ops/s  # runs: {}",
        listed.join(" ")
    );
    fleet::shutdown().await;
    Ok(())
}
