//! The driver's side of a job: the checkpoint coordinator and failover.
//!
//! [`StreamExecution::run`] starts one [`StreamTask`](crate::task::StreamTask) actor per
//! operator instance (each in its own process), wires them with `fleet::channel`s (every
//! upstream instance to every downstream one of a keyed exchange, the same instance when
//! chained), and then coordinates:
//! - every `checkpoint_every` it triggers checkpoint `n` at the sources; once every instance
//!   acknowledged `n` (its state stored in the GCS), the checkpoint's record is written to
//!   the GCS — that write is the commit point — and every instance is told, so sinks
//!   publish what it covers;
//! - when every source is exhausted, a final checkpoint ends the stream (so the last
//!   records are committed too), and the job ends when every instance has finished;
//! - when an instance fails (its process died, a channel broke, its call failed), every
//!   instance is stopped and all are started again from the last complete checkpoint,
//!   sources rewound to its offsets and sinks discarding what it did not cover. Up to
//!   `max_failovers` times.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::graph::Plan;
use crate::job::{plan_for, StreamJob};
use crate::sink::SinkReport;
use crate::task::{
    Control, RestorePoint, StreamTask, StreamTaskHandle, TaskCall, TaskEvent, TaskReport,
    KV_NAMESPACE,
};
use crate::{Result, StreamError};

/// Messages a channel between stages may hold ahead of its receiver (each a frame of up
/// to `FRAME_RECORDS` records): what bounds memory and makes backpressure.
const CHANNEL_FRAMES: usize = 8;

/// See [`StreamExecution::alignment_timeout`].
const DEFAULT_ALIGNMENT_TIMEOUT: Duration = Duration::from_millis(200);

/// What `on_progress` calls.
type ProgressCallback = Box<dyn FnMut(&JobProgress) + Send + Sync>;

/// How to run a job.
pub struct StreamExecution<J> {
    job: J,
    name: String,
    parallelism: usize,
    checkpoint_interval: Duration,
    checkpoint_timeout: Duration,
    alignment_timeout: Option<Duration>,
    max_failovers: u32,
    scheduling: fleet::Scheduling,
    progress: Option<ProgressCallback>,
}

/// Where a running job is (handed to the `on_progress` callback).
#[derive(Clone, Debug, Default)]
pub struct JobProgress {
    /// Checkpoints completed so far.
    pub checkpoints: u64,
    /// The latest complete checkpoint.
    pub last_checkpoint: Option<u64>,
    /// How long it took from its trigger.
    pub last_checkpoint_took: Option<Duration>,
    /// Restarts from a checkpoint so far.
    pub failovers: u32,
    /// The running instances: (stage, instance, pid, node).
    pub instances: Vec<(usize, usize, u32, String)>,
    /// Time since the job started.
    pub elapsed: Duration,
}

/// What a finished job reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobReport {
    /// The job's name.
    pub name: String,
    /// From `run` to the end.
    pub elapsed: Duration,
    /// Checkpoints completed (the final one included).
    pub checkpoints: u64,
    /// Trigger-to-complete time of each completed checkpoint.
    pub checkpoint_durations: Vec<Duration>,
    /// Bytes of state in the last completed checkpoint.
    pub state_bytes: u64,
    /// Restarts from a checkpoint.
    pub failovers: u32,
    /// For each failover: from the failure being seen to every instance running again.
    pub recoveries: Vec<Duration>,
    /// What failed, for each failover.
    pub failures: Vec<String>,
    /// Records dropped as too late for their windows.
    pub late_records: u64,
    /// Each sink instance's report, from the last attempt.
    pub sinks: Vec<SinkReport>,
}

impl JobReport {
    /// Records written by all sinks (in the last attempt).
    pub fn records_out(&self) -> u64 {
        self.sinks.iter().map(|s| s.records).sum()
    }

    /// Every latency sample of every sink, sorted.
    pub fn latencies_ms(&self) -> Vec<f64> {
        let mut all: Vec<f64> = self
            .sinks
            .iter()
            .flat_map(|s| s.latencies_ms.iter().copied())
            .collect();
        all.sort_by(f64::total_cmp);
        all
    }
}

/// The record that makes a checkpoint complete (written last, in the GCS).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckpointRecord {
    id: u64,
    parallelism: usize,
    /// State pieces per instance, in (stage, instance) order.
    chunks: Vec<u32>,
}

