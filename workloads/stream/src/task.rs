//! One operator instance at run time: the [`StreamTask`] actor and its loop.
//!
//! A source instance polls its reader, runs the stage and sends frames; on a trigger from
//! the coordinator it snapshots its state (the reader's offset among it), sends a barrier
//! on every output and acknowledges. An inner instance reads its inputs; on a barrier from
//! one input it stops reading that input until every other input brought the same barrier
//! (alignment), then snapshots, forwards the barrier and acknowledges. Snapshots go to the
//! GCS (`fleet::kv`) from a background task while records flow on.
//!
//! Inputs are read by one task per channel into small bounded queues (`fleet::channel`'s
//! `recv` is not cancel-safe; these queues are), so a blocked input exerts backpressure on
//! its sender while the others are read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::graph::InstanceContext;
use crate::pipe::OperatorState;
use crate::sink::SinkReport;
use crate::source::SourceStatus;
use crate::stage::{Frame, StageBody};

/// Records a source instance reads per poll.
const POLL_RECORDS: usize = 1024;
/// How often a stage sends its watermark on (as Flink's auto-watermark interval): more
/// often costs small frames, less often costs latency of windowed results.
const WATERMARK_INTERVAL: Duration = Duration::from_millis(50);
/// The KV namespace of checkpoint state.
pub(crate) const KV_NAMESPACE: &str = "fleet-stream";
/// How long a checkpoint write is retried (longer than a GCS leader election).
const STORE_RETRY_FOR: Duration = Duration::from_secs(10);
/// Checkpoint state is stored in pieces of this size (a KV value holds at most 1 MiB).
const STATE_CHUNK_BYTES: usize = 768 << 10;

/// What the coordinator tells an instance.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum Control {
    /// (Sources) take checkpoint `id` now.
    Trigger(u64),
    /// (Sources) take the final checkpoint `id`, then end the stream.
    TriggerFinal(u64),
    /// Checkpoint `id` is complete: commit what it covers.
    Complete(u64),
}

/// What an instance tells the coordinator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TaskEvent {
    /// Running (with the pid of its process and its node).
    Started { pid: u32, node: String },
    /// Its state for checkpoint `checkpoint` is stored (in `chunks` KV values).
    Acked {
        checkpoint: u64,
        chunks: u32,
        bytes: u64,
    },
    /// (Sources) the split is read to its end.
    Exhausted,
}

/// What an instance stores for a checkpoint.
#[derive(Default, Serialize, Deserialize)]
pub(crate) struct TaskState {
    /// Each operator's state, head first.
    pub operators: Vec<OperatorState>,
    /// Data in flight on each input (port, encoded batches) at an unaligned checkpoint:
    /// replayed into the operators on a restore, before anything new is read.
    pub in_flight: Vec<(usize, Vec<Vec<u8>>)>,
}

/// Where an instance restores from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestorePoint {
    pub checkpoint: u64,
    pub chunks: u32,
}

/// Everything an instance needs (the argument of [`StreamTask::run`]).
#[derive(Serialize, Deserialize)]
pub struct TaskCall {
    pub job_type: String,
    pub job: Vec<u8>,
    pub job_name: String,
    pub parallelism: usize,
    pub stage: usize,
    pub instance: usize,
    /// Input channels and the port each feeds.
    pub inputs: Vec<(usize, fleet::Receiver<Vec<u8>>)>,
    /// One channel per instance of the downstream stage.
    pub outputs: Vec<fleet::Sender<Vec<u8>>>,
    pub control: fleet::Receiver<Control>,
    pub events: fleet::Sender<TaskEvent>,
    pub restore: Option<RestorePoint>,
}

/// What an instance reports when the job ends.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TaskReport {
    pub stage: usize,
    pub instance: usize,
    pub late_records: u64,
    pub sink: Option<SinkReport>,
}

