//! `fleet::cancel`: stops a task or an actor call (Ray's `ray.cancel`).
//!
//! The owner of a result (the process that submitted the task) decides, because only it
//! knows where the task is:
//! - **Not yet sent** (waiting for its arguments, a lease, or its actor): it is dropped, and
//!   its result becomes `Error::Cancelled`.
//! - **Running a remote function**: the worker is told; it drops the function's future at
//!   its next await point and answers "cancelled". With `force`, the worker's raylet kills
//!   the worker process (for code that never awaits); the task is not retried.
//! - **An actor call**: skipped if the actor has not started it (it is answered "cancelled"
//!   in its turn, so the caller's later calls keep their order); a call already running is
//!   not interrupted (the actor's state must stay whole). `force` is refused for actor
//!   calls: kill the actor instead.
//! - **Recursive** (the default): the tasks and calls the cancelled task submitted are
//!   cancelled too, by the worker that owns them.
//! - **Finished already**: nothing happens; the result stays.
//!
//! A process that holds a reference it does not own sends the request to the owner.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{oneshot, Notify};

use crate::context::{current, CoreWorker};
use crate::error::{Error, Result};
use crate::object_ref::ObjectRef;
use crate::submitter::Lease;

/// How [`cancel_with`] stops a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CancelOptions {
    /// Kill the worker running a remote function (its code may never reach an await
    /// point). Refused for actor calls.
    pub force: bool,
    /// Also cancel the tasks and actor calls the task submitted (default: true).
    pub recursive: bool,
}

impl Default for CancelOptions {
    fn default() -> Self {
        CancelOptions {
            force: false,
            recursive: true,
        }
    }
}

impl CancelOptions {
    /// Kill the worker running the remote function.
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }

    /// Whether the tasks it submitted are cancelled too.
    pub fn recursive(mut self, recursive: bool) -> Self {
        self.recursive = recursive;
        self
    }
}

/// Cancels the task or actor call whose result `object` is (recursively, without force).
/// Its result becomes `Error::Cancelled` unless it had finished. A reference made by `put`,
/// or a task that finished, is left alone.
pub async fn cancel<T>(object: &ObjectRef<T>) -> Result<()> {
    cancel_with(object, CancelOptions::default()).await
}

/// [`cancel`] with options (`force`, `recursive`).
pub async fn cancel_with<T>(object: &ObjectRef<T>, options: CancelOptions) -> Result<()> {
    let runtime = current()?;
    if object.owner() == runtime.address {
        return cancel_owned(&runtime, object.id(), options).await;
    }
    // Only the owner knows where its task is.
    let mut owner = runtime.worker_client(object.owner())?;
    owner
        .cancel_task(fleet_proto::runtime::CancelTaskRequest {
            task_id: String::new(),
            object_id: object.id().to_string(),
            force: options.force,
            recursive: options.recursive,
        })
        .await
        .map_err(|status| {
            Error::rpc(
                format!(
                    "asking the owner {} of object {} to cancel its task",
                    object.owner(),
                    object.id()
                ),
                &status,
            )
        })?;
    Ok(())
}

/// Where a task runs now: its worker, its id there, and (remote functions) the lease that
/// `force` ends.
#[derive(Clone, Debug)]
pub(crate) struct RunningAt {
    pub worker: String,
    pub task_id: String,
    pub lease: Option<Lease>,
}

#[derive(Default)]
struct State {
    requested: Option<CancelOptions>,
    at: Option<RunningAt>,
}

/// What a cancel request must do, decided under the lock (pure; unit-tested).
#[derive(Debug)]
enum Step {
    /// The task was not sent: wake its submitter, which drops it.
    Wake,
    /// It runs there: tell that worker (and kill it with `force`).
    Tell(RunningAt, CancelOptions),
    /// Already being cancelled the same way.
    Nothing,
}

/// A submitted task or actor call, registered by its result's id while the result is
/// pending, so that it can be cancelled.
pub(crate) struct Cancellable {
    object_id: String,
    /// The function or `Actor::method` (for the error).
    what: String,
    actor_call: bool,
    state: Mutex<State>,
    wake: Notify,
}