enum Event {
    Task(usize, TaskEvent),
    /// An instance's event channel ended (`Ok`: cleanly).
    EventsEnded(usize, std::result::Result<(), String>),
    Finished(usize, std::result::Result<TaskReport, String>),
}

struct InFlight {
    id: u64,
    started: Instant,
    acks: HashMap<usize, (u32, u64)>,
    is_final: bool,
    /// When the inner instances are told to snapshot unaligned (if still in flight).
    unaligned_at: Option<Instant>,
}

/// What the coordinator keeps across attempts.
struct Coordination {
    next_checkpoint: u64,
    completed: Option<CheckpointRecord>,
    report: JobReport,
    failure_seen: Option<Instant>,
}

enum AttemptEnd {
    Finished(Vec<TaskReport>),
    Failed(String),
}

impl<J: StreamJob> StreamExecution<J> {
    /// A run of `job` under `name` (the name keys its checkpoints in the GCS).
    pub fn new(name: impl Into<String>, job: J) -> Self {
        StreamExecution {
            job,
            name: name.into(),
            parallelism: 2,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_timeout: Duration::from_secs(60),
            alignment_timeout: Some(DEFAULT_ALIGNMENT_TIMEOUT),
            max_failovers: 3,
            scheduling: fleet::Scheduling::Default,
            progress: None,
        }
    }

