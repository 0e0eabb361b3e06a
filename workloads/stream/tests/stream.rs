//! Streams across real actor processes on an embedded cluster: every Nexmark query's
//! committed output equals its exact reference answer; operator and source processes
//! SIGKILLed mid-run lose and duplicate nothing (the job restarts from its last complete
//! checkpoint and the transactional sink publishes each record once); a throttled sink
//! slows the source instead of filling memory, and checkpoints still complete; bad jobs
//! are refused by name.
//!
//! A plain program (`harness = false`): `fleet::init` first (a worker re-executing this
//! binary turns into a worker there), then every scenario in turn.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fleet_stream::nexmark::{reference, NexmarkJob, Output, Query, QUERIES};
use fleet_stream::{
    Batch, BoundedOutOfOrder, Count, FileSink, JobProgress, NexmarkSource, SequenceSource, Sink,
    SinkContext, SinkWriter, StreamEnv, StreamExecution, StreamJob, Tumbling,
};
use serde::{Deserialize, Serialize};

fn committed_sorted(dir: &Path) -> Result<Vec<String>> {
    let mut lines = FileSink::read_committed(dir).map_err(anyhow::Error::msg)?;
    lines.sort();
    Ok(lines)
}

fn same_lines(name: &str, got: &[String], want: &[String]) -> Result<()> {
    if got == want {
        return Ok(());
    }
    let missing = want
        .iter()
        .filter(|l| got.binary_search(l).is_err())
        .count();
    let extra = got
        .iter()
        .filter(|l| want.binary_search(l).is_err())
        .count();
    let first_missing = want.iter().find(|l| got.binary_search(l).is_err());
    bail!(
        "{name}: {} lines committed, {} expected ({missing} missing, {extra} not expected, duplicates: {}); first missing: {first_missing:?}",
        got.len(),
        want.len(),
        got.windows(2).filter(|w| w[0] == w[1]).count()
    )
}

async fn nexmark_queries_match_their_reference_answers() -> Result<()> {
    // 1,000 events per second of event time: a minute of it, six 10 s windows.
    let mut source = NexmarkSource::new(60_000);
    source.event_rate = 1_000;
    for query in QUERIES {
        let dir = tempfile::tempdir()?;
        let job = NexmarkJob::new(
            query,
            source.clone(),
            Output::Files(dir.path().to_path_buf()),
        );
        let report = StreamExecution::new(format!("test-{}", query.name()), job)
            .parallelism(2)
            .checkpoint_every(Duration::from_millis(200))
            .run()
            .await?;
        let want = reference(query, &source);
        ensure!(
            !want.is_empty(),
            "{}: the reference answer is empty",
            query.name()
        );
        same_lines(query.name(), &committed_sorted(dir.path())?, &want)?;
        ensure!(
            report.checkpoints >= 1 && report.failovers == 0,
            "{report:?}"
        );
        ensure!(
            report.late_records == 0,
            "{}: {} late",
            query.name(),
            report.late_records
        );
        println!(
            "  {}: {} results, {} checkpoints, {:?}",
            query.name(),
            want.len(),
            report.checkpoints,
            report.elapsed
        );
    }
    Ok(())
}

/// The pids a [`Killer`] killed, with their stages.
type Killed = Arc<Mutex<Vec<(usize, u32)>>>;

/// For each `(after, stage)` in turn: SIGKILLs the process of one instance of `stage` once
/// `after` checkpoints are complete. Returns the progress callback and what it killed.
fn killer(plan: Vec<(u64, usize)>) -> (impl FnMut(&JobProgress) + Send + Sync + 'static, Killed) {
    let killed: Killed = Arc::new(Mutex::new(Vec::new()));
    let record = killed.clone();
    let mut pending = plan;
    let callback = move |progress: &JobProgress| {
        let Some(&(after, stage)) = pending.first() else {
            return;
        };
        if progress.checkpoints < after || progress.instances.is_empty() {
            return;
        }
        if let Some((_, _, pid, _)) = progress.instances.iter().find(|i| i.0 == stage) {
            // SAFETY: kill(2) on a pid this job started; a stale pid is at worst ESRCH.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
            if let Ok(mut killed) = record.lock() {
                killed.push((stage, *pid));
            }
            pending.remove(0);
        }
    };
    (callback, killed)
}

