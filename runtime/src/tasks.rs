//! The background tasks of this process's core worker. Every one is spawned through the
//! [`TaskOwner`], which holds a cancellation token and a tracker: `fleet::shutdown()`
//! cancels them all and waits for them, so nothing of Fleet's keeps running (or keeps a
//! connection open) after it returns.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Owns the core worker's background tasks.
#[derive(Clone, Debug)]
pub(crate) struct TaskOwner {
    token: CancellationToken,
    tracker: TaskTracker,
    handle: tokio::runtime::Handle,
}

impl TaskOwner {
    /// An owner spawning on the current Tokio runtime.
    pub(crate) fn new() -> Self {
        TaskOwner {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// Runs `future` until it finishes or the owner shuts down (then it is dropped where it
    /// stands: for work that holds nothing a caller waits on).
    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn_on(
            async move {
                tokio::select! {
                    biased;
                    _ = token.cancelled() => {}
                    _ = future => {}
                }
            },
            &self.handle,
        );
    }

    /// Like [`spawn`](Self::spawn), but when the owner shuts down first `on_shutdown` runs
    /// (to answer whoever waits for the future's result).
    pub(crate) fn spawn_answering<F, C>(&self, future: F, on_shutdown: C)
    where
        F: Future<Output = ()> + Send + 'static,
        C: FnOnce() + Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn_on(
            async move {
                tokio::select! {
                    biased;
                    _ = token.cancelled() => on_shutdown(),
                    _ = future => {}
                }
            },
            &self.handle,
        );
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

    /// Cancels every task and waits up to `grace` for them to end; returns how many had not.
    pub(crate) async fn shutdown(&self, grace: Duration) -> usize {
        self.token.cancel();
        self.tracker.close();
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
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

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
        assert_eq!(owner.running(), 3);
        assert_eq!(owner.shutdown(Duration::from_secs(5)).await, 0);
        assert!(answered.load(Ordering::SeqCst));
        // Spawned after shutdown: ends at once.
        owner.spawn(std::future::pending());
        assert_eq!(owner.shutdown(Duration::from_secs(5)).await, 0);
    }
}
