//! `fleet bench nexmark`: Nexmark queries on `fleet-stream` over the embedded cluster.
//! Per query: events/s per core (events ÷ the machine's busy CPU seconds during the run,
//! generator included, checkpoints every second) and end-to-end latency p50/p99 with the
//! source paced to a fixed rate. With `--peer PYTHON` the same events, written to a file
//! first, run on Apache Flink (PyFlink, `bench/flink_nexmark.py`) on the same machine in
//! the same session, and `ratio_fleet_over_flink_*` lines compare the two.

use std::time::Duration;

use fleet_stream::bench::{flink_published_per_core, latency, throughput, write_events_json};
use fleet_stream::nexmark::Query;
use fleet_stream::NexmarkSource;

/// What to run.
pub struct NexmarkBench {
    pub queries: Vec<Query>,
    pub events: u64,
    pub parallelism: usize,
    pub repeat: usize,
    /// Paced input rate of the latency runs (events/s); 0 skips them.
    pub latency_rate: u64,
    pub latency_seconds: u64,
    pub peer_python: Option<String>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

pub async fn run(bench: NexmarkBench) -> anyhow::Result<()> {
    let mut peer: std::collections::HashMap<String, f64> = Default::default();
    if let Some(python) = &bench.peer_python {
        let file = std::env::temp_dir().join(format!("fleet-nexmark-{}.jsonl", std::process::id()));
        let written = write_events_json(&NexmarkSource::new(bench.events), &file)?;
        println!("# {written} events written to a file for Flink");
        let queries: Vec<&str> = bench.queries.iter().map(|q| q.name()).collect();
        let text = super::run_peer(
            python,
            "flink_nexmark.py",
            &[
                "--events-file".into(),
                file.display().to_string(),
                "--queries".into(),
                queries.join(","),
                "--parallelism".into(),
                bench.parallelism.to_string(),
                "--checkpoint-ms".into(),
                "1000".into(),
            ],
            "Flink",
        );
        let _ = std::fs::remove_file(&file);
        let text = text?;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.split_whitespace();
            if let (Some(name), Some(value)) = (parts.next(), parts.next()) {
                if let Ok(value) = value.parse::<f64>() {
                    peer.insert(name.to_string(), value);
                }
            }
        }
    }
    // After the peer: it runs on a quiet machine.
    fleet::init().await?;
    let outcome = measure(&bench, &peer).await;
    fleet::shutdown().await;
    outcome
}

async fn measure(
    bench: &NexmarkBench,
    peer: &std::collections::HashMap<String, f64>,
) -> anyhow::Result<()> {
    for query in &bench.queries {
        let q = query.name();
        let mut per_core = Vec::new();
        let mut per_s = Vec::new();
        for _ in 0..bench.repeat.max(1) {
            let run = throughput(*query, bench.events, bench.parallelism).await?;
            per_core.push(run.events_per_s_per_core());
            per_s.push(run.events_per_s());
            println!(
                "# {q}: {} events in {:.2} s wall, {:.2} CPU s, {} results, {} checkpoints",
                run.events,
                run.wall.as_secs_f64(),
                run.cpu_seconds,
                run.results,
                run.checkpoints
            );
        }
        let per_core = median(per_core);
        println!("nexmark_{q}_events_per_s_per_core {per_core:.0} events/s");
        println!("nexmark_{q}_events_per_s {:.0} events/s", median(per_s));
        if let Some(published) = flink_published_per_core(*query) {
            println!(
                "ratio_fleet_over_flink_published_{q} {:.2} x",
                per_core / published
            );
        }
        if let Some(flink) = peer.get(&format!("flink_nexmark_{q}_events_per_s_per_core")) {
            println!(
                "ratio_fleet_over_flink_{q} {:.2} x",
                per_core / flink.max(1e-9)
            );
        }
        if bench.latency_rate > 0 {
            let (p50, p99, samples) = latency(
                *query,
                bench.latency_rate,
                Duration::from_secs(bench.latency_seconds.max(1)),
                bench.parallelism,
            )
            .await?;
            println!(
                "# {q}: latency from {samples} results at {} events/s",
                bench.latency_rate
            );
            println!("nexmark_{q}_latency_p50_ms {p50:.1} ms");
            println!("nexmark_{q}_latency_p99_ms {p99:.1} ms");
        }
    }
    Ok(())
}