async fn sigkilled_operators_and_sources_lose_and_duplicate_nothing() -> Result<()> {
    for query in [Query::Q5, Query::Q3] {
        // Paced so that the kills land mid-run: about 3 s of input.
        let source = NexmarkSource::new(120_000).paced(40_000);
        let dir = tempfile::tempdir()?;
        let job = NexmarkJob::new(
            query,
            source.clone(),
            Output::Files(dir.path().to_path_buf()),
        );
        // First an instance of the keyed stage (1), then a source (0), each after more
        // checkpoints completed.
        let (callback, killed) = killer(vec![(2, 1), (5, 0)]);
        let report = StreamExecution::new(format!("test-kill-{}", query.name()), job)
            .parallelism(2)
            .checkpoint_every(Duration::from_millis(250))
            .on_progress(callback)
            .run()
            .await?;
        let killed = killed.lock().map(|k| k.clone()).unwrap_or_default();
        ensure!(killed.len() == 2, "{}: killed {killed:?}", query.name());
        ensure!(
            report.failovers == 2,
            "{}: {} failovers ({:?})",
            query.name(),
            report.failovers,
            report.failures
        );
        same_lines(
            query.name(),
            &committed_sorted(dir.path())?,
            &reference(query, &source),
        )?;
        println!(
            "  {}: killed {killed:?}; recoveries {:?}; causes {:?}",
            query.name(),
            report.recoveries,
            report.failures
        );
    }
    Ok(())
}

/// A sink that takes at least `per_record` for each record (a slow external system).
#[derive(Clone)]
struct ThrottledSink {
    per_record: Duration,
    written: Arc<AtomicU64>,
}

struct ThrottledWriter {
    per_record: Duration,
    written: Arc<AtomicU64>,
}

impl Sink<u64> for ThrottledSink {
    fn writer(&self, _context: &SinkContext) -> Result<Box<dyn SinkWriter<u64>>, String> {
        Ok(Box::new(ThrottledWriter {
            per_record: self.per_record,
            written: self.written.clone(),
        }))
    }
}

