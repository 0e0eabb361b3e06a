//! `fleet::context()`: what code running in a task or an actor method can ask about where
//! and as what it runs (Ray's `get_runtime_context()`).

use crate::error::Result;

/// Where and as what the calling code runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeContext {
    /// The job.
    pub job_id: String,
    /// The node this process runs on.
    pub node_id: String,
    /// This process (`driver-…` or the worker id its raylet gave).
    pub worker_id: String,
    /// The task or actor call running now (none in a driver's own code).
    pub task_id: Option<String>,
    /// The actor whose constructor or method runs now.
    pub actor_id: Option<String>,
    /// The GPUs this process may use.
    pub gpu_ids: Vec<u32>,
    /// How many times the current actor was restarted (0: its first instance).
    pub actor_restarts: u32,
}

impl RuntimeContext {
    /// Whether the current actor is a restarted instance (Ray's
    /// `was_current_actor_reconstructed`).
    pub fn was_current_actor_reconstructed(&self) -> bool {
        self.actor_restarts > 0
    }
}

/// What the executor knows of the code it runs now.
#[derive(Clone, Debug)]
pub(crate) struct Running {
    /// The job of the task (a shared worker serves several jobs over its life).
    pub job_id: String,
    pub task_id: String,
    pub actor: Option<(String, u32)>,
    /// A streaming task's caller, where its `Emitter` sends items.
    pub stream: Option<crate::stream::StreamTarget>,
    /// The placement group that captures what this code submits (see
    /// `TaskOptions::capture_child_tasks`).
    pub capture_group: Option<String>,
}

tokio::task_local! {
    static RUNNING: Running;
}

/// Runs `future` as `running` (what `fleet::context()` reports inside it). Code that spawns
/// tasks of its own from there does not carry it along. When it ends, the tasks it submitted
/// are no longer cancelled with it.
pub(crate) async fn run_as<F: std::future::Future>(running: Running, future: F) -> F::Output {
    let task_id = running.task_id.clone();
    let output = RUNNING.scope(running, future).await;
    if let Some(runtime) = crate::context::try_current() {
        runtime.cancels.forget_children(&task_id);
    }
    output
}

/// Where the streaming task the calling code runs in sends its items, if it is one.
pub(crate) fn current_stream() -> Option<crate::stream::StreamTarget> {
    RUNNING
        .try_with(|running| running.stream.clone())
        .ok()
        .flatten()
}

/// The placement group that captures the tasks and actors the calling code submits.
pub(crate) fn captured_group() -> Option<String> {
    RUNNING
        .try_with(|running| running.capture_group.clone())
        .ok()
        .flatten()
}

/// The task or actor call the calling code runs in, if any.
pub(crate) fn current_task_id() -> Option<String> {
    RUNNING.try_with(|running| running.task_id.clone()).ok()
}

/// Where and as what the calling code runs.
pub fn context() -> Result<RuntimeContext> {
    let runtime = crate::context::current()?;
    let running = RUNNING.try_with(Running::clone).ok();
    let (job_id, task_id, actor) = match running {
        Some(running) if !running.job_id.is_empty() => {
            (running.job_id, Some(running.task_id), running.actor)
        }
        Some(running) => (runtime.job_id.clone(), Some(running.task_id), running.actor),
        None => (runtime.job_id.clone(), None, None),
    };
    Ok(RuntimeContext {
        job_id,
        node_id: runtime.node_id.clone(),
        worker_id: runtime.worker_id.clone(),
        task_id,
        actor_restarts: actor.as_ref().map_or(0, |(_, restarts)| *restarts),
        actor_id: actor.map(|(id, _)| id),
        gpu_ids: runtime.gpu_ids.clone(),
    })
}