/// The actor one operator instance runs in.
#[fleet::actor]
pub struct StreamTask {
    label: String,
}

#[fleet::actor]
impl StreamTask {
    pub fn new(label: String) -> Self {
        StreamTask { label }
    }

    /// Runs the instance until the job ends (or fails).
    pub async fn run(&mut self, call: TaskCall) -> Result<TaskReport, String> {
        let label = self.label.clone();
        let node = fleet::context().map(|c| c.node_id).unwrap_or_default();
        // An actor's calls run on one thread. The instance gets a runtime of its own, so
        // that its input readers, its control channel and its checkpoint writes go on
        // while an operator or a sink blocks that thread (a slow sink is the case where
        // checkpoints matter most).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fleet-stream")
            .enable_all()
            .build()
            .map_err(|e| format!("{label}: cannot start the instance's threads: {e}"))?;
        let outcome = runtime.spawn(run_task(call, node)).await;
        runtime.shutdown_background();
        match outcome {
            Ok(result) => result.map_err(|e| format!("{label}: {e}")),
            Err(e) => Err(format!("{label}: the instance stopped ({e})")),
        }
    }
}

pub(crate) fn state_key(
    job: &str,
    checkpoint: u64,
    stage: usize,
    instance: usize,
    chunk: u32,
) -> String {
    format!("{job}/cp/{checkpoint:016}/{stage}/{instance}/{chunk}")
}

async fn write_state(
    job: &str,
    checkpoint: u64,
    stage: usize,
    instance: usize,
    bytes: &[u8],
) -> Result<u32, String> {
    let mut chunks = 0u32;
    for piece in bytes.chunks(STATE_CHUNK_BYTES) {
        let key = state_key(job, checkpoint, stage, instance, chunks);
        put_with_retries(&key, piece)
            .await
            .map_err(|e| format!("storing checkpoint {checkpoint}'s state: {e}"))?;
        chunks += 1;
    }
    Ok(chunks)
}

