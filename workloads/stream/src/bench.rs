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
    source.base_time = crate::now_ms().max(0) as u64;
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
