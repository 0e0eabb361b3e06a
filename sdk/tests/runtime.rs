//! The single-node runtime end to end: an embedded cluster with 4 CPUs and 2 declared
//! (fake) GPUs, real worker processes, real SIGKILLs.
//!
//! Runs as a plain program (`harness = false`): `fleet::init` first (a worker re-executing
//! this binary turns into a worker there), then every scenario in turn; a failure names the
//! scenario and exits non-zero.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};

#[path = "runtime/auth.rs"]
mod auth;
#[path = "runtime/cancel.rs"]
mod cancel;
#[path = "runtime/channels.rs"]
mod channels;
#[path = "runtime/groups.rs"]
mod groups;
#[path = "runtime/hosts.rs"]
mod hosts;
#[path = "runtime/kv.rs"]
mod kv;
#[path = "runtime/labels.rs"]
mod labels;
#[path = "runtime/placement.rs"]
mod placement;
#[path = "runtime/streams.rs"]
mod streams;
use fleet::{Error, ObjectRef, TaskFailure};
use serde::{Deserialize, Serialize};

#[fleet::remote]
fn double(x: u64) -> u64 {
    x * 2
}

/// The node it ran on.
#[fleet::remote]
fn where_am_i() -> String {
    fleet::node_id()
}

/// Creates the file at `path`.
#[fleet::remote]
fn touch(path: String) -> u64 {
    let _ = std::fs::write(path, b"ran");
    1
}

/// Creates the file at `path` and returns `len` bytes (through the object store).
#[fleet::remote]
fn touch_big(path: String, len: usize) -> Vec<u8> {
    let _ = std::fs::write(path, b"ran");
    vec![3; len]
}

#[fleet::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Receives references nested in a value; resolves them from inside the worker.
#[fleet::remote]
async fn sum_refs(refs: Vec<ObjectRef<u64>>) -> Result<u64, String> {
    let mut total = 0;
    for r in refs {
        total += r.get().await.map_err(|e| e.to_string())?;
    }
    Ok(total)
}

#[fleet::remote]
fn fails(message: String) -> Result<u64, String> {
    Err(message)
}

#[fleet::remote]
fn panics() -> u64 {
    panic!("deliberate panic in a task")
}

/// Kills its own worker the first time it runs (a marker file remembers).
#[fleet::remote]
fn crash_once(marker: String) -> u32 {
    if !std::path::Path::new(&marker).exists() {
        let _ = std::fs::write(&marker, b"crashed");
        std::process::abort();
    }
    std::process::id()
}

/// Returns the references it was given, inside its result.
#[fleet::remote]
fn echo_refs(refs: Vec<ObjectRef<u64>>) -> Vec<ObjectRef<u64>> {
    refs
}

/// An actor that keeps references it is given.
#[fleet::actor]
pub struct Keeper {
    kept: Vec<ObjectRef<u64>>,
}

#[fleet::actor]
impl Keeper {
    pub fn new() -> Self {
        Keeper { kept: Vec::new() }
    }

    pub fn keep(&mut self, refs: Vec<ObjectRef<u64>>) -> usize {
        self.kept.extend(refs);
        self.kept.len()
    }

    pub fn forget(&mut self) -> usize {
        let had = self.kept.len();
        self.kept.clear();
        had
    }

    pub async fn total(&self) -> Result<u64, String> {
        let mut total = 0;
        for r in &self.kept {
            total += r.get().await.map_err(|e| e.to_string())?;
        }
        Ok(total)
    }
}

/// Returns a large value (it travels through the node's object store).
#[fleet::remote]
fn make_big(len: usize, fill: u8) -> Vec<u8> {
    vec![fill; len]
}

/// Reads large values owned by the driver from inside a worker.
#[fleet::remote]
async fn checksum_refs(refs: Vec<ObjectRef<Vec<u8>>>) -> Result<u64, String> {
    let mut sum = 0u64;
    for r in refs {
        sum += r
            .get()
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|b| u64::from(*b))
            .sum::<u64>();
    }
    Ok(sum)
}

/// Fails (an application error) the first time it runs (a marker file remembers).
#[fleet::remote]
fn flaky(marker: String) -> Result<u64, String> {
    if !std::path::Path::new(&marker).exists() {
        let _ = std::fs::write(&marker, b"failed once");
        return Err("transient failure".into());
    }
    Ok(7)
}

#[fleet::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[fleet::remote]
fn gpu_task() -> (Vec<u32>, String) {
    (
        fleet::gpu_ids(),
        std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default(),
    )
}

/// Calls an actor through a handle it was given.
#[fleet::remote]
async fn bump(counter: LogHandle, value: u64) -> Result<usize, String> {
    counter.push(value).await.map_err(|e| e.to_string())
}

/// What `fleet::context()` says inside a task: (task id, actor id, job id).
#[fleet::remote]
fn context_in_task() -> (Option<String>, Option<String>, String) {
    match fleet::context() {
        Ok(c) => (c.task_id, c.actor_id, c.job_id),
        Err(_) => (None, None, String::new()),
    }
}

#[fleet::remote]
fn byte_count(bytes: Vec<u8>) -> usize {
    bytes.iter().filter(|b| **b == 7).count()
}

/// Takes a handle, drops it, and says how many actor links this worker still has.
#[fleet::remote]
fn links_after_dropping(log: LogHandle) -> usize {
    drop(log);
    fleet::__private::actor_links().map_or(usize::MAX, |(live, _)| live)
}

#[fleet::actor]
pub struct Log {
    values: Vec<u64>,
    inside: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

#[fleet::actor]
impl Log {
    pub fn new() -> Self {
        Log {
            values: Vec::new(),
            inside: Default::default(),
            peak: Default::default(),
        }
    }

    pub fn push(&mut self, value: u64) -> usize {
        self.values.push(value);
        self.values.len()
    }

    pub fn values(&self) -> Vec<u64> {
        self.values.clone()
    }