/// Writes a KV value, retrying for a while: a GCS leader change makes writes fail for
/// about an election, and a checkpoint that is not stored waits for its timeout.
pub(crate) async fn put_with_retries(key: &str, value: &[u8]) -> Result<(), String> {
    let deadline = Instant::now() + STORE_RETRY_FOR;
    loop {
        match fleet::kv::put(KV_NAMESPACE, key, value).await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(key, %error, "checkpoint write failed; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

async fn read_state(
    job: &str,
    point: &RestorePoint,
    stage: usize,
    instance: usize,
) -> Result<TaskState, String> {
    let mut bytes = Vec::new();
    for chunk in 0..point.chunks {
        let key = state_key(job, point.checkpoint, stage, instance, chunk);
        let entry = fleet::kv::get(KV_NAMESPACE, &key)
            .await
            .map_err(|e| format!("reading checkpoint {}'s state: {e}", point.checkpoint))?
            .ok_or_else(|| format!("checkpoint {} lacks its piece {key}", point.checkpoint))?;
        bytes.extend_from_slice(&entry.value);
    }
    if bytes.is_empty() {
        return Ok(TaskState::default());
    }
    bincode::deserialize(&bytes).map_err(|e| {
        format!(
            "checkpoint {}'s state of stage {stage} instance {instance} does not decode ({e})",
            point.checkpoint
        )
    })
}

/// An instance's outputs and its event queue to the coordinator.
struct Outputs {
    channels: Vec<fleet::Sender<Vec<u8>>>,
    frames: Vec<(usize, Vec<u8>)>,
    watermark: i64,
    watermark_sent_at: Instant,
    events: mpsc::UnboundedSender<TaskEvent>,
    job: String,
    stage: usize,
    instance: usize,
}

impl Outputs {
    /// Sends the data frames the body has ready (`all`: partial ones too).
    async fn send_data(&mut self, body: &mut dyn StageBody, all: bool) -> Result<(), String> {
        body.drain_frames(all, &mut self.frames);
        for (target, payload) in self.frames.drain(..) {
            let channel = self
                .channels
                .get_mut(target)
                .ok_or_else(|| format!("no output channel {target}"))?;
            channel
                .send(Frame::Data(payload).encode())
                .await
                .map_err(|e| format!("sending to instance {target} of the next stage: {e}"))?;
        }
        Ok(())
    }

    async fn broadcast(&mut self, frame: Frame) -> Result<(), String> {
        let bytes = frame.encode();
        for (target, channel) in self.channels.iter_mut().enumerate() {
            channel
                .send_ref(&bytes)
                .await
                .map_err(|e| format!("sending to instance {target} of the next stage: {e}"))?;
        }
        Ok(())
    }

    /// Sends the watermark on when it advanced (and, unless `now`, the interval passed);
    /// the records it covers go first.
    async fn watermark(
        &mut self,
        body: &mut dyn StageBody,
        watermark: i64,
        now: bool,
    ) -> Result<(), String> {
        if watermark <= self.watermark
            || (!now && self.watermark_sent_at.elapsed() < WATERMARK_INTERVAL)
        {
            return Ok(());
        }
        self.send_data(body, true).await?;
        self.watermark = watermark;
        self.watermark_sent_at = Instant::now();
        self.broadcast(Frame::Watermark(watermark)).await
    }

    /// Takes checkpoint `checkpoint` (a source's, or an aligned one): everything before the
    /// barrier goes out, the state is snapshotted, the barrier follows, and the state is
    /// stored in the background.
    async fn checkpoint(
        &mut self,
        body: &mut dyn StageBody,
        checkpoint: u64,
    ) -> Result<(), String> {
        self.send_data(body, true).await?;
        let operators = body.snapshot(checkpoint)?;
        self.broadcast(Frame::Barrier(checkpoint)).await?;
        self.store(checkpoint, operators, Vec::new())
    }

    /// Stores a checkpoint's state in the GCS from a background task (records flow on),
    /// then acknowledges it to the coordinator.
    fn store(
        &mut self,
        checkpoint: u64,
        operators: Vec<OperatorState>,
        in_flight: Vec<(usize, Vec<Vec<u8>>)>,
    ) -> Result<(), String> {
        let state = TaskState {
            operators,
            in_flight,
        };
        let bytes = bincode::serialize(&state)
            .map_err(|e| format!("checkpoint {checkpoint}'s state does not encode: {e}"))?;
        let (job, stage, instance) = (self.job.clone(), self.stage, self.instance);
        let events = self.events.clone();
        tokio::spawn(async move {
            match write_state(&job, checkpoint, stage, instance, &bytes).await {
                Ok(chunks) => {
                    let _ = events.send(TaskEvent::Acked {
                        checkpoint,
                        chunks,
                        bytes: bytes.len() as u64,
                    });
                }
                // Not acknowledged: the checkpoint does not complete; the next one retries.
                Err(error) => tracing::warn!(checkpoint, %error, "checkpoint state not stored"),
            }
        });
        Ok(())
    }

    async fn end(&mut self) -> Result<(), String> {
        self.broadcast(Frame::End).await?;
        // The end frame is the stream's logical end; a receiver may drop its end as soon
        // as it has read it, so a close that finds the peer gone is not a failure.
        for channel in self.channels.drain(..) {
            let _ = channel.close().await;
        }
        Ok(())
    }
}

async fn run_task(call: TaskCall, node: String) -> Result<TaskReport, String> {
    let plan = (crate::job::find(&call.job_type)?)(&call.job, call.parallelism)?;
    let spec = plan
        .stages
        .get(call.stage)
        .ok_or_else(|| format!("the job has no stage {}", call.stage))?;
    let factory = spec
        .body
        .clone()
        .ok_or_else(|| format!("stage {} has no body", call.stage))?;
    let context = InstanceContext {
        job: call.job_name.clone(),
        stage: call.stage,
        instance: call.instance,
        parallelism: call.parallelism,
    };
    let mut body = factory(&context)?;
    let mut in_flight = Vec::new();
    match &call.restore {
        Some(point) => {
            let state = read_state(&call.job_name, point, call.stage, call.instance).await?;
            body.restore(Some((point.checkpoint, state.operators)))?;
            in_flight = state.in_flight;
        }
        None => body.restore(None)?,
    }

    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<TaskEvent>();
    let mut events = call.events;
    let event_writer = tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            events.send(event).await.map_err(|e| e.to_string())?;
        }
        events.close().await.map_err(|e| e.to_string())
    });
    let _ = events_tx.send(TaskEvent::Started {
        pid: std::process::id(),
        node,
    });

    let (control_tx, mut control) = mpsc::channel::<Result<Control, String>>(16);
    let mut control_rx = call.control;
    let control_reader = tokio::spawn(async move {
        loop {
            let message = match control_rx.recv().await {
                Ok(Some(message)) => Ok(message),
                Ok(None) => Err("the coordinator closed its control channel".to_string()),
                Err(e) => Err(format!("the coordinator is gone ({e})")),
            };
            let stop = message.is_err();
            if control_tx.send(message).await.is_err() || stop {
                break;
            }
        }
    });

    let mut outputs = Outputs {
        channels: call.outputs,
        frames: Vec::new(),
        watermark: i64::MIN,
        watermark_sent_at: Instant::now(),
        events: events_tx,
        job: call.job_name,
        stage: call.stage,
        instance: call.instance,
    };
    // Data that was in flight at the restored (unaligned) checkpoint goes first.
    let replay = async {
        for (port, frames) in in_flight {
            for payload in frames {
                body.input(port, &payload)?;
                outputs.send_data(body.as_mut(), false).await?;
            }
        }
        Ok::<(), String>(())
    }
    .await;
    let result = if let Err(error) = replay {
        Err(error)
    } else if spec.is_source {
        source_loop(body.as_mut(), &mut outputs, &mut control).await
    } else {
        inner_loop(body.as_mut(), &mut outputs, &mut control, call.inputs).await
    };
    control_reader.abort();
    let report = TaskReport {
        stage: call.stage,
        instance: call.instance,
        late_records: body.late_records(),
        sink: body.sink_report(),
    };
    drop(outputs);
    result?;
    match tokio::time::timeout(Duration::from_secs(10), event_writer).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(format!("reporting to the coordinator: {e}")),
        _ => return Err("reporting to the coordinator did not finish".into()),
    }
    Ok(report)
}

