//! What `fleet bench nexmark` runs: a query over generated events on the current cluster,
//! measured two ways.
//! - **Throughput per core**: events ÷ CPU seconds spent by the whole machine while the
//!   job ran (every process — the generator, the operators, the driver — as Nexmark
//!   counts it), from `/proc/stat`. On a machine that runs nothing else this is the job's
//!   CPU time. Checkpoints run every second throughout.
//! - **Latency**: a second run with the source paced to a fixed rate and event time equal
//!   to wall-clock time; each result's latency is the sink's clock minus the result's
//!   event time (for a window: its end, so the watermark delay is counted, as a user sees
//!   it).

use std::time::{Duration, Instant};

use crate::nexmark::{NexmarkJob, Output, Query};
use crate::source::NexmarkSource;
use crate::{Result, StreamError, StreamExecution};

/// One measured run.
#[derive(Clone, Debug)]
pub struct NexmarkRun {
    pub query: Query,
    pub events: u64,
    pub wall: Duration,
    /// CPU seconds the machine spent during the run.
    pub cpu_seconds: f64,
    pub results: u64,
    pub checkpoints: u64,
}

impl NexmarkRun {
    /// Events per second of wall time.
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Events per CPU second (the Nexmark per-core figure).
    pub fn events_per_s_per_core(&self) -> f64 {
        self.events as f64 / self.cpu_seconds.max(1e-9)
    }
}

/// Busy CPU time of the whole machine so far, in seconds (`/proc/stat`: user, nice,
/// system, irq, softirq, steal).
pub fn machine_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let busy: u64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| fields.get(*i))
        .sum();
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(busy as f64 / if ticks > 0 { ticks as f64 } else { 100.0 })
}

/// Runs `query` over `events` unpaced events at `parallelism`, results discarded.
pub async fn throughput(query: Query, events: u64, parallelism: usize) -> Result<NexmarkRun> {
    let job = NexmarkJob::new(query, NexmarkSource::new(events), Output::Discard);
    let cpu_before = machine_cpu_seconds()
        .ok_or_else(|| StreamError::Invalid("/proc/stat is not readable here".into()))?;
    let started = Instant::now();
    let report = StreamExecution::new(format!("bench-nexmark-{}", query.name()), job)
        .parallelism(parallelism)
        .checkpoint_every(Duration::from_secs(1))
        .max_failovers(0)
        .run()
        .await?;
    let wall = started.elapsed();
    let cpu_seconds = machine_cpu_seconds().unwrap_or(cpu_before) - cpu_before;
    Ok(NexmarkRun {
        query,
        events,
        wall,
        cpu_seconds,
        results: report.records_out(),
        checkpoints: report.checkpoints,
    })
}

/// Runs `query` with the source paced to `rate` events/s for `duration`; returns the
/// latency percentiles (p50, p99) in ms and the results measured.
pub async fn latency(
    query: Query,
    rate: u64,
    duration: Duration,
    parallelism: usize,
) -> Result<(f64, f64, usize)> {
    let events = (rate as f64 * duration.as_secs_f64()) as u64;
    let mut source = NexmarkSource::new(events).paced(rate);
    source.event_rate = rate;
    let mut job = NexmarkJob::new(query, source, Output::Discard);
    // The watermark trails event time by the out-of-orderness bound, which adds to every
    // windowed result's latency: events here are in order within a split.
    job.out_of_orderness = Duration::from_millis(0);
    let report = StreamExecution::new(format!("bench-nexmark-latency-{}", query.name()), job)
        .parallelism(parallelism)
        .checkpoint_every(Duration::from_secs(1))
        .max_failovers(0)
        .run()
        .await?;
    let latencies = report.latencies_ms();
    if latencies.is_empty() {
        return Err(StreamError::Failed(format!(
            "{} produced no results to measure latency on",
            query.name()
        )));
    }
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99), latencies.len()))
}

/// Published per-core throughput of Flink 1.13 on Nexmark (the Nexmark repository's
/// README: 8 slots, exactly-once checkpoints every 3 minutes), events/s per core.
pub fn flink_published_per_core(query: Query) -> Option<f64> {
    Some(match query {
        Query::Q0 => 155_000.0,
        Query::Q1 => 158_000.0,
        Query::Q2 => 175_000.0,
        Query::Q3 => 152_000.0,
        Query::Q5 => 22_100.0,
        Query::Q7 => 12_300.0,
        Query::Q8 => 146_000.0,
    })
}

/// Writes every event of `source` as JSON lines in the nexmark-flink table layout
/// (`event_type`, `person`, `auction`, `bid`; the other two null), for a peer to read the
/// same events.
pub fn write_events_json(source: &NexmarkSource, path: &std::path::Path) -> Result<u64> {
    use std::io::Write;
    let file = std::fs::File::create(path)
        .map_err(|e| StreamError::Invalid(format!("cannot create {}: {e}", path.display())))?;
    let mut out = std::io::BufWriter::new(file);
    let mut count = 0;
    for event in source.all_events() {
        let line = match &event {
            ::nexmark::event::Event::Person(p) => {
                serde_json::json!({"event_type": 0, "person": p, "auction": null, "bid": null})
            }
            ::nexmark::event::Event::Auction(a) => {
                serde_json::json!({"event_type": 1, "person": null, "auction": a, "bid": null})
            }
            ::nexmark::event::Event::Bid(b) => {
                serde_json::json!({"event_type": 2, "person": null, "auction": null, "bid": b})
            }
        };
        serde_json::to_writer(&mut out, &line)
            .and_then(|_| out.write_all(b"\n").map_err(serde_json::Error::io))
            .map_err(|e| StreamError::Invalid(format!("writing {}: {e}", path.display())))?;
        count += 1;
    }
    out.flush()
        .map_err(|e| StreamError::Invalid(format!("writing {}: {e}", path.display())))?;
    Ok(count)
}
