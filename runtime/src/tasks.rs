//! The background tasks of this process's core worker. Every one is spawned through the
//! [`TaskOwner`], which tracks it and can abort it: `fleet::shutdown()` ends them all and
//! waits for them, so nothing of Fleet's keeps running (or keeps a connection open) after
//! it returns.
//!
//! Cheap per task, because a call spawns one: an abort handle in a sharded map (no shared
//! waker list to register in, as a cancellation token's `cancelled()` would), removed when
//! the task ends. Long-lived loops that must end cleanly watch [`TaskOwner::token`] instead.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Owns the core worker's background tasks.
#[derive(Clone, Debug)]
pub(crate) struct TaskOwner {
    token: CancellationToken,
    tracker: TaskTracker,
    handle: tokio::runtime::Handle,
    running: Arc<DashMap<u64, AbortHandle>>,
    next_id: Arc<AtomicU64>,
}

/// Runs its closure when dropped unless disarmed: a task aborted before it finished answers
/// whoever waits for its result.
struct AnswerOnDrop<C: FnOnce()>(Option<C>);

impl<C: FnOnce()> Drop for AnswerOnDrop<C> {
    fn drop(&mut self) {
        if let Some(answer) = self.0.take() {
            answer();
        }
    }
}

impl TaskOwner {
    /// An owner spawning on the current Tokio runtime.
    pub(crate) fn new() -> Self {
        TaskOwner {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            handle: tokio::runtime::Handle::current(),
            running: Arc::default(),
            next_id: Arc::default(),
        }
    }

    /// Runs `future` until it finishes or the owner shuts down (then it is dropped where it
    /// stands: for work that holds nothing a caller waits on).
    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_answering(future, || {});
    }

    /// Like [`spawn`](Self::spawn), but when the owner shuts down first `on_shutdown` runs
    /// (to answer whoever waits for the future's result).
    pub(crate) fn spawn_answering<F, C>(&self, future: F, on_shutdown: C)
    where
        F: Future<Output = ()> + Send + 'static,
        C: FnOnce() + Send + 'static,
    {
        if self.token.is_cancelled() {
            on_shutdown();
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let running = self.running.clone();
        let answer = AnswerOnDrop(Some(on_shutdown));
        // On the heap once: the wrappers below then move a pointer, not the future's whole
        // state (a call's is large; moving it showed as a tenth of a call's cost).
        let future = Box::pin(future);
        let task = self.tracker.spawn_on(
            async move {
                let mut answer = answer;
                future.await;
                answer.0 = None;
                finished.store(true, Ordering::SeqCst);
                running.remove(&id);
            },
            &self.handle,
        );
        self.running.insert(id, task.abort_handle());
        // Finished before it was registered: its own removal came first.
        if done.load(Ordering::SeqCst) {
            self.running.remove(&id);
        }
        // Shut down meanwhile: the sweep may have missed it.
        if self.token.is_cancelled() {
            task.abort();
        }
    }

    /// A token cancelled at shutdown, for tasks that end themselves cleanly.
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Tracks a task that watches [`token`](Self::token) itself.
    pub(crate) fn spawn_watching<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn_on(future, &self.handle);
    }

    /// Ends every task (those watching the token end themselves) and waits up to `grace`
    /// for them; returns how many had not ended.
    pub(crate) async fn shutdown(&self, grace: Duration) -> usize {
        self.token.cancel();
        self.tracker.close();
        let ids: Vec<u64> = self.running.iter().map(|e| *e.key()).collect();
        for id in ids {
            if let Some((_, task)) = self.running.remove(&id) {
                task.abort();
            }
        }
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
        self.tracker.len()
    }

    /// Tasks running now (for tests and diagnostics).
    pub(crate) fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_ends_every_task_and_answers_the_waiting_ones() {
        let owner = TaskOwner::new();
        owner.spawn(std::future::pending());
        let answered = Arc::new(AtomicBool::new(false));
        let flag = answered.clone();
        owner.spawn_answering(std::future::pending(), move || {
            flag.store(true, Ordering::SeqCst)
        });
        let token = owner.token();
        owner.spawn_watching(async move { token.cancelled().await });
        // A task that finishes leaves nothing registered and answers nobody.
        let quiet = Arc::new(AtomicBool::new(false));
        let flag = quiet.clone();
        owner.spawn_answering(async {}, move || flag.store(true, Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(owner.running(), 3);
        assert_eq!(owner.running.len(), 2);
        assert_eq!(owner.shutdown(Duration::from_secs(5)).await, 0);
        assert!(answered.load(Ordering::SeqCst));
        assert!(!quiet.load(Ordering::SeqCst));
        // Spawned after shutdown: answered at once, never run.
        let late = Arc::new(AtomicBool::new(false));
        let flag = late.clone();
        owner.spawn_answering(std::future::pending(), move || {
            flag.store(true, Ordering::SeqCst)
        });
        assert!(late.load(Ordering::SeqCst));
        assert_eq!(owner.shutdown(Duration::from_secs(5)).await, 0);
    }
}