async fn source_loop(
    body: &mut dyn StageBody,
    outputs: &mut Outputs,
    control: &mut mpsc::Receiver<Result<Control, String>>,
) -> Result<(), String> {
    let mut exhausted = false;
    let mut final_checkpoint: Option<u64> = None;
    loop {
        let message = if exhausted {
            control.recv().await
        } else {
            control.try_recv().ok()
        };
        if let Some(message) = message {
            match message? {
                Control::Trigger(checkpoint) => outputs.checkpoint(body, checkpoint).await?,
                Control::TriggerFinal(checkpoint) => {
                    outputs.checkpoint(body, checkpoint).await?;
                    outputs.end().await?;
                    final_checkpoint = Some(checkpoint);
                }
                Control::Complete(checkpoint) => {
                    body.checkpoint_complete(checkpoint)?;
                    if final_checkpoint.is_some_and(|last| checkpoint >= last) {
                        return Ok(());
                    }
                }
            }
            continue;
        }
        let status = body.poll(POLL_RECORDS)?;
        let mut watermark = body.generated_watermark()?;
        if status == SourceStatus::Exhausted {
            watermark = Some(body.on_watermark(i64::MAX)?);
        }
        outputs
            .send_data(body, status != SourceStatus::More)
            .await?;
        if let Some(watermark) = watermark {
            outputs
                .watermark(body, watermark, status == SourceStatus::Exhausted)
                .await?;
        }
        match status {
            SourceStatus::More => tokio::task::yield_now().await,
            SourceStatus::Idle => tokio::time::sleep(Duration::from_millis(1)).await,
            SourceStatus::Exhausted => {
                exhausted = true;
                let _ = outputs.events.send(TaskEvent::Exhausted);
            }
        }
    }
}

