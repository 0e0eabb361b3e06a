//! The `stream` workload: Nexmark q5 (hot items: a sliding-window count per auction, then
//! the top auctions per window — three stages of operator actors) on `fleet-stream`, with
//! checkpoints every second and a transactional file sink, its instances spread over the
//! cluster's nodes, while the scenario kills a node running operators and the GCS leader.
//!
//! The source is paced (`rate` events/s) so that the job is still running when the faults
//! land. Each completed checkpoint is an acknowledged operation (one lane): recovery is the
//! time until a checkpoint started after the fault completes.
//!
//! Invariants, with no slack:
//! - the job finishes (failing over from its last complete checkpoint as often as it must);
//! - the committed output equals the exact answer over the same events, line for line: no
//!   result lost (counted as lost acknowledged operations), none twice, none extra.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_stream::nexmark::{reference, NexmarkJob, Output, Query};
use fleet_stream::{FileSink, JobReport, NexmarkSource, StreamExecution};

use crate::workloads::{BoxFuture, Progress, Verdict, Workload};

/// The `stream` workload (see the module docs).
pub struct StreamWorkload {
    events: u64,
    rate: u64,
    /// Built once: a paced source's event times start when it is made, and the reference
    /// answer must see the same events.
    source: NexmarkSource,
    dir: PathBuf,
    outcome: Mutex<Option<Result<JobReport, String>>>,
}

impl StreamWorkload {
    /// q5 over `events` events paced at `rate` events/s, committing under `dir`.
    pub fn new(events: u64, rate: u64, dir: PathBuf) -> Self {
        StreamWorkload {
            events,
            rate,
            source: paced_source(events, rate),
            dir,
            outcome: Mutex::new(None),
        }
    }
}

fn paced_source(events: u64, rate: u64) -> NexmarkSource {
    let mut source = NexmarkSource::new(events).paced(rate);
    // 1,000 events per second of event time: windows close while the job runs.
    source.event_rate = 1_000;
    source
}

impl Workload for StreamWorkload {
    fn name(&self) -> String {
        format!(
            "stream (Nexmark q5 over {} events at {} events/s, 2 instances per operator, checkpoints every second)",
            self.events, self.rate
        )
    }

    fn prepare(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            anyhow::ensure!(
                self.events >= 1 && self.rate >= 1,
                "the stream workload needs events and rate of at least 1"
            );
            std::fs::create_dir_all(&self.dir)?;
            // The pace starts now, with the workload's clock.
            self.source = paced_source(self.events, self.rate);
            Ok(())
        })
    }

    fn run(
        &self,
        _deadline: Instant,
        progress: Arc<Progress>,
    ) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let job = NexmarkJob::new(
                Query::Q5,
                self.source.clone(),
                Output::Files(self.dir.clone()),
            );
            let outcome = StreamExecution::new("chaos-stream-q5", job)
                .parallelism(2)
                .checkpoint_every(Duration::from_secs(1))
                .scheduling(fleet::Scheduling::Spread)
                .max_failovers(8)
                .on_progress(move |p| {
                    if let Some(took) = p.last_checkpoint_took {
                        progress.acked(0, Instant::now() - took);
                    }
                })
                .run()
                .await
                .map_err(|e| e.to_string());
            *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
            Ok(())
        })
    }

    fn check(&self) -> BoxFuture<'_, (Vec<Verdict>, u64)> {
        Box::pin(async move {
            let verdict = |invariant: &str, passed: bool, evidence: String| Verdict {
                invariant: invariant.to_string(),
                passed,
                evidence,
            };
            let want = reference(Query::Q5, &self.source.clone());
            let outcome = self
                .outcome
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let report = match outcome {
                Some(Ok(report)) => report,
                other => {
                    let evidence = match other {
                        Some(Err(error)) => error,
                        _ => "the job did not report".into(),
                    };
                    return (
                        vec![verdict("the job finishes", false, evidence)],
                        want.len() as u64,
                    );
                }
            };
            let recoveries: Vec<String> = report
                .recoveries
                .iter()
                .map(|r| format!("{:.2} s", r.as_secs_f64()))
                .collect();
            let mut verdicts = vec![verdict(
                "the job finishes",
                true,
                format!(
                    "{} checkpoints in {:.1} s; {} failovers, instances running again after [{}]; causes: [{}]",
                    report.checkpoints,
                    report.elapsed.as_secs_f64(),
                    report.failovers,
                    recoveries.join(", "),
                    report
                        .failures
                        .iter()
                        .map(|f| f.chars().take(160).collect::<String>())
                        .collect::<Vec<_>>()
                        .join(" | ")
                ),
            )];
            let mut got = match FileSink::read_committed(&self.dir) {
                Ok(lines) => lines,
                Err(error) => {
                    verdicts.push(verdict("the committed output is exact", false, error));
                    return (verdicts, want.len() as u64);
                }
            };
            got.sort();
            let missing = want
                .iter()
                .filter(|l| got.binary_search(l).is_err())
                .count();
            let extra = got
                .iter()
                .filter(|l| want.binary_search(l).is_err())
                .count();
            let duplicates = got.windows(2).filter(|w| w[0] == w[1]).count();
            verdicts.push(verdict(
                "the committed output is exact",
                got == want,
                format!(
                    "{} results committed, {} expected: {missing} missing, {extra} not expected, {duplicates} twice",
                    got.len(),
                    want.len()
                ),
            ));
            (verdicts, missing as u64)
        })
    }
}