    /// Instances of every operator (default 2).
    pub fn parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism.max(1);
        self
    }

    /// How often a checkpoint is taken (default every second).
    pub fn checkpoint_every(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// A checkpoint not complete after this is abandoned (the next one is taken).
    pub fn checkpoint_timeout(mut self, timeout: Duration) -> Self {
        self.checkpoint_timeout = timeout;
        self
    }

    /// How long a checkpoint may stay aligned (barriers travelling with the data, inputs
    /// waiting for each other) before it turns unaligned: every instance that has not
    /// snapshotted yet is told to snapshot at once and record the data in flight on its
    /// inputs instead. Under backpressure barriers queue behind full channels; this bounds
    /// how long a checkpoint takes. `None`: always aligned. `Some(ZERO)`: always unaligned.
    /// Default 200 ms.
    pub fn alignment_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.alignment_timeout = timeout;
        self
    }

    /// Where the instances go (default: the scheduler's choice; `Scheduling::Spread` puts
    /// them on as many nodes as it can).
    pub fn scheduling(mut self, scheduling: fleet::Scheduling) -> Self {
        self.scheduling = scheduling;
        self
    }

    /// Restarts from a checkpoint allowed before the job fails (default 3).
    pub fn max_failovers(mut self, failovers: u32) -> Self {
        self.max_failovers = failovers;
        self
    }

    /// Called as the job runs (instances started, checkpoints completed, failovers).
    pub fn on_progress(
        mut self,
        progress: impl FnMut(&JobProgress) + Send + Sync + 'static,
    ) -> Self {
        self.progress = Some(Box::new(progress));
        self
    }

    /// Runs the job to its end.
    pub async fn run(mut self) -> Result<JobReport> {
        let plan = plan_for(&self.job, self.parallelism).map_err(StreamError::Invalid)?;
        // Every instance rebuilds the job by its type's name: refuse at once, by name, a
        // type that no process could find.
        crate::job::find(std::any::type_name::<J>()).map_err(StreamError::Invalid)?;
        for (stage, spec) in plan.stages.iter().enumerate() {
            if plan.outputs_of(stage).len() > 1 {
                return Err(StreamError::Invalid(format!(
                    "stage {stage} ({}) feeds more than one keyed operator; a stream is consumed once",
                    spec.name
                )));
            }
        }
        let job = bincode::serialize(&self.job)
            .map_err(|e| StreamError::Invalid(format!("the job does not serialize: {e}")))?;
        let prefix = format!("{}/", self.name);
        fleet::kv::delete_prefix(KV_NAMESPACE, &prefix)
            .await
            .map_err(|e| StreamError::Fleet(e.to_string()))?;
        let started = Instant::now();
        let mut coordination = Coordination {
            next_checkpoint: 1,
            completed: None,
            report: JobReport {
                name: self.name.clone(),
                ..JobReport::default()
            },
            failure_seen: None,
        };
        let reports = loop {
            match self
                .attempt(&plan, &job, &mut coordination, started)
                .await?
            {
                AttemptEnd::Finished(reports) => break reports,
                AttemptEnd::Failed(cause) => {
                    tracing::warn!(job = %self.name, %cause, "an instance failed; restarting from the last checkpoint");
                    coordination.report.failures.push(cause.clone());
                    coordination.report.failovers += 1;
                    if coordination.report.failovers > self.max_failovers {
                        return Err(StreamError::Failed(format!(
                            "job {}: {cause} (after {} failovers, the most allowed: raise max_failovers)",
                            self.name, self.max_failovers
                        )));
                    }
                }
            }
        };
        let _ = fleet::kv::delete_prefix(KV_NAMESPACE, &prefix).await;
        let mut report = coordination.report;
        report.elapsed = started.elapsed();
        report.late_records = reports.iter().map(|r| r.late_records).sum();
        report.sinks = reports.into_iter().filter_map(|r| r.sink).collect();
        Ok(report)
    }

    async fn attempt(
        &mut self,
        plan: &Plan,
        job: &[u8],
        coordination: &mut Coordination,
        started: Instant,
    ) -> Result<AttemptEnd> {
        let p = plan.parallelism;
        let stages = plan.stages.len();
        let total = stages * p;
        let index = |stage: usize, instance: usize| stage * p + instance;
        if let Some(record) = &coordination.completed {
            if record.parallelism != p {
                return Err(StreamError::Invalid(format!(
                    "checkpoint {} was taken at parallelism {}, this run has {p}",
                    record.id, record.parallelism
                )));
            }
        }

        let mut actors: Vec<StreamTaskHandle> = Vec::with_capacity(total);
        for (stage, spec) in plan.stages.iter().enumerate() {
            for instance in 0..p {
                let label = format!("{} stage {stage} [{}] #{instance}", self.name, spec.name);
                // A process per instance, as a Flink task slot: a crash takes one
                // instance, and instances compute in parallel on every core.
                let actor = StreamTask::remote(label.clone())
                    .num_cpus(0.0)
                    .isolate()
                    .scheduling(self.scheduling.clone())
                    .spawn()
                    .await
                    .map_err(|e| StreamError::Fleet(format!("starting {label}: {e}")))?;
                actors.push(actor);
            }
        }

        let mut inputs: Vec<Vec<(usize, fleet::Receiver<Vec<u8>>)>> =
            (0..total).map(|_| Vec::new()).collect();
        let mut outputs: Vec<Vec<fleet::Sender<Vec<u8>>>> =
            (0..total).map(|_| Vec::new()).collect();
        for stage in 0..stages {
            for (downstream, port) in plan.outputs_of(stage) {
                for i in 0..p {
                    for j in 0..p {
                        let (tx, rx) = fleet::channel::<Vec<u8>>(CHANNEL_FRAMES);
                        outputs[index(stage, i)].push(tx);
                        inputs[index(downstream, j)].push((port, rx));
                    }
                }
            }
        }

        let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
        let mut controls = Vec::with_capacity(total);
        let mut background = Vec::new();
        let mut inputs = inputs.into_iter();
        let mut outputs = outputs.into_iter();
        for (idx, actor) in actors.iter().enumerate() {
            let (stage, instance) = (idx / p, idx % p);
            let (control_tx, control_rx) = fleet::channel::<Control>(64);
            let (task_events_tx, mut task_events_rx) = fleet::channel::<TaskEvent>(1024);
            controls.push(Some(control_tx));
            let restore = coordination.completed.as_ref().map(|record| RestorePoint {
                checkpoint: record.id,
                chunks: record.chunks.get(idx).copied().unwrap_or(0),
            });
            let call = actor.run(TaskCall {
                job_type: std::any::type_name::<J>().to_string(),
                job: job.to_vec(),
                job_name: self.name.clone(),
                parallelism: p,
                stage,
                instance,
                inputs: inputs.next().unwrap_or_default(),
                outputs: outputs.next().unwrap_or_default(),
                control: control_rx,
                events: task_events_tx,
                restore,
            });
            let tx = events_tx.clone();
            background.push(tokio::spawn(async move {
                let result = call.await.map_err(|e| e.to_string());
                let _ = tx.send(Event::Finished(idx, result));
            }));
            let tx = events_tx.clone();
            background.push(tokio::spawn(async move {
                loop {
                    match task_events_rx.recv().await {
                        Ok(Some(event)) => {
                            if tx.send(Event::Task(idx, event)).is_err() {
                                break;
                            }
                        }
                        Ok(None) => {
                            let _ = tx.send(Event::EventsEnded(idx, Ok(())));
                            break;
                        }
                        Err(e) => {
                            let _ = tx.send(Event::EventsEnded(idx, Err(e.to_string())));
                            break;
                        }
                    }
                }
            }));
        }
        drop(events_tx);

        let sources: Vec<usize> = (0..total)
            .filter(|idx| plan.stages[idx / p].is_source)
            .collect();
        let mut running: HashMap<usize, (u32, String)> = HashMap::new();
        let mut exhausted: HashSet<usize> = HashSet::new();
        let mut finished: HashMap<usize, TaskReport> = HashMap::new();
        let mut in_flight: Option<InFlight> = None;
        let mut final_done = false;
        let mut ticker = tokio::time::interval(self.checkpoint_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;

        let inner: Vec<usize> = (0..total)
            .filter(|idx| !plan.stages[idx / p].is_source)
            .collect();
        let far_future = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let outcome: std::result::Result<Vec<TaskReport>, String> = loop {
            let unaligned_at = in_flight
                .as_ref()
                .and_then(|f| f.unaligned_at)
                .unwrap_or(far_future);
            let event = tokio::select! {
                _ = ticker.tick() => None,
                _ = tokio::time::sleep_until(unaligned_at.into()) => {
                    if let Some(flight) = in_flight.as_mut() {
                        flight.unaligned_at = None;
                        if let Err(cause) = send_all(&mut controls, &inner, Control::Trigger(flight.id)).await {
                            break Err(cause);
                        }
                    }
                    continue;
                }
                event = events.recv() => match event {
                    Some(event) => Some(event),
                    None => break Err("every instance's reporting stopped".into()),
                },
            };
            match event {
                None => {
                    if let Some(flight) = &in_flight {
                        if !flight.is_final && flight.started.elapsed() > self.checkpoint_timeout {
                            tracing::warn!(
                                checkpoint = flight.id,
                                "checkpoint abandoned: not complete in time"
                            );
                            in_flight = None;
                        }
                    }
                    if in_flight.is_none() && running.len() == total && !final_done {
                        let id = coordination.next_checkpoint;
                        coordination.next_checkpoint += 1;
                        if let Err(cause) =
                            send_all(&mut controls, &sources, Control::Trigger(id)).await
                        {
                            break Err(cause);
                        }
                        in_flight = Some(InFlight {
                            id,
                            started: Instant::now(),
                            acks: HashMap::new(),
                            is_final: false,
                            unaligned_at: self.alignment_timeout.map(|t| Instant::now() + t),
                        });
                    }
                }
                Some(Event::Task(idx, TaskEvent::Started { pid, node })) => {
                    running.insert(idx, (pid, node));
                    if running.len() == total {
                        if let Some(seen) = coordination.failure_seen.take() {
                            coordination.report.recoveries.push(seen.elapsed());
                        }
                        self.progress(coordination, &running, p, started);
                    }
                }
                Some(Event::Task(idx, TaskEvent::Exhausted)) => {
                    exhausted.insert(idx);
                }
                Some(Event::Task(
                    idx,
                    TaskEvent::Acked {
                        checkpoint,
                        chunks,
                        bytes,
                    },
                )) => {
                    let Some(flight) = in_flight.as_mut().filter(|f| f.id == checkpoint) else {
                        continue;
                    };
                    flight.acks.insert(idx, (chunks, bytes));
                    if flight.acks.len() < total {
                        continue;
                    }
                    let Some(flight) = in_flight.take() else {
                        continue;
                    };
                    let record = CheckpointRecord {
                        id: flight.id,
                        parallelism: p,
                        chunks: (0..total)
                            .map(|i| flight.acks.get(&i).map(|a| a.0).unwrap_or(0))
                            .collect(),
                    };
                    if let Err(cause) = self.commit(coordination, record).await {
                        break Err(cause);
                    }
                    coordination.report.checkpoints += 1;
                    coordination
                        .report
                        .checkpoint_durations
                        .push(flight.started.elapsed());
                    coordination.report.state_bytes = flight.acks.values().map(|a| a.1).sum();
                    final_done |= flight.is_final;
                    let all: Vec<usize> = (0..total).collect();
                    if let Err(cause) =
                        send_all(&mut controls, &all, Control::Complete(flight.id)).await
                    {
                        break Err(cause);
                    }
                    self.progress(coordination, &running, p, started);
                }
                Some(Event::EventsEnded(_, Ok(()))) => {}
                Some(Event::EventsEnded(idx, Err(cause))) => {
                    break Err(format!("{}: {cause}", instance_name(plan, idx, p)));
                }
                Some(Event::Finished(idx, Ok(report))) => {
                    finished.insert(idx, report);
                    if finished.len() == total {
                        let mut reports: Vec<(usize, TaskReport)> = finished.drain().collect();
                        reports.sort_by_key(|(i, _)| *i);
                        break Ok(reports.into_iter().map(|(_, r)| r).collect());
                    }
                }
                Some(Event::Finished(_, Err(cause))) => break Err(cause),
            }
            // Every source read to its end: the final checkpoint ends the stream.
            if in_flight.is_none()
                && !final_done
                && !sources.is_empty()
                && sources.iter().all(|s| exhausted.contains(s))
            {
                let id = coordination.next_checkpoint;
                coordination.next_checkpoint += 1;
                if let Err(cause) =
                    send_all(&mut controls, &sources, Control::TriggerFinal(id)).await
                {
                    break Err(cause);
                }
                // The final checkpoint stays aligned: the end frames follow its barriers.
                in_flight = Some(InFlight {
                    id,
                    started: Instant::now(),
                    acks: HashMap::new(),
                    is_final: true,
                    unaligned_at: None,
                });
            }
        };

        let failed = outcome.is_err();
        if failed {
            coordination.failure_seen = Some(Instant::now());
        }
        for task in &background {
            task.abort();
        }
        if failed {
            for actor in &actors {
                let _ = fleet::kill(actor.raw()).await;
            }
        } else {
            for control in controls.iter_mut().filter_map(Option::take) {
                let _ = control.close().await;
            }
            for actor in &actors {
                let _ = fleet::kill(actor.raw()).await;
            }
        }
        Ok(match outcome {
            Ok(reports) => AttemptEnd::Finished(reports),
            Err(cause) => AttemptEnd::Failed(cause),
        })
    }

    /// Makes a checkpoint complete: its record is written to the GCS, then the previous
    /// one's state is dropped.
    async fn commit(
        &self,
        coordination: &mut Coordination,
        record: CheckpointRecord,
    ) -> std::result::Result<(), String> {
        let bytes = bincode::serialize(&record).map_err(|e| e.to_string())?;
        crate::task::put_with_retries(&format!("{}/latest", self.name), &bytes)
            .await
            .map_err(|e| format!("committing checkpoint {}: {e}", record.id))?;
        if let Some(previous) = coordination.completed.replace(record) {
            let prefix = format!("{}/cp/{:016}/", self.name, previous.id);
            let _ = fleet::kv::delete_prefix(KV_NAMESPACE, &prefix).await;
        }
        Ok(())
    }

    fn progress(
        &mut self,
        coordination: &Coordination,
        running: &HashMap<usize, (u32, String)>,
        p: usize,
        started: Instant,
    ) {
        let Some(progress) = self.progress.as_mut() else {
            return;
        };
        let mut instances: Vec<(usize, usize, u32, String)> = running
            .iter()
            .map(|(idx, (pid, node))| (idx / p, idx % p, *pid, node.clone()))
            .collect();
        instances.sort();
        progress(&JobProgress {
            checkpoints: coordination.report.checkpoints,
            last_checkpoint: coordination.completed.as_ref().map(|r| r.id),
            last_checkpoint_took: coordination.report.checkpoint_durations.last().copied(),
            failovers: coordination.report.failovers,
            instances,
            elapsed: started.elapsed(),
        });
    }
}

fn instance_name(plan: &Plan, idx: usize, p: usize) -> String {
    let stage = idx / p;
    let name = plan
        .stages
        .get(stage)
        .map(|s| s.name.as_str())
        .unwrap_or("?");
    format!("stage {stage} [{name}] instance {}", idx % p)
}

async fn send_all(
    controls: &mut [Option<fleet::Sender<Control>>],
    targets: &[usize],
    message: Control,
) -> std::result::Result<(), String> {
    for &idx in targets {
        if let Some(Some(control)) = controls.get_mut(idx) {
            control
                .send(message)
                .await
                .map_err(|e| format!("telling instance {idx} {message:?}: {e}"))?;
        }
    }
    Ok(())
}