/// Frames an input may hold read ahead of the operator (beyond the channel's own
/// capacity), except while its in-flight data is being recorded for a checkpoint.
const INPUT_QUEUE_FRAMES: usize = 4;

/// One input channel's frames, read by its reader task, taken by the instance's loop.
#[derive(Default)]
struct InputQueue {
    frames: VecDeque<Result<Frame, String>>,
    /// Recording this channel's in-flight data for an unaligned checkpoint: the data
    /// frames read until the upstream's barrier.
    recording: Option<Vec<Vec<u8>>>,
    /// The recording, complete (the barrier, or the end, was read).
    recorded: Option<Vec<Vec<u8>>>,
}

struct Input {
    port: usize,
    queue: std::sync::Mutex<InputQueue>,
    /// Room in the queue (the loop took a frame) or a recording started.
    space: Notify,
}

impl Input {
    fn lock(&self) -> std::sync::MutexGuard<'_, InputQueue> {
        // A poisoned lock only means a reader panicked mid-push; the queue is still whole.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads one channel into its queue. Bounded to `INPUT_QUEUE_FRAMES` (so backpressure
/// reaches the sender), except while recording: then it reads on until the barrier, so
/// that an unaligned checkpoint completes without waiting for the operator to work through
/// the backlog.
async fn read_input(
    input: Arc<Input>,
    mut receiver: fleet::Receiver<Vec<u8>>,
    ready: Arc<Notify>,
    index: usize,
) {
    loop {
        loop {
            let space = input.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let queue = input.lock();
                if queue.frames.len() < INPUT_QUEUE_FRAMES || queue.recording.is_some() {
                    break;
                }
            }
            space.await;
        }
        let frame = match receiver.recv().await {
            Ok(Some(bytes)) => Frame::decode(bytes),
            Ok(None) => Err(format!("input {index} closed before its end frame")),
            Err(e) => Err(format!("input {index}: {e}")),
        };
        let stop = !matches!(
            frame,
            Ok(Frame::Data(_) | Frame::Watermark(_) | Frame::Barrier(_))
        );
        {
            let mut queue = input.lock();
            match (&frame, queue.recording.as_mut()) {
                (Ok(Frame::Data(payload)), Some(recording)) => recording.push(payload.clone()),
                (Ok(Frame::Barrier(_) | Frame::End), Some(_)) => {
                    queue.recorded = queue.recording.take();
                }
                _ => {}
            }
            queue.frames.push_back(frame);
        }
        ready.notify_one();
        if stop {
            break;
        }
    }
}

enum Next {
    Control(Result<Control, String>),
    Input(usize, Result<Frame, String>),
    /// A recording may have completed.
    Recorded,
}

/// An unaligned checkpoint in progress: the state is snapshotted, the channels' in-flight
/// data is being recorded.
struct Unaligned {
    checkpoint: u64,
    operators: Vec<OperatorState>,
    in_flight: Vec<(usize, Vec<Vec<u8>>)>,
    done: Vec<bool>,
}