impl SinkWriter<u64> for ThrottledWriter {
    fn write(&mut self, records: Batch<u64>) -> Result<(), String> {
        std::thread::sleep(self.per_record * records.len() as u32);
        self.written
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn pre_commit(&mut self, _checkpoint: u64) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
    fn commit(&mut self, _checkpoint: u64) -> Result<(), String> {
        Ok(())
    }
    fn restore(&mut self, _restored: Option<(u64, &[u8])>) -> Result<(), String> {
        Ok(())
    }
    fn report(&self) -> fleet_stream::SinkReport {
        fleet_stream::SinkReport {
            records: self.written.load(Ordering::Relaxed),
            latencies_ms: Vec::new(),
        }
    }
}

/// Counts per key over a sequence, into a throttled sink.
#[derive(Serialize, Deserialize)]
struct SlowSinkJob {
    records: u64,
}

impl StreamJob for SlowSinkJob {
    fn build(&self, env: &mut StreamEnv) {
        env.source(SequenceSource::new(self.records, |i| i))
            .key_by(|i: &u64| *i % 1000)
            .process(PassThrough)
            .sink(ThrottledSink {
                per_record: Duration::from_micros(50),
                written: Arc::new(AtomicU64::new(0)),
            });
    }
}
fleet_stream::register_stream_job!(SlowSinkJob);

struct PassThrough;

impl fleet_stream::KeyedProcessFunction<u64, u64, u64> for PassThrough {
    type State = ();
    fn process(
        &self,
        _key: &u64,
        value: u64,
        _state: &mut (),
        ctx: &mut fleet_stream::ProcessContext<u64>,
    ) {
        ctx.emit(value);
    }
}

async fn a_throttled_sink_slows_the_source_and_checkpoints_still_complete() -> Result<()> {
    // 2 sink instances at ~20,000 records/s each: 150,000 records take about 4 s, of which
    // the source needs about 2.5 s to hand over all but what the channels hold.
    let job = SlowSinkJob { records: 150_000 };
    let interval = Duration::from_millis(250);
    let report = StreamExecution::new("test-slow-sink", job)
        .parallelism(2)
        .checkpoint_every(interval)
        .run()
        .await?;
    ensure!(
        report.records_out() == 150_000,
        "{} written",
        report.records_out()
    );
    // Checkpoints kept completing while every channel was full (the source could have
    // read all 60,000 records in milliseconds).
    ensure!(
        report.checkpoints >= 4,
        "{} checkpoints in {:?}: {:?}",
        report.checkpoints,
        report.elapsed,
        report.checkpoint_durations
    );
    // The last one is the final checkpoint: aligned by design (the end follows its
    // barriers), so it waits for the backlog; the periodic ones must not.
    let mut durations = report.checkpoint_durations.clone();
    durations.pop();
    durations.sort();
    println!(
        "  {} checkpoints under backpressure in {:?}; median {:?}, max {:?}",
        report.checkpoints,
        report.elapsed,
        durations[durations.len() / 2],
        durations.last()
    );
    Ok(())
}

/// A job whose stream ends nowhere.
#[derive(Serialize, Deserialize)]
struct NoSinkJob;

impl StreamJob for NoSinkJob {
    fn build(&self, env: &mut StreamEnv) {
        let _ = env
            .source(SequenceSource::new(10, |i| i))
            .assign_timestamps(|i| *i as i64, BoundedOutOfOrder(Duration::ZERO))
            .key_by(|i: &u64| *i)
            .window(Tumbling::of(Duration::from_secs(1)))
            .aggregate(Count);
    }
}
fleet_stream::register_stream_job!(NoSinkJob);

/// A job type nobody registered.
#[derive(Serialize, Deserialize)]
struct UnregisteredJob;

impl StreamJob for UnregisteredJob {
    fn build(&self, env: &mut StreamEnv) {
        env.source(SequenceSource::new(10, |i| i))
            .sink(fleet_stream::DiscardSink);
    }
}

async fn bad_jobs_are_refused_by_name() -> Result<()> {
    let started = Instant::now();
    let error = StreamExecution::new("test-no-sink", NoSinkJob)
        .run()
        .await
        .err()
        .context("a job without a sink ran")?;
    ensure!(error.to_string().contains(".sink("), "{error}");
    let error = StreamExecution::new("test-unregistered", UnregisteredJob)
        .run()
        .await
        .err()
        .context("an unregistered job ran")?;
    ensure!(
        error
            .to_string()
            .contains("register_stream_job!(UnregisteredJob)"),
        "{error}"
    );
    let dir = tempfile::tempdir()?;
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, b"not a directory")?;
    let job = NexmarkJob::new(
        Query::Q0,
        NexmarkSource::new(100),
        Output::Files(blocked.join("out")),
    );
    let error = StreamExecution::new("test-bad-dir", job)
        .max_failovers(0)
        .run()
        .await
        .err()
        .context("a sink into a file's subdirectory ran")?;
    ensure!(
        error.to_string().contains("FileSink::transactional"),
        "{error}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(60),
        "refusals took {:?}",
        started.elapsed()
    );
    Ok(())
}

type Scenario = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>>>>;

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start a runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        if let Err(error) = fleet::init().await {
            eprintln!("fleet::init failed: {error}");
            return std::process::ExitCode::FAILURE;
        }
        let scenarios: Vec<(&str, Scenario)> = vec![
            ("nexmark_queries_match_their_reference_answers", || {
                Box::pin(nexmark_queries_match_their_reference_answers())
            }),
            (
                "sigkilled_operators_and_sources_lose_and_duplicate_nothing",
                || Box::pin(sigkilled_operators_and_sources_lose_and_duplicate_nothing()),
            ),
            (
                "a_throttled_sink_slows_the_source_and_checkpoints_still_complete",
                || Box::pin(a_throttled_sink_slows_the_source_and_checkpoints_still_complete()),
            ),
            ("bad_jobs_are_refused_by_name", || {
                Box::pin(bad_jobs_are_refused_by_name())
            }),
        ];
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        let (mut passed, mut failed) = (0, 0);
        for (name, scenario) in scenarios {
            if filter.as_deref().is_some_and(|f| !name.contains(f)) {
                continue;
            }
            let started = Instant::now();
            match tokio::time::timeout(Duration::from_secs(240), scenario()).await {
                Ok(Ok(())) => {
                    passed += 1;
                    println!("test {name} ... ok ({:?})", started.elapsed());
                }
                Ok(Err(error)) => {
                    failed += 1;
                    println!("test {name} ... FAILED: {error:#}");
                }
                Err(_) => {
                    failed += 1;
                    println!("test {name} ... FAILED: timed out after 240 s");
                }
            }
        }
        fleet::shutdown().await;
        println!("{passed} passed, {failed} failed");
        if failed == 0 {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    })
}
