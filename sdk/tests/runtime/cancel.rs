//! `fleet::cancel` on real workers: queued and running tasks, forced kills, what a task
//! submitted (recursive), actor calls (skipped in order), and a borrower asking the owner.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use fleet::{CancelOptions, Error, ObjectRef};

/// Writes a file when dropped: shows that a task's future was dropped (interrupted).
struct MarkOnDrop(PathBuf);

impl Drop for MarkOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, b"dropped");
    }
}

/// Writes `started` (its pid), then awaits for `ms`; marks `dropped` if interrupted.
#[fleet::remote]
async fn sleep_awaiting(dir: String, ms: u64) -> u64 {
    let dir = PathBuf::from(dir);
    let _ = std::fs::write(dir.join("started"), std::process::id().to_string());
    let _guard = MarkOnDrop(dir.join("dropped"));
    tokio::time::sleep(Duration::from_millis(ms)).await;
    std::mem::forget(_guard);
    ms
}

/// Blocks its thread (never awaits) for `ms`, after writing its pid.
#[fleet::remote]
fn spin_blocking(dir: String, ms: u64) -> u64 {
    let _ = std::fs::write(
        Path::new(&dir).join("started"),
        std::process::id().to_string(),
    );
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Submits `sleep_awaiting` into `child_dir` and waits for it.
#[fleet::remote]
async fn parent_of_sleeper(child_dir: String) -> Result<u64, String> {
    sleep_awaiting::remote(child_dir, 60_000u64)
        .await
        .map_err(|e| e.to_string())
}

/// Cancels the task behind a reference it borrowed (its owner is the driver).
#[fleet::remote]
async fn cancel_borrowed(refs: Vec<ObjectRef<u64>>) -> Result<usize, String> {
    for r in &refs {
        fleet::cancel(r).await.map_err(|e| e.to_string())?;
    }
    Ok(refs.len())
}

#[fleet::actor]
pub struct Recorder {
    seen: Vec<u64>,
}

#[fleet::actor]
impl Recorder {
    pub fn new() -> Self {
        Recorder { seen: Vec::new() }
    }

    pub fn hold(&mut self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    pub fn record(&mut self, value: u64) -> u64 {
        self.seen.push(value);
        value
    }

    pub fn seen(&self) -> Vec<u64> {
        self.seen.clone()
    }
}

fn fresh_dir(name: &str) -> Result<PathBuf> {
    let dir = super::scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

async fn wait_for_file(path: &Path, within: Duration) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Ok(text);
        }
        ensure!(
            Instant::now() < deadline,
            "{} did not appear within {within:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expect_cancelled<T: std::fmt::Debug>(outcome: fleet::Result<T>, object: &str) -> Result<()> {
    match outcome {
        Err(Error::Cancelled { object_id, .. }) if object_id == object => Ok(()),
        other => Err(anyhow!("expected Cancelled for {object}, got {other:?}")),
    }
}

fn process_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid.trim()).exists()
}

pub async fn a_running_task_is_interrupted_at_its_next_await() -> Result<()> {
    let dir = fresh_dir("cancel-running")?;
    let sleeper = sleep_awaiting::remote(dir.to_string_lossy().to_string(), 60_000u64);
    let pid = wait_for_file(&dir.join("started"), Duration::from_secs(30)).await?;
    let asked = Instant::now();
    fleet::cancel(&sleeper).await?;
    expect_cancelled(
        fleet::get_timeout(&sleeper, Duration::from_secs(10)).await,
        sleeper.id(),
    )?;
    wait_for_file(&dir.join("dropped"), Duration::from_secs(5)).await?;
    println!(
        "  running task cancelled in {:?}; its future was dropped",
        asked.elapsed()
    );
    // Interrupted, not killed: its worker lives on and runs the next task.
    ensure!(
        process_alive(&pid),
        "a plain cancel must not kill the worker"
    );
    ensure!(super::double::remote(21u64).await? == 42);
    // Cancelling again, or a task that finished, changes nothing.
    fleet::cancel(&sleeper).await?;
    let done = super::double::remote(4u64);
    ensure!(done.get().await? == 8);
    fleet::cancel(&done).await?;
    ensure!(done.get().await? == 8, "a finished result stays");
    let put = fleet::put(&7u64)?;
    fleet::cancel(&put).await?;
    ensure!(put.get().await? == 7);
    Ok(())
}