impl Cancellable {
    /// One not registered anywhere (a lineage re-run): never cancelled.
    pub(crate) fn unregistered(what: &str) -> Arc<Self> {
        Arc::new(Cancellable::new(String::new(), what.to_string(), false))
    }

    fn new(object_id: String, what: String, actor_call: bool) -> Self {
        Cancellable {
            object_id,
            what,
            actor_call,
            state: Mutex::default(),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(&self, options: CancelOptions) -> Step {
        let mut state = self.lock();
        let escalates = matches!(state.requested, Some(before) if options.force && !before.force);
        if state.requested.is_some() && !escalates {
            return Step::Nothing;
        }
        state.requested = Some(options);
        match &state.at {
            Some(at) => Step::Tell(at.clone(), options),
            None => Step::Wake,
        }
    }

    /// The task is about to be sent to `at`; false (and it must not be sent) when it was
    /// cancelled already.
    pub(crate) fn start(&self, at: RunningAt) -> bool {
        let mut state = self.lock();
        if state.requested.is_some() {
            return false;
        }
        state.at = Some(at);
        true
    }

    /// Its worker answered (or died); whether it was cancelled meanwhile.
    pub(crate) fn stop(&self) -> bool {
        let mut state = self.lock();
        state.at = None;
        state.requested.is_some()
    }

    /// Whether it was cancelled.
    pub(crate) fn is_requested(&self) -> bool {
        self.lock().requested.is_some()
    }

    /// Resolves once it is cancelled (for the waits before it is sent).
    pub(crate) async fn requested(&self) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_requested() {
                return;
            }
            notified.await;
        }
    }

    /// The error its result becomes.
    pub(crate) fn error(&self) -> Error {
        Error::Cancelled {
            task: self.what.clone(),
            object_id: self.object_id.clone(),
        }
    }

    /// Runs `wait` (a step before the task is sent) unless the task is cancelled first.
    pub(crate) async fn unless_cancelled<F: std::future::Future>(
        &self,
        wait: F,
    ) -> Result<F::Output> {
        tokio::select! {
            biased;
            _ = self.requested() => Err(self.error()),
            output = wait => Ok(output),
        }
    }
}

/// A pending result's registration; dropping it (the result is set) unregisters it.
pub(crate) struct Registration {
    cancel: Arc<Cancellable>,
    /// Other results of the same task it is also found by (its several return values).
    aliases: Vec<String>,
}

impl Registration {
    /// Registers the task or call whose result is `object_id` (submitted by the task this
    /// code runs in, if any: it is then cancelled with that task).
    pub(crate) fn new(
        runtime: &CoreWorker,
        object_id: &str,
        what: String,
        actor_call: bool,
    ) -> Self {
        let cancel = Arc::new(Cancellable::new(object_id.to_string(), what, actor_call));
        runtime
            .cancels
            .owned
            .insert(object_id.to_string(), cancel.clone());
        if let Some(parent) = crate::runtime_context::current_task_id() {
            runtime.cancels.note_child(&parent, object_id);
        }
        Registration {
            cancel,
            aliases: Vec::new(),
        }
    }

    /// Makes the task cancellable through `ids` too (each of its return values).
    pub(crate) fn also_by(mut self, runtime: &CoreWorker, ids: &[String]) -> Self {
        for id in ids {
            runtime
                .cancels
                .owned
                .insert(id.clone(), self.cancel.clone());
        }
        self.aliases.extend_from_slice(ids);
        self
    }

    pub(crate) fn cancellable(&self) -> &Arc<Cancellable> {
        &self.cancel
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(runtime) = crate::context::try_current() {
            runtime.cancels.owned.remove(&self.cancel.object_id);
            for alias in &self.aliases {
                runtime.cancels.owned.remove(alias);
            }
        }
    }
}

/// How long a worker waits for a cancelled function to stop before `force` kills it.
const FORCE_GRACE: Duration = Duration::from_millis(500);
/// Cancels of tasks not (yet) seen here are remembered this long: a task normally arrives
/// within milliseconds of its cancel, and one that finished before it never comes.
const EARLY_CANCEL_KEPT: Duration = Duration::from_secs(600);
/// Past this many remembered cancels, the expired ones are swept.
const EARLY_CANCEL_SWEEP: usize = 4096;