async fn inner_loop(
    body: &mut dyn StageBody,
    outputs: &mut Outputs,
    control: &mut mpsc::Receiver<Result<Control, String>>,
    channels: Vec<(usize, fleet::Receiver<Vec<u8>>)>,
) -> Result<(), String> {
    let ready = Arc::new(Notify::new());
    let mut inputs = Vec::with_capacity(channels.len());
    let mut readers = Vec::with_capacity(channels.len());
    for (index, (port, receiver)) in channels.into_iter().enumerate() {
        let input = Arc::new(Input {
            port,
            queue: std::sync::Mutex::new(InputQueue::default()),
            space: Notify::new(),
        });
        inputs.push(input.clone());
        readers.push(tokio::spawn(read_input(
            input,
            receiver,
            ready.clone(),
            index,
        )));
    }
    let result = run_inputs(body, outputs, control, &inputs, &ready).await;
    for reader in readers {
        reader.abort();
    }
    result
}

async fn run_inputs(
    body: &mut dyn StageBody,
    outputs: &mut Outputs,
    control: &mut mpsc::Receiver<Result<Control, String>>,
    inputs: &[Arc<Input>],
    ready: &Notify,
) -> Result<(), String> {
    let count = inputs.len();
    let mut blocked = vec![false; count];
    let mut ended = vec![false; count];
    let mut watermarks = vec![i64::MIN; count];
    let mut current = i64::MIN;
    let mut aligning: Option<u64> = None;
    let mut unaligned: Option<Unaligned> = None;
    // The latest checkpoint this instance snapshotted (aligned or not).
    let mut last_snapshot: Option<u64> = None;
    let mut finished = false;
    let mut turn = 0usize;
    loop {
        let next = loop {
            let notified = ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(message) = control.try_recv() {
                break Next::Control(message);
            }
            if unaligned.is_some() && inputs.iter().any(|i| i.lock().recorded.is_some()) {
                break Next::Recorded;
            }
            let mut found = None;
            for k in 0..count {
                let i = (turn + k) % count;
                if blocked[i] || ended[i] {
                    continue;
                }
                let frame = inputs[i].lock().frames.pop_front();
                if let Some(frame) = frame {
                    inputs[i].space.notify_one();
                    turn = i + 1;
                    found = Some(Next::Input(i, frame));
                    break;
                }
            }
            if let Some(next) = found {
                break next;
            }
            tokio::select! {
                message = control.recv() => {
                    break Next::Control(message.unwrap_or_else(|| Err("the control reader stopped".into())));
                }
                _ = &mut notified => {}
            }
        };
        match next {
            Next::Control(message) => match message? {
                Control::Complete(checkpoint) => {
                    body.checkpoint_complete(checkpoint)?;
                    if finished && last_snapshot.is_none_or(|last| checkpoint >= last) {
                        return Ok(());
                    }
                }
                // The coordinator's out-of-band trigger: alignment took too long (or the
                // job runs unaligned): snapshot now, record what is in flight.
                Control::Trigger(checkpoint) => {
                    if last_snapshot.is_none_or(|last| checkpoint > last) {
                        unaligned = Some(
                            start_unaligned(body, outputs, inputs, checkpoint, &blocked, &ended)
                                .await?,
                        );
                        blocked.iter_mut().for_each(|b| *b = false);
                        aligning = None;
                        last_snapshot = Some(checkpoint);
                    }
                }
                Control::TriggerFinal(_) => {}
            },
            Next::Recorded => {}
            Next::Input(i, frame) => match frame? {
                Frame::Data(payload) => {
                    body.input(inputs[i].port, &payload)?;
                    outputs.send_data(body, false).await?;
                }
                Frame::Watermark(watermark) => {
                    watermarks[i] = watermarks[i].max(watermark);
                    advance(body, outputs, &watermarks, &mut current).await?;
                }
                Frame::Barrier(checkpoint) => {
                    // Already snapshotted (unaligned): the reader recorded up to here.
                    if last_snapshot.is_some_and(|last| checkpoint <= last) {
                        continue;
                    }
                    if let Some(other) = aligning.filter(|c| *c != checkpoint) {
                        // A checkpoint abandoned midway: align on the newer one.
                        tracing::debug!(
                            other,
                            checkpoint,
                            "alignment restarted on a newer barrier"
                        );
                        blocked.iter_mut().for_each(|b| *b = false);
                    }
                    blocked[i] = true;
                    aligning = Some(checkpoint);
                }
                Frame::End => {
                    ended[i] = true;
                    watermarks[i] = i64::MAX;
                    advance(body, outputs, &watermarks, &mut current).await?;
                }
            },
        }
        if let Some(checkpoint) = aligning {
            if (0..count).all(|i| blocked[i] || ended[i]) {
                outputs.send_data(body, true).await?;
                let operators = body.snapshot(checkpoint)?;
                outputs.broadcast(Frame::Barrier(checkpoint)).await?;
                outputs.store(checkpoint, operators, Vec::new())?;
                blocked.iter_mut().for_each(|b| *b = false);
                aligning = None;
                last_snapshot = Some(checkpoint);
            }
        }
        if let Some(mut pending) = unaligned.take() {
            for (i, input) in inputs.iter().enumerate() {
                if pending.done[i] {
                    continue;
                }
                let recorded = {
                    let mut queue = input.lock();
                    queue.recorded.take()
                };
                if let Some(frames) = recorded {
                    pending.in_flight[i].1.extend(frames);
                    pending.done[i] = true;
                }
            }
            if pending.done.iter().all(|d| *d) {
                outputs.store(pending.checkpoint, pending.operators, pending.in_flight)?;
            } else {
                unaligned = Some(pending);
            }
        }
        if !finished && ended.iter().all(|e| *e) {
            outputs.send_data(body, true).await?;
            outputs.end().await?;
            finished = true;
        }
    }
}