    pub fn fail(&self) -> Result<u64, String> {
        Err("the log refuses".into())
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Sleeps, then says how many calls were in this method at once.
    pub async fn overlap(&self, ms: u64) -> usize {
        let now = self
            .inside
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        self.peak
            .fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.inside
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// What `fleet::context()` says inside a method: (actor id, restarts, task id).
    pub fn context_now(&self) -> (Option<String>, u32, Option<String>) {
        match fleet::context() {
            Ok(c) => (c.actor_id, c.actor_restarts, c.task_id),
            Err(_) => (None, u32::MAX, None),
        }
    }

    pub fn count_sevens(&self, bytes: Vec<u8>) -> usize {
        bytes.iter().filter(|b| **b == 7).count()
    }

    pub async fn slow_len(&self, ms: u64) -> usize {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.values.len()
    }
}

#[fleet::actor(checkpoint)]
#[derive(Default, Serialize, Deserialize)]
pub struct Tally {
    count: u64,
}

#[fleet::actor]
impl Tally {
    pub fn new() -> Self {
        Tally::default()
    }

    pub fn incr(&mut self) -> u64 {
        self.count += 1;
        self.count
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

#[fleet::actor]
pub struct GpuUser {
    started: u64,
}

#[fleet::actor]
impl GpuUser {
    pub fn new() -> Self {
        GpuUser { started: 1 }
    }

    pub fn devices(&self) -> (Vec<u32>, String) {
        let _ = self.started;
        (
            fleet::gpu_ids(),
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default(),
        )
    }
}

fn sigkill(pid: u32) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -9 {pid} failed");
    Ok(())
}

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("fleet-runtime-test-{}", std::process::id()))
}

async fn tasks_fan_out_and_pass_references() -> Result<()> {
    let refs: Vec<_> = (0..200u64).map(double::remote).collect();
    let values = fleet::get_all(&refs).await?;
    ensure!(
        values == (0..200u64).map(|x| x * 2).collect::<Vec<_>>(),
        "results in order"
    );
    // A reference as an argument is resolved before the call.
    let a = double::remote(10);
    let b = fleet::put(&5u64)?;
    ensure!(add::remote(&a, &b).await? == 25);
    // References nested in a value travel as references; the worker fetches from the owner.
    let nested: Vec<ObjectRef<u64>> = (1..=10u64)
        .map(|x| fleet::put(&x))
        .collect::<fleet::Result<_>>()?;
    ensure!(sum_refs::remote(nested).await? == 55);
    Ok(())
}

async fn errors_are_values_with_message_backtrace_and_location() -> Result<()> {
    let error = fails::remote("out of cheese".to_string())
        .await
        .err()
        .context("an Err must fail the ref")?;
    let remote = error.remote().context("a task error")?;
    ensure!(
        remote.kind == TaskFailure::Application && remote.message == "out of cheese",
        "{error}"
    );
    ensure!(
        remote.location.pid != std::process::id() && !remote.location.worker_id.is_empty(),
        "ran elsewhere: {error}"
    );
    let error = panics::remote()
        .await
        .err()
        .context("a panic must fail the ref")?;
    let remote = error.remote().context("a task error")?;
    ensure!(
        remote.kind == TaskFailure::Panic && remote.message.contains("deliberate panic"),
        "{error}"
    );
    ensure!(
        remote.backtrace.contains("panics"),
        "the remote backtrace names the function"
    );
    Ok(())
}

async fn a_crashed_worker_retries_the_task() -> Result<()> {
    let dir = scratch();
    std::fs::create_dir_all(&dir)?;
    let marker = dir.join("crash-once").display().to_string();
    let _ = std::fs::remove_file(&marker);
    let pid = crash_once::options()
        .max_retries(1)
        .remote(marker.clone())
        .await?;
    ensure!(pid != std::process::id());
    // Application errors are retried only when asked.
    let flaky_marker = dir.join("flaky").display().to_string();
    let _ = std::fs::remove_file(&flaky_marker);
    ensure!(
        flaky::remote(flaky_marker.clone()).await.is_err(),
        "no retry of an Err by default"
    );
    let _ = std::fs::remove_file(&flaky_marker);
    ensure!(
        flaky::options()
            .retry_exceptions(true)
            .max_retries(1)
            .remote(flaky_marker)
            .await?
            == 7
    );
    let marker2 = dir.join("crash-no-retry").display().to_string();
    let _ = std::fs::remove_file(&marker2);
    match crash_once::options().max_retries(0).remote(marker2).await {
        Err(Error::WorkerDied { attempts, .. }) => ensure!(attempts == 1),
        other => return Err(anyhow!("expected WorkerDied, got {other:?}")),
    }
    Ok(())
}

async fn actor_calls_run_in_submission_order() -> Result<()> {
    let log = Log::remote().spawn().await?;
    let replies: Vec<_> = (0..300u64).map(|i| log.push(i)).collect();
    let lengths = fleet::get_all(&replies).await?;
    ensure!(
        lengths == (1..=300usize).collect::<Vec<_>>(),
        "each call saw the ones before it"
    );
    ensure!(log.values().await? == (0..300u64).collect::<Vec<_>>());
    // An async method, then an application error the actor survives.
    ensure!(log.slow_len(20).await? == 300);
    ensure!(log.fail().await.is_err());
    ensure!(
        log.values().await?.len() == 300,
        "the actor survives an application error"
    );
    // A handle passed to tasks.
    let lens: Vec<_> = (0..5u64)
        .map(|i| bump::remote(log.clone(), 1000 + i))
        .collect();
    fleet::get_all(&lens).await?;
    ensure!(log.values().await?.len() == 305);
    log.raw().kill().await?;
    Ok(())
}

async fn a_handle_bounds_its_calls_in_flight() -> Result<()> {
    let log = Log::remote().max_pending_calls(3).spawn().await?;
    let calls: Vec<_> = (0..5).map(|_| log.slow_len(300)).collect();
    for (i, call) in calls.into_iter().enumerate() {
        match (i, call.await) {
            (0..=2, Ok(0)) => {}
            (3 | 4, Err(Error::PendingCallsExceeded { limit: 3, .. })) => {}
            (i, other) => return Err(anyhow!("call {i}: {other:?}")),
        }
    }
    // Answered calls give their places back.
    let again: Vec<_> = (0..3).map(|_| log.slow_len(1)).collect();
    ensure!(fleet::get_all(&again).await? == vec![0, 0, 0]);
    log.raw().kill().await?;
    Ok(())
}

async fn large_by_value_arguments_travel_by_reference() -> Result<()> {
    // One byte more than a core-worker message may be (64 MiB): it must go through the
    // object store (a task's arguments take the same path).
    let len = (64 << 20) + 1;
    let log = Log::remote().spawn().await?;
    ensure!(log.count_sevens(vec![7u8; len]).await? == len);
    // While a call holds a large argument it is in this node's store; then it is freed.
    let (_, before) = fleet::__private::held_objects()?;
    let pending = byte_count::remote(vec![7u8; 1 << 20]);
    ensure!(pending.await? == 1 << 20);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet::__private::held_objects()?.1 > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        fleet::__private::held_objects()?.1 <= before,
        "the argument's copy in the store is freed with its call"
    );
    log.raw().kill().await?;
    Ok(())
}

async fn a_worker_forgets_actor_links_with_their_last_handle() -> Result<()> {
    let (_, owned_before) = fleet::__private::actor_links()?;
    for _ in 0..3 {
        let log = Log::remote().spawn().await?;
        // Each task gets a handle of its own to another actor: its worker makes a link for
        // it, and must forget it again (before, one link and one task per actor ever seen).
        let left = links_after_dropping::remote(log.clone()).await?;
        ensure!(
            left == 0,
            "the worker kept {left} actor link(s) after the handle dropped"
        );
        log.raw().kill().await?;
    }
    let (_, owned_after) = fleet::__private::actor_links()?;
    ensure!(
        owned_after == owned_before,
        "killed actors are no longer kept for restarts: {owned_before} -> {owned_after}"
    );
    Ok(())
}

async fn concurrent_actors_interleave_shared_calls() -> Result<()> {
    let log = Log::remote().max_concurrency(4).spawn().await?;
    let started = Instant::now();
    let calls: Vec<_> = (0..8).map(|_| log.overlap(200)).collect();
    let peaks = fleet::get_all(&calls).await?;
    ensure!(
        peaks.iter().max() == Some(&4),
        "at most 4 at once, and 4 reached: {peaks:?}"
    );
    ensure!(
        started.elapsed() < Duration::from_millis(1500),
        "8 × 200 ms calls overlapped"
    );
    // A &mut self call runs alone, after the shared calls before it.
    log.push(1);
    ensure!(log.values().await? == vec![1]);
    let serial = Log::remote().spawn().await?;
    let calls: Vec<_> = (0..3).map(|_| serial.overlap(50)).collect();
    ensure!(
        fleet::get_all(&calls).await? == vec![1, 1, 1],
        "max_concurrency 1 runs one at a time"
    );
    log.raw().kill().await?;
    serial.raw().kill().await?;
    Ok(())
}

async fn named_actors_are_found_by_name_and_type() -> Result<()> {
    let log = Log::remote().name("the-log").spawn().await?;
    log.push(7).await?;
    let found = fleet::get_actor::<Log>("the-log").await?;
    ensure!(found.values().await? == vec![7]);
    match Log::remote().name("the-log").spawn().await {
        Err(Error::ActorNameTaken { .. }) => {}
        other => return Err(anyhow!("a second 'the-log' must be refused, got {other:?}")),
    }
    // get_if_exists: the live one, for concurrent creators too (one wins in the GCS).
    let (a, b) = tokio::join!(
        Log::remote().name("once").get_if_exists(true).spawn(),
        Log::remote().name("once").get_if_exists(true).spawn()
    );
    let (a, b) = (a?, b?);
    ensure!(
        a.raw().actor_id() == b.raw().actor_id(),
        "two creators, one actor"
    );
    let again = Log::remote()
        .name("the-log")
        .get_if_exists(true)
        .spawn()
        .await?;
    ensure!(again.raw().actor_id() == log.raw().actor_id());
    ensure!(
        again.values().await? == vec![7],
        "the existing actor, with its state"
    );
    match Tally::remote()
        .name("the-log")
        .get_if_exists(true)
        .spawn()
        .await
    {
        Err(Error::ActorTypeMismatch { .. }) => {}
        other => {
            return Err(anyhow!(
                "a Tally named like a Log must be refused, got {other:?}"
            ))
        }
    }
    fleet::kill(a.raw()).await?;
    match fleet::get_actor::<Tally>("the-log").await {
        Err(Error::ActorTypeMismatch { found, .. }) => ensure!(found.ends_with("Log")),
        other => return Err(anyhow!("expected a type mismatch, got {other:?}")),
    }
    match fleet::get_actor::<Log>("no-such-actor").await {
        Err(Error::ActorNotFound { .. }) => {}
        other => return Err(anyhow!("expected ActorNotFound, got {other:?}")),
    }
    fleet::kill(log.raw()).await?;
    match found.values().await {
        Err(Error::ActorDied { cause, .. }) => ensure!(cause.contains("killed"), "{cause}"),
        other => return Err(anyhow!("a killed actor's calls fail, got {other:?}")),
    }
    // Its name is free again.
    let again = Log::remote().name("the-log").spawn().await?;
    again.raw().kill().await?;
    Ok(())
}

async fn an_actor_restarts_then_dies_when_out_of_restarts() -> Result<()> {
    let log = Log::remote()
        .max_restarts(1)
        .max_task_retries(1)
        .spawn()
        .await?;
    log.push(1).await?;
    let (actor, restarts, task) = log.context_now().await?;
    ensure!(actor.as_deref() == Some(log.raw().actor_id()) && restarts == 0 && task.is_some());
    let first = log.pid().await?;
    sigkill(first)?;
    // The interrupted call is retried on the restarted actor (fresh state: not checkpointed).
    let second = log.pid().await?;
    ensure!(second != first, "a new worker process");
    let (_, restarts, _) = log.context_now().await?;
    ensure!(
        restarts == 1,
        "the restarted instance knows it is one: {restarts}"
    );
    ensure!(
        log.values().await?.is_empty(),
        "a restart without a checkpoint runs new() again"
    );
    sigkill(second)?;
    match log.values().await {
        Err(Error::ActorDied { cause, .. }) => ensure!(cause.contains("max_restarts=1"), "{cause}"),
        other => {
            return Err(anyhow!(
                "expected ActorDied after the last restart, got {other:?}"
            ))
        }
    }
    Ok(())
}

/// SIGKILLs the tally's process, then calls it: the call finds the worker dead, waits for
/// the owner to restart the actor and is retried there, because the handle it was passed
/// carries the actor's `max_task_retries` (before, only the owner's own calls were retried).
#[fleet::remote]
async fn kill_then_count(tally: TallyHandle) -> std::result::Result<u64, String> {
    let pid = tally.pid().await.map_err(|e| e.to_string())?;
    sigkill(pid).map_err(|e| e.to_string())?;
    tally.count().await.map_err(|e| e.to_string())
}

async fn a_handle_passed_on_retries_calls_across_restarts() -> Result<()> {
    let tally = Tally::remote()
        .max_restarts(3)
        .max_task_retries(2)
        .spawn()
        .await?;
    tally.incr().await?;
    let pid = tally.pid().await?;
    let counted = kill_then_count::remote(tally.clone());
    // Restarts are the owner's: its next call finds the worker dead and restarts the actor.
    let started = std::time::Instant::now();
    while tally.pid().await? == pid {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the actor was not killed and restarted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = counted.await?;
    ensure!(
        count == 0,
        "the retried call reached the restarted instance (not checkpointed: 0), got {count}"
    );
    tally.raw().kill().await?;
    Ok(())
}

async fn a_checkpointed_actor_comes_back_with_its_exact_state() -> Result<()> {
    let dir = scratch().join("checkpoints");
    let tally = Tally::remote()
        .max_restarts(3)
        .max_task_retries(2)
        .checkpoint_every(1)
        .checkpoint_dir(&dir)
        .spawn()
        .await?;
    for _ in 0..50 {
        tally.incr();
    }
    ensure!(tally.count().await? == 50);
    let pid = tally.pid().await?;
    sigkill(pid)?;
    ensure!(
        tally.count().await? == 50,
        "restored from the checkpoint committed after call 50"
    );
    ensure!(tally.pid().await? != pid);
    for _ in 0..5 {
        tally.incr();
    }
    ensure!(tally.count().await? == 55);
    // A time-based policy: no call-count trigger, a 100 ms interval.
    let timed = Tally::remote()
        .max_restarts(1)
        .max_task_retries(1)
        .checkpoint_interval(Duration::from_millis(100))
        .checkpoint_dir(&dir)
        .spawn()
        .await?;
    for _ in 0..7 {
        timed.incr();
    }
    ensure!(timed.count().await? == 7);
    tokio::time::sleep(Duration::from_millis(400)).await;
    sigkill(timed.pid().await?)?;
    ensure!(
        timed.count().await? == 7,
        "restored from the timed checkpoint"
    );
    timed.raw().kill().await?;
    // On demand, and the checkpoint pointer is in the control store.
    let sequence = tally.checkpoint().await?;
    ensure!(sequence >= 55, "checkpoint sequence {sequence}");
    tally.raw().kill().await?;
    Ok(())
}

/// Group commit: with `checkpoint_every(10)`, every acknowledged call survives a SIGKILL
/// (before, the calls answered since the last of every 10th checkpoint were lost), and
/// pipelined calls share checkpoints. The relaxed mode loses what it said it would.
async fn acknowledged_calls_survive_a_crash_between_checkpoints() -> Result<()> {
    let dir = scratch().join("group-commit");
    let tally = Tally::remote()
        .max_restarts(2)
        .max_task_retries(2)
        .checkpoint_every(10)
        .checkpoint_dir(&dir)
        .spawn()
        .await?;
    // Seven calls, each awaited: acknowledged one by one, none a 10th.
    for expected in 1..=7u64 {
        ensure!(tally.incr().await? == expected);
    }
    sigkill(tally.pid().await?)?;
    ensure!(
        tally.count().await? == 7,
        "all 7 acknowledged calls survive the crash"
    );
    // Pipelined: 25 calls in flight at once share checkpoints (at most 10 a group).
    let before = tally.checkpoint().await?;
    let calls: Vec<_> = (0..25).map(|_| tally.incr()).collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await?);
    }
    ensure!(answers == (8..=32).collect::<Vec<u64>>(), "{answers:?}");
    let groups = tally.checkpoint().await? - before - 1;
    ensure!(
        (3..=25).contains(&groups),
        "25 calls, at most 10 a group: {groups} checkpoints"
    );
    println!("  25 pipelined calls were covered by {groups} checkpoints");
    sigkill(tally.pid().await?)?;
    ensure!(
        tally.count().await? == 32,
        "the pipelined calls survive too"
    );
    tally.raw().kill().await?;