/// This process's cancellation state: as an owner (the results it waits for) and as a
/// worker (the tasks it runs).
#[derive(Default)]
pub(crate) struct Cancels {
    /// Pending results of tasks and calls this process submitted, by result id.
    owned: DashMap<String, Arc<Cancellable>>,
    /// The results each running task submitted (by its task id): cancelled with it.
    children: DashMap<String, Vec<String>>,
    /// Tasks cancelled here before they started, or before they arrived.
    early: DashMap<String, Instant>,
    /// Remote functions running here, by task id: their interrupt.
    running: DashMap<String, oneshot::Sender<()>>,
}

impl Cancels {
    /// Records that the running task `parent` submitted the task whose result is `child`.
    fn note_child(&self, parent: &str, child: &str) {
        let mut children = self.children.entry(parent.to_string()).or_default();
        // A long-running task submits without bound: drop the finished ones now and then
        // (amortized: when the list doubles).
        if children.len() >= 1024 && children.len().is_power_of_two() {
            children.retain(|c| self.owned.contains_key(c));
        }
        children.push(child.to_string());
    }

    /// The task `task_id` ended here: what it submitted is no longer cancelled with it.
    pub(crate) fn forget_children(&self, task_id: &str) {
        if !self.children.is_empty() {
            self.children.remove(task_id);
        }
    }

    /// Whether `task_id` was cancelled before it started here (forgetting that it was).
    pub(crate) fn take_early(&self, task_id: &str) -> bool {
        !self.early.is_empty() && self.early.remove(task_id).is_some()
    }

    /// Interrupts the remote function `task_id` running here, or remembers the cancel for
    /// when it (or the actor call) starts.
    fn interrupt_or_remember(&self, task_id: &str) {
        if let Some((_, interrupt)) = self.running.remove(task_id) {
            let _ = interrupt.send(());
            return;
        }
        if self.early.len() >= EARLY_CANCEL_SWEEP {
            self.early.retain(|_, at| at.elapsed() < EARLY_CANCEL_KEPT);
        }
        self.early.insert(task_id.to_string(), Instant::now());
    }

    /// Runs the remote function `task_id` until it finishes or is cancelled (its future is
    /// dropped at the await point where it stands).
    pub(crate) async fn interruptible<T, F>(
        &self,
        task_id: &str,
        work: F,
    ) -> std::result::Result<T, crate::registry::TaskError>
    where
        F: std::future::Future<Output = std::result::Result<T, crate::registry::TaskError>>,
    {
        let (interrupt, interrupted) = oneshot::channel();
        self.running.insert(task_id.to_string(), interrupt);
        // Cancelled between the caller's check and the registration above.
        if self.take_early(task_id) {
            self.running.remove(task_id);
            return Err(crate::registry::TaskError::cancelled());
        }
        let outcome = tokio::select! {
            biased;
            _ = interrupted => Err(crate::registry::TaskError::cancelled()),
            outcome = work => outcome,
        };
        self.running.remove(task_id);
        outcome
    }
}

/// Answers a `CancelTask` request: as the owner of `object_id`, or as the worker of
/// `task_id` (its children first, when recursive).
pub(crate) async fn on_request(
    runtime: &Arc<CoreWorker>,
    request: fleet_proto::runtime::CancelTaskRequest,
) -> Result<()> {
    let options = CancelOptions {
        force: request.force,
        recursive: request.recursive,
    };
    if !request.object_id.is_empty() {
        return cancel_owned(runtime, &request.object_id, options).await;
    }
    if options.recursive {
        let children = runtime
            .cancels
            .children
            .get(&request.task_id)
            .map(|c| c.clone())
            .unwrap_or_default();
        let cancels = children
            .iter()
            .map(|child| cancel_child(runtime, child, options));
        for outcome in futures::future::join_all(cancels).await {
            if let Err(error) = outcome {
                tracing::warn!(task = %request.task_id, %error, "cancelling a task it submitted failed");
            }
        }
    }
    runtime.cancels.interrupt_or_remember(&request.task_id);
    Ok(())
}