/// Takes checkpoint `checkpoint` at once, without waiting for the barriers: the state now,
/// the barrier on to the next stage, and for every input whose barrier has not arrived,
/// the data in flight — what is queued here now and what its reader reads until the
/// barrier (Chandy–Lamport's channel state).
async fn start_unaligned(
    body: &mut dyn StageBody,
    outputs: &mut Outputs,
    inputs: &[Arc<Input>],
    checkpoint: u64,
    blocked: &[bool],
    ended: &[bool],
) -> Result<Unaligned, String> {
    outputs.send_data(body, true).await?;
    let operators = body.snapshot(checkpoint)?;
    let mut in_flight = Vec::with_capacity(inputs.len());
    let mut done = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let mut frames = Vec::new();
        let mut complete = blocked[i] || ended[i];
        if !complete {
            let mut queue = input.lock();
            queue.recorded = None;
            for frame in &queue.frames {
                match frame {
                    Ok(Frame::Data(payload)) => frames.push(payload.clone()),
                    Ok(Frame::Barrier(_) | Frame::End) | Err(_) => {
                        complete = true;
                        break;
                    }
                    Ok(Frame::Watermark(_)) => {}
                }
            }
            if !complete {
                queue.recording = Some(Vec::new());
            }
        }
        input.space.notify_one();
        in_flight.push((input.port, frames));
        done.push(complete);
    }
    // After the recordings started: the barrier may make the next stage answer at once.
    outputs.broadcast(Frame::Barrier(checkpoint)).await?;
    Ok(Unaligned {
        checkpoint,
        operators,
        in_flight,
        done,
    })
}

/// Moves the stage's watermark to the least of its inputs'.
async fn advance(
    body: &mut dyn StageBody,
    outputs: &mut Outputs,
    watermarks: &[i64],
    current: &mut i64,
) -> Result<(), String> {
    let least = watermarks.iter().copied().min().unwrap_or(i64::MAX);
    if least <= *current {
        return Ok(());
    }
    *current = least;
    let out = body.on_watermark(least)?;
    outputs.send_data(body, false).await?;
    // Upstream stages already pace their watermarks: pass each advance on at once.
    outputs.watermark(body, out, true).await
}