    // Answer first: fast, and documented to lose the calls since the last checkpoint.
    let relaxed = Tally::remote()
        .max_restarts(1)
        .max_task_retries(1)
        .checkpoint_every(10)
        .answer_before_checkpoint()
        .checkpoint_dir(&dir)
        .spawn()
        .await?;
    for _ in 0..13 {
        relaxed.incr().await?;
    }
    sigkill(relaxed.pid().await?)?;
    ensure!(
        relaxed.count().await? == 10,
        "answer-first restores the checkpoint of call 10, losing calls 11-13"
    );
    relaxed.raw().kill().await?;
    Ok(())
}

async fn gpu_actors_get_distinct_device_ids() -> Result<()> {
    let a = GpuUser::remote().num_gpus(1.0).spawn().await?;
    let b = GpuUser::remote().num_gpus(1.0).spawn().await?;
    let (ids_a, visible_a) = a.devices().await?;
    let (ids_b, visible_b) = b.devices().await?;
    ensure!(
        ids_a.len() == 1 && ids_b.len() == 1 && ids_a != ids_b,
        "{ids_a:?} vs {ids_b:?}"
    );
    ensure!(
        visible_a == ids_a[0].to_string() && visible_b == ids_b[0].to_string(),
        "CUDA_VISIBLE_DEVICES {visible_a}/{visible_b}"
    );
    // A third waits until one of the two GPUs is free.
    let third = tokio::spawn(GpuUser::remote().num_gpus(1.0).spawn());
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        !third.is_finished(),
        "the third 1-GPU actor waits for a free GPU"
    );
    a.raw().kill().await?;
    let c = tokio::time::timeout(Duration::from_secs(30), third)
        .await??
        .map_err(|e| anyhow!("{e}"))?;
    let (ids_c, _) = c.devices().await?;
    ensure!(
        ids_c == ids_a,
        "the third got the freed GPU {ids_a:?}, not {ids_c:?}"
    );
    b.raw().kill().await?;
    c.raw().kill().await?;
    // Two half-GPU actors share one GPU.
    let h1 = GpuUser::remote().num_gpus(0.5).spawn().await?;
    let h2 = GpuUser::remote().num_gpus(0.5).spawn().await?;
    let (i1, _) = h1.devices().await?;
    let (i2, _) = h2.devices().await?;
    ensure!(
        i1.len() == 1 && i1 == i2,
        "half GPUs share an id: {i1:?} {i2:?}"
    );
    let (task_ids, _) = gpu_task::options().num_gpus(1.0).remote().await?;
    ensure!(
        task_ids.len() == 1 && task_ids != i1,
        "a 1-GPU task gets the other GPU: {task_ids:?}"
    );
    h1.raw().kill().await?;
    h2.raw().kill().await?;
    Ok(())
}