/// Cancels what a cancelled task submitted: `force` applies to its remote functions only
/// (its actor calls are cancelled without it).
async fn cancel_child(
    runtime: &Arc<CoreWorker>,
    child: &str,
    options: CancelOptions,
) -> Result<()> {
    let actor_call = runtime
        .cancels
        .owned
        .get(child)
        .is_some_and(|c| c.actor_call);
    let options = CancelOptions {
        force: options.force && !actor_call,
        ..options
    };
    cancel_owned(runtime, child, options).await
}

/// Cancels a task this process owns (by its result's id).
pub(crate) async fn cancel_owned(
    runtime: &Arc<CoreWorker>,
    object_id: &str,
    options: CancelOptions,
) -> Result<()> {
    let Some(cancel) = runtime.cancels.owned.get(object_id).map(|c| c.clone()) else {
        // Finished (or never a task's result): nothing to stop.
        return Ok(());
    };
    if options.force && cancel.actor_call {
        return Err(Error::InvalidArgument(format!(
            "cannot force-cancel {} (object {object_id}): an actor call is never interrupted by killing its process, which would take the actor with it; cancel without force (a call not yet started is skipped), or kill the actor with fleet::kill",
            cancel.what
        )));
    }
    match cancel.request(options) {
        Step::Nothing => Ok(()),
        Step::Wake => {
            cancel.wake.notify_waiters();
            Ok(())
        }
        Step::Tell(at, options) => {
            let told = tell_worker(runtime, &at, options);
            if !options.force {
                return told.await;
            }
            // Give the worker a moment to cancel what it submitted, then kill it.
            let _ = tokio::time::timeout(FORCE_GRACE, told).await;
            if let Some(lease) = &at.lease {
                runtime.leaser.return_lease(lease, true).await;
            }
            Ok(())
        }
    }
}

async fn tell_worker(runtime: &CoreWorker, at: &RunningAt, options: CancelOptions) -> Result<()> {
    let mut worker = runtime.worker_client(&at.worker)?;
    let request = fleet_proto::runtime::CancelTaskRequest {
        task_id: at.task_id.clone(),
        object_id: String::new(),
        force: options.force,
        recursive: options.recursive,
    };
    match worker.cancel_task(request).await {
        Ok(_) => Ok(()),
        // The worker is gone: the task's submitter sees that and, cancelled, does not retry.
        Err(status) if status.code() == tonic::Code::Unavailable => Ok(()),
        Err(status) => Err(Error::rpc(
            format!("asking worker {} to cancel task {}", at.worker, at.task_id),
            &status,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> RunningAt {
        RunningAt {
            worker: "w".into(),
            task_id: "t".into(),
            lease: None,
        }
    }

    #[test]
    fn a_task_not_sent_is_woken_and_never_starts() {
        let cancel = Cancellable::new("o".into(), "f".into(), false);
        assert!(matches!(
            cancel.request(CancelOptions::default()),
            Step::Wake
        ));
        assert!(!cancel.start(at()), "a cancelled task must not be sent");
        // Asking again changes nothing.
        assert!(matches!(
            cancel.request(CancelOptions::default()),
            Step::Nothing
        ));
    }

    #[test]
    fn a_running_task_is_told_and_may_be_escalated_to_force_once() {
        let cancel = Cancellable::new("o".into(), "f".into(), false);
        assert!(cancel.start(at()));
        assert!(matches!(
            cancel.request(CancelOptions::default()),
            Step::Tell(_, CancelOptions { force: false, .. })
        ));
        assert!(matches!(
            cancel.request(CancelOptions::default().force()),
            Step::Tell(_, CancelOptions { force: true, .. })
        ));
        assert!(matches!(
            cancel.request(CancelOptions::default().force()),
            Step::Nothing
        ));
        assert!(cancel.stop(), "the submitter learns it was cancelled");
    }

    #[test]
    fn a_task_finished_before_the_request_reports_no_cancel() {
        let cancel = Cancellable::new("o".into(), "f".into(), false);
        assert!(cancel.start(at()));
        assert!(!cancel.stop());
        assert!(!cancel.is_requested());
    }
}