pub async fn a_queued_task_is_dropped_before_it_runs() -> Result<()> {
    let blocker_dir = fresh_dir("cancel-queued-blocker")?;
    // `waiting` cannot start before `blocker` is done (its argument).
    let blocker = sleep_awaiting::remote(blocker_dir.to_string_lossy().to_string(), 60_000u64);
    let waiting = super::add::remote(&blocker, 1u64);
    fleet::cancel(&waiting).await?;
    expect_cancelled(
        fleet::get_timeout(&waiting, Duration::from_secs(5)).await,
        waiting.id(),
    )?;
    fleet::cancel(&blocker).await?;
    expect_cancelled(
        fleet::get_timeout(&blocker, Duration::from_secs(10)).await,
        blocker.id(),
    )?;
    Ok(())
}

pub async fn a_forced_cancel_kills_a_task_that_never_awaits() -> Result<()> {
    let dir = fresh_dir("cancel-force")?;
    let spinner = spin_blocking::remote(dir.to_string_lossy().to_string(), 60_000u64);
    let pid = wait_for_file(&dir.join("started"), Duration::from_secs(30)).await?;
    let asked = Instant::now();
    fleet::cancel_with(&spinner, CancelOptions::default().force()).await?;
    expect_cancelled(
        fleet::get_timeout(&spinner, Duration::from_secs(10)).await,
        spinner.id(),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(&pid) {
        ensure!(
            Instant::now() < deadline,
            "worker {pid} still alive after a forced cancel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "  forced cancel: worker {} killed, result Cancelled in {:?} (not retried)",
        pid.trim(),
        asked.elapsed()
    );
    ensure!(super::double::remote(5u64).await? == 10);
    Ok(())
}

pub async fn a_recursive_cancel_reaches_the_tasks_it_submitted() -> Result<()> {
    let child_dir = fresh_dir("cancel-child")?;
    let parent = parent_of_sleeper::remote(child_dir.to_string_lossy().to_string());
    wait_for_file(&child_dir.join("started"), Duration::from_secs(30)).await?;
    fleet::cancel(&parent).await?;
    expect_cancelled(
        fleet::get_timeout(&parent, Duration::from_secs(10)).await,
        parent.id(),
    )?;
    // The child, owned by the parent's worker, was cancelled by it: its future dropped.
    wait_for_file(&child_dir.join("dropped"), Duration::from_secs(10))
        .await
        .context("the child task was not interrupted")?;
    Ok(())
}

pub async fn a_borrower_cancels_through_the_owner() -> Result<()> {
    let dir = fresh_dir("cancel-borrower")?;
    let sleeper = sleep_awaiting::remote(dir.to_string_lossy().to_string(), 60_000u64);
    wait_for_file(&dir.join("started"), Duration::from_secs(30)).await?;
    let asked = cancel_borrowed::remote(vec![sleeper.clone()]);
    ensure!(asked.get().await? == 1);
    expect_cancelled(
        fleet::get_timeout(&sleeper, Duration::from_secs(10)).await,
        sleeper.id(),
    )?;
    Ok(())
}

pub async fn a_cancelled_actor_call_is_skipped_and_the_order_kept() -> Result<()> {
    let recorder = Recorder::remote().spawn().await?;
    let hold = recorder.hold(1_500u64);
    let first = recorder.record(1u64);
    let second = recorder.record(2u64);
    let third = recorder.record(3u64);
    // Actor calls are never killed.
    match fleet::cancel_with(&second, CancelOptions::default().force()).await {
        Err(Error::InvalidArgument(message)) if message.contains("fleet::kill") => {}
        other => return Err(anyhow!("force on an actor call: {other:?}")),
    }
    fleet::cancel(&second).await?;
    ensure!(hold.get().await? == 1_500);
    ensure!(first.get().await? == 1);
    expect_cancelled(second.get().await, second.id())?;
    ensure!(third.get().await? == 3);
    let seen = recorder.seen().get().await?;
    ensure!(seen == vec![1, 3], "the actor ran {seen:?}");
    // The handle goes on: calls after a cancelled one keep running in order.
    ensure!(recorder.record(4u64).get().await? == 4);
    ensure!(recorder.seen().get().await? == vec![1, 3, 4]);
    recorder.raw().kill().await?;
    Ok(())
}