async fn requests_no_node_can_satisfy_fail_at_once() -> Result<()> {
    let started = Instant::now();
    match GpuUser::remote().num_gpus(3.0).spawn().await {
        Err(Error::Infeasible(message)) => ensure!(message.contains("GPU"), "{message}"),
        other => {
            return Err(anyhow!(
                "3 GPUs on a 2-GPU node must be infeasible, got {other:?}"
            ))
        }
    }
    match double::options().resource("TPU", 1.0).remote(1).await {
        Err(Error::Infeasible(message)) => ensure!(message.contains("TPU"), "{message}"),
        other => {
            return Err(anyhow!(
                "an unknown resource must be infeasible, got {other:?}"
            ))
        }
    }
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "an error, not an eternal wait"
    );
    Ok(())
}

async fn large_objects_go_through_the_shared_memory_store_and_spill() -> Result<()> {
    // 8 objects of 12 MiB in a 64 MiB store: the least recently used spill to disk and
    // come back on demand, byte for byte.
    let mut refs = Vec::new();
    for i in 0..8u8 {
        refs.push(fleet::put(&vec![i; 12 << 20])?);
    }
    for (i, r) in refs.iter().enumerate() {
        let value = r.get().await?;
        ensure!(
            value.len() == 12 << 20 && value.iter().all(|b| usize::from(*b) == i),
            "object {i} intact"
        );
    }
    // A large task result, and a worker reading large driver-owned objects by reference.
    let big = make_big::remote(8 << 20, 3).await?;
    ensure!(big.len() == 8 << 20 && big[12345] == 3);
    let expected: u64 = (0..3u64).map(|i| i * (12 << 20)).sum();
    ensure!(
        checksum_refs::remote(refs[..3].to_vec()).await? == expected,
        "the worker read the objects"
    );
    Ok(())
}

/// A driver that is about to be SIGKILLed: prints its actor's worker pid, then waits.
async fn doomed_driver() -> Result<()> {
    let log = Log::remote().spawn().await?;
    println!("worker-pid {}", log.pid().await?);
    tokio::time::sleep(Duration::from_secs(120)).await;
    Ok(())
}

async fn workers_exit_when_their_driver_is_killed() -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .env("FLEET_TEST_DOOMED_DRIVER", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let pid: u32 = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await??
            .context("the doomed driver exited early")?;
        if let Some(pid) = line.strip_prefix("worker-pid ") {
            break pid.trim().parse()?;
        }
    };
    ensure!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "its worker runs"
    );
    sigkill(child.id().context("driver pid")?)?;
    let _ = child.wait().await;
    // The embedded raylet died with the driver: its workers read EOF on stdin and exit.
    let started = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        if zombie {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "worker {pid} outlived its driver"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its shared memory and temporary files are reclaimed by the next embedded start (or a
    // sweep): at least its shm directory and its temp directory.
    ensure!(
        fleet::__private::sweep_stale_embedded() >= 2,
        "the dead driver's directories were swept"
    );
    Ok(())
}

/// What the second driver (this binary, started with FLEET_ADDRESS) does.
async fn second_driver() -> Result<()> {
    let log = fleet::get_actor::<Log>("shared-log").await?;
    log.push(42).await?;
    ensure!(
        double::remote(21).await? == 42,
        "tasks run on the cluster's workers"
    );
    // This job's shared actor hosts exit once their actors are gone (after the node's
    // `host_idle_grace`), instead of staying until the job ends.
    let mut pids = Vec::new();
    for _ in 0..2 {
        let actor = hosts::Resident::remote(0u32).spawn().await?;
        let (_, _, pid, _) = actor.report().await?;
        pids.push(pid);
        actor.raw().kill().await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for pid in &pids {
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            ensure!(
                Instant::now() < deadline,
                "the empty actor host {pid} did not exit"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn shutdown_driver() -> Result<()> {
    let log = fleet::get_actor::<Log>("shared-log").await?;
    let slow_task = sleep_ms::remote(30_000);
    let slow_call = log.slow_len(30_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(fleet::__private::background_tasks()? > 0);
    let started = Instant::now();
    fleet::shutdown().await;
    let left = fleet::__private::background_tasks()?;
    ensure!(
        left == 0,
        "{left} background task(s) outlived fleet::shutdown()"
    );
    // What was still waiting is answered, not left hanging.
    match tokio::time::timeout(Duration::from_secs(5), slow_task).await {
        Ok(Err(Error::ShutDown)) => {}
        other => return Err(anyhow!("the slow task: {other:?}")),
    }
    match tokio::time::timeout(Duration::from_secs(5), slow_call).await {
        Ok(Err(Error::ShutDown)) => {}
        other => return Err(anyhow!("the slow actor call: {other:?}")),
    }
    ensure!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}

async fn a_second_driver_joins_the_running_cluster() -> Result<()> {
    let log = Log::remote().name("shared-log").spawn().await?;
    let address = fleet::cluster_address()?;
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .env("FLEET_ADDRESS", &address)
        .env("FLEET_TOKEN", fleet::cluster_token()?)
        .env("FLEET_TEST_SECOND_DRIVER", "1")
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "the second driver failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        log.values().await? == vec![42],
        "the second driver called the named actor"
    );
    // A driver that shuts down mid-work ends every task of its own, and answers its waiters.
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .env("FLEET_ADDRESS", &address)
        .env("FLEET_TOKEN", fleet::cluster_token()?)
        .env("FLEET_TEST_SHUTDOWN_DRIVER", "1")
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "the shutdown driver failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    log.raw().kill().await?;
    Ok(())
}

async fn values_are_freed_with_their_last_reference() -> Result<()> {
    let (values_before, stored_before) = fleet::__private::held_objects()?;
    {
        let small: Vec<_> = (0..100u64)
            .map(|i| fleet::put(&i))
            .collect::<fleet::Result<_>>()?;
        let results: Vec<_> = (0..100u64).map(double::remote).collect();
        fleet::get_all(&results).await?;
        let big = fleet::put(&vec![7u8; 4 << 20])?;
        let doubled = add::remote(&small[0], &small[1]);
        ensure!(doubled.await? == 1);
        ensure!(big.get().await?.len() == 4 << 20);
        let (during, stored) = fleet::__private::held_objects()?;
        ensure!(
            during >= values_before + 201,
            "held while referenced: {during}"
        );
        ensure!(
            stored.unwrap_or(0) >= stored_before.unwrap_or(0) + (4 << 20),
            "the large value is in the object store"
        );
    }
    {
        // References lent to a task inside its arguments, not kept by it: freed afterwards.
        let lent: Vec<ObjectRef<u64>> = (1..=20u64)
            .map(|i| fleet::put(&i))
            .collect::<fleet::Result<_>>()?;
        ensure!(sum_refs::remote(lent).await? == 210);
    }
    // Fire and forget: results nobody holds any more when they arrive are freed on
    // arrival (before, each stayed in the owner's memory for good), large ones too.
    let marks = scratch().join("forgotten");
    std::fs::create_dir_all(&marks)?;
    let submitters_before = fleet::__private::background_tasks()?;
    for i in 0..40 {
        drop(touch::remote(
            marks.join(i.to_string()).to_string_lossy().to_string(),
        ));
    }
    drop(touch_big::remote(
        marks.join("big").to_string_lossy().to_string(),
        3usize << 20,
    ));
    // Done when every task ran and every submission ended (its result was set or freed).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ran = std::fs::read_dir(&marks)?.count();
        let submitting = fleet::__private::background_tasks()?;
        if ran == 41 && submitting <= submitters_before {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{ran} of 41 forgotten tasks ran; {submitting} background tasks (before: {submitters_before})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (held, stored) = fleet::__private::held_objects()?;
    ensure!(
        held <= values_before && stored <= stored_before,
        "results of dropped tasks stay: {held} values (before: {values_before}), {stored:?} bytes stored (before: {stored_before:?})"
    );
    // Everything above went out of scope: its values (and the stored object) are freed.
    let (after, stored) = fleet::__private::held_objects()?;
    ensure!(
        after <= values_before,
        "{after} values held after dropping, {values_before} before"
    );
    ensure!(
        stored <= stored_before,
        "the stored object was freed: {stored:?} after, {stored_before:?} before"
    );
    Ok(())
}

async fn references_kept_or_passed_on_by_borrowers_stay_valid() -> Result<()> {
    // An actor keeps references it was given; the driver drops its own.
    let keeper = Keeper::remote().spawn().await?;
    {
        let refs: Vec<ObjectRef<u64>> = (1..=10u64)
            .map(|i| fleet::put(&i))
            .collect::<fleet::Result<_>>()?;
        ensure!(keeper.keep(refs).await? == 10);
    }
    ensure!(
        keeper.total().await? == 55,
        "the kept references still resolve"
    );
    // A task hands the references back inside its result; the driver drops the originals
    // before reading them.
    let echoed = {
        let refs: Vec<ObjectRef<u64>> = (1..=5u64)
            .map(|i| fleet::put(&(i * 100)))
            .collect::<fleet::Result<_>>()?;
        echo_refs::remote(refs)
    };
    let back = echoed.await?;
    ensure!(fleet::get_all(&back).await? == vec![100, 200, 300, 400, 500]);
    keeper.raw().kill().await?;
    Ok(())
}

async fn the_runtime_context_says_where_code_runs() -> Result<()> {
    let driver = fleet::context()?;
    ensure!(driver.task_id.is_none() && driver.actor_id.is_none());
    ensure!(!driver.was_current_actor_reconstructed());
    let (task, actor, job) = context_in_task::remote().await?;
    ensure!(task.is_some() && actor.is_none(), "{task:?} {actor:?}");
    ensure!(job == driver.job_id, "the task runs in the driver's job");
    Ok(())
}

async fn gets_with_a_timeout_name_the_object_and_its_task() -> Result<()> {
    let slow = sleep_ms::remote(600);
    match fleet::get_timeout(&slow, Duration::from_millis(50)).await {
        Err(Error::GetTimeout {
            object_id,
            task: Some(task),
            after,
        }) => {
            ensure!(object_id == slow.id() && object_id.starts_with(&task));
            ensure!(after == Duration::from_millis(50));
        }
        other => return Err(anyhow!("expected GetTimeout, got {other:?}")),
    }
    // The object is unaffected: a longer wait has it.
    ensure!(slow.timeout(Duration::from_secs(30)).await? == 600);
    Ok(())
}

async fn wait_returns_the_first_ready() -> Result<()> {
    let refs: Vec<_> = [2000u64, 10, 20, 3000]
        .into_iter()
        .map(sleep_ms::remote)
        .collect();
    let (ready, not_ready) = fleet::wait(&refs, 2, Some(Duration::from_secs(1))).await?;
    ensure!(
        ready.len() == 2 && not_ready.len() == 2,
        "{} ready",
        ready.len()
    );
    let values = fleet::get_all(&ready).await?;
    ensure!(values == vec![10, 20], "{values:?}");
    let (ready, _) = fleet::wait(&refs, 4, Some(Duration::from_millis(1))).await?;
    ensure!(ready.len() < 4, "the timeout bounds the wait");
    // Without fetching: the same readiness, for owned and borrowed references alike.
    // (The long one, which blocks its thread, is force-cancelled after: its CPU is needed
    // by later scenarios.)
    let fresh: Vec<_> = [30_000u64, 5, 10]
        .into_iter()
        .map(sleep_ms::remote)
        .collect();
    let options = fleet::WaitOptions::new(2)
        .timeout(Duration::from_secs(20))
        .fetch_local(false);
    let (ready, not_ready) = fleet::wait_with(&fresh, options).await?;
    fleet::cancel_with(&fresh[0], fleet::CancelOptions::default().force()).await?;
    ensure!(
        ready.len() == 2 && not_ready.len() == 1 && not_ready[0].id() == fresh[0].id(),
        "{} ready without fetching",
        ready.len()
    );
    Ok(())
}

type Scenario = fn() -> Pin<Box<dyn Future<Output = Result<()>>>>;

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
        let options = fleet::InitOptions {
            num_cpus: Some(4.0),
            num_gpus: Some(2),
            labels: [("zone", "here"), ("disk", "ssd")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        if let Err(error) = fleet::init_with(options).await {
            eprintln!("fleet::init failed: {error}");
            return std::process::ExitCode::FAILURE;
        }
        if std::env::var_os("FLEET_TEST_DOOMED_DRIVER").is_some() {
            return match doomed_driver().await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("doomed driver: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        if std::env::var_os("FLEET_TEST_SHUTDOWN_DRIVER").is_some() {
            return match shutdown_driver().await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("shutdown driver: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        if std::env::var_os("FLEET_TEST_SECOND_DRIVER").is_some() {
            return match second_driver().await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("second driver: {error:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        let scenarios: Vec<(&str, Scenario)> = vec![
            (
                "strangers_are_refused_by_every_rpc_of_every_service",
                || Box::pin(auth::strangers_are_refused_by_every_rpc_of_every_service()),
            ),
            ("tasks_fan_out_and_pass_references", || {
                Box::pin(tasks_fan_out_and_pass_references())
            }),
            (
                "errors_are_values_with_message_backtrace_and_location",
                || Box::pin(errors_are_values_with_message_backtrace_and_location()),
            ),
            ("a_handle_passed_on_retries_calls_across_restarts", || {
                Box::pin(a_handle_passed_on_retries_calls_across_restarts())
            }),
            ("a_crashed_worker_retries_the_task", || {
                Box::pin(a_crashed_worker_retries_the_task())
            }),
            ("a_handle_bounds_its_calls_in_flight", || {
                Box::pin(a_handle_bounds_its_calls_in_flight())
            }),
            ("large_by_value_arguments_travel_by_reference", || {
                Box::pin(large_by_value_arguments_travel_by_reference())
            }),
            (
                "a_worker_forgets_actor_links_with_their_last_handle",
                || Box::pin(a_worker_forgets_actor_links_with_their_last_handle()),
            ),
            ("actor_calls_run_in_submission_order", || {
                Box::pin(actor_calls_run_in_submission_order())
            }),
            ("concurrent_actors_interleave_shared_calls", || {
                Box::pin(concurrent_actors_interleave_shared_calls())
            }),
            ("named_actors_are_found_by_name_and_type", || {
                Box::pin(named_actors_are_found_by_name_and_type())
            }),
            ("an_actor_restarts_then_dies_when_out_of_restarts", || {
                Box::pin(an_actor_restarts_then_dies_when_out_of_restarts())
            }),
            (
                "a_checkpointed_actor_comes_back_with_its_exact_state",
                || Box::pin(a_checkpointed_actor_comes_back_with_its_exact_state()),
            ),
            (
                "acknowledged_calls_survive_a_crash_between_checkpoints",
                || Box::pin(acknowledged_calls_survive_a_crash_between_checkpoints()),
            ),
            ("gpu_actors_get_distinct_device_ids", || {
                Box::pin(gpu_actors_get_distinct_device_ids())
            }),
            ("requests_no_node_can_satisfy_fail_at_once", || {
                Box::pin(requests_no_node_can_satisfy_fail_at_once())
            }),
            ("the_runtime_context_says_where_code_runs", || {
                Box::pin(the_runtime_context_says_where_code_runs())
            }),
            ("gets_with_a_timeout_name_the_object_and_its_task", || {
                Box::pin(gets_with_a_timeout_name_the_object_and_its_task())
            }),
            ("a_running_task_is_interrupted_at_its_next_await", || {
                Box::pin(cancel::a_running_task_is_interrupted_at_its_next_await())
            }),
            ("a_queued_task_is_dropped_before_it_runs", || {
                Box::pin(cancel::a_queued_task_is_dropped_before_it_runs())
            }),
            ("a_forced_cancel_kills_a_task_that_never_awaits", || {
                Box::pin(cancel::a_forced_cancel_kills_a_task_that_never_awaits())
            }),
            ("a_recursive_cancel_reaches_the_tasks_it_submitted", || {
                Box::pin(cancel::a_recursive_cancel_reaches_the_tasks_it_submitted())
            }),
            ("a_borrower_cancels_through_the_owner", || {
                Box::pin(cancel::a_borrower_cancels_through_the_owner())
            }),
            (
                "a_cancelled_actor_call_is_skipped_and_the_order_kept",
                || Box::pin(cancel::a_cancelled_actor_call_is_skipped_and_the_order_kept()),
            ),
            ("items_arrive_while_the_task_runs_with_backpressure", || {
                Box::pin(streams::items_arrive_while_the_task_runs_with_backpressure())
            }),
            (
                "a_sigkilled_producer_is_rerun_and_no_item_comes_twice",
                || Box::pin(streams::a_sigkilled_producer_is_rerun_and_no_item_comes_twice()),
            ),
            ("a_failing_producer_ends_its_stream_with_the_error", || {
                Box::pin(streams::a_failing_producer_ends_its_stream_with_the_error())
            }),
            ("large_items_travel_through_the_object_store", || {
                Box::pin(streams::large_items_travel_through_the_object_store())
            }),
            ("an_actor_method_streams_and_a_consumer_may_leave", || {
                Box::pin(streams::an_actor_method_streams_and_a_consumer_may_leave())
            }),
            ("multiple_returns_are_objects_of_their_own", || {
                Box::pin(streams::multiple_returns_are_objects_of_their_own())
            }),
            ("label_selectors_choose_nodes_by_their_labels", || {
                Box::pin(labels::label_selectors_choose_nodes_by_their_labels())
            }),
            ("a_capturing_placement_group_takes_in_child_tasks", || {
                Box::pin(placement::a_capturing_placement_group_takes_in_child_tasks())
            }),
            ("a_submitted_placement_group_waits_for_room", || {
                Box::pin(placement::a_submitted_placement_group_waits_for_room())
            }),
            ("concurrency_groups_bound_each_group_on_its_own", || {
                Box::pin(groups::concurrency_groups_bound_each_group_on_its_own())
            }),
            ("channels_carry_ordered_messages_between_processes", || {
                Box::pin(channels::channels_carry_ordered_messages_between_processes())
            }),
            ("a_full_channel_makes_the_sender_wait", || {
                Box::pin(channels::a_full_channel_makes_the_sender_wait())
            }),
            ("a_channel_whose_peer_died_is_an_error_not_a_hang", || {
                Box::pin(channels::a_channel_whose_peer_died_is_an_error_not_a_hang())
            }),
            ("channel_misuse_is_a_clear_error", || {
                Box::pin(channels::channel_misuse_is_a_clear_error())
            }),
            (
                "the_kv_store_is_shared_and_compare_and_set_loses_no_update",
                || Box::pin(kv::the_kv_store_is_shared_and_compare_and_set_loses_no_update()),
            ),
            ("a_sigkilled_host_brings_back_each_of_its_actors", || {
                Box::pin(async {
                    hosts::a_sigkilled_host_brings_back_each_of_its_actors(&scratch()).await
                })
            }),
            ("wait_returns_the_first_ready", || {
                Box::pin(wait_returns_the_first_ready())
            }),
            (
                "large_objects_go_through_the_shared_memory_store_and_spill",
                || Box::pin(large_objects_go_through_the_shared_memory_store_and_spill()),
            ),
            ("values_are_freed_with_their_last_reference", || {
                Box::pin(values_are_freed_with_their_last_reference())
            }),
            ("a_second_driver_joins_the_running_cluster", || {
                Box::pin(a_second_driver_joins_the_running_cluster())
            }),
            (
                "references_kept_or_passed_on_by_borrowers_stay_valid",
                || Box::pin(references_kept_or_passed_on_by_borrowers_stay_valid()),
            ),
            ("workers_exit_when_their_driver_is_killed", || {
                Box::pin(workers_exit_when_their_driver_is_killed())
            }),
        ];
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        let mut failed = 0;
        for (name, scenario) in scenarios {
            if filter.as_deref().is_some_and(|f| !name.contains(f)) {
                continue;
            }
            let started = Instant::now();
            let outcome = tokio::time::timeout(Duration::from_secs(120), scenario()).await;
            match outcome {
                Ok(Ok(())) => println!("test {name} ... ok ({:?})", started.elapsed()),
                Ok(Err(error)) => {
                    failed += 1;
                    println!("test {name} ... FAILED: {error:#}");
                }
                Err(_) => {
                    failed += 1;
                    println!("test {name} ... FAILED: timed out after 120 s");
                }
            }
        }
        let _ = std::fs::remove_dir_all(scratch());
        fleet::shutdown().await;
        if failed == 0 {
            println!("test result: ok");
            std::process::ExitCode::SUCCESS
        } else {
            println!("test result: FAILED ({failed} scenario(s))");
            std::process::ExitCode::FAILURE
        }
    })
}
