//! Streaming returns (Ray's generators): a remote function or actor method that takes a
//! `fleet::Emitter<T>` sends items as it makes them; its caller reads them, in order, from
//! an [`ObjectRefStream<T>`] while the task still runs.
//!
//! - **Each item is an object** owned by the caller (`TASK_ID.item.N`): small ones in its
//!   memory, large ones in the producer node's object store; each is freed with its last
//!   reference.
//! - **Backpressure**: the owner answers an item once at most [`STREAM_WINDOW`] items are
//!   waiting unread; until then `emit` waits, so a slow consumer slows the producer and
//!   memory stays bounded.
//! - **Failures**: a producer whose worker dies is re-run (the task's `max_retries`, the
//!   actor's `max_task_retries`); it sends its items from the first again and the owner
//!   keeps the first copy of each, so no item is delivered twice (the producer must make the
//!   same items, as for Ray's lineage). When the retries are spent, or the producer returns
//!   an error or panics, the stream's last item is that error.
//! - **A consumer that goes away** (drops the stream, cancels the task, dies) makes the
//!   producer's next `emit` fail with `Error::StreamClosed`, so it can stop.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use fleet_proto::runtime::{stream_item, StreamItem, StreamItemReply};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

use crate::context::{current, CoreWorker};
use crate::error::{Error, Result};
use crate::object_ref::{ObjectRef, Stored};
use crate::plasma::INLINE_LIMIT;
use fleet_raylet::object_store::ObjectId;

/// Items a stream holds unread; the producer's next `emit` waits until one is read.
pub const STREAM_WINDOW: u64 = 64;

/// The id of a streaming task's item `index`.
fn item_id(task_id: &str, index: u64) -> String {
    format!("{task_id}.item.{index}")
}

#[derive(Default)]
struct Progress {
    /// Items stored so far (the next index expected).
    received: u64,
    /// Items handed to the consumer.
    consumed: u64,
    /// How the task ended, once it did.
    end: Option<Result<()>>,
    /// The consumer dropped the stream.
    closed: bool,
    waker: Option<Waker>,
}

/// How a stream's items are taken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A streaming task: items are read one by one, at most a window ahead.
    Stream,
    /// A task with several return values: the caller already holds a reference to each
    /// (their slots exist), so no window applies, and an item nobody holds is freed.
    Returns,
}

/// The owner's side of one stream: what arrived, what was read, how it ended.
pub(crate) struct StreamState {
    mode: Mode,
    progress: Mutex<Progress>,
    /// Producers waiting for room (the consumer read, or left).
    room: Notify,
}

impl StreamState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The task ended (its reply came, or its retries are spent).
    pub(crate) fn end(&self, outcome: Result<()>) {
        let waker = {
            let mut progress = self.lock();
            if progress.end.is_none() {
                progress.end = Some(outcome);
            }
            progress.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether the consumer can take no more items (it left).
    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Unread items are within the window, or the consumer left.
    async fn wait_for_room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let progress = self.lock();
                if self.mode == Mode::Returns
                    || progress.closed
                    || progress.received - progress.consumed <= STREAM_WINDOW
                {
                    return;
                }
            }
            notified.await;
        }
    }
}

/// The decision for an arriving item (pure; unit-tested).
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// The next item: store it.
    Store,
    /// A re-run's copy of an item already stored: keep the first.
    Duplicate,
    /// An item after a gap (a producer bug or a corrupt request).
    Gap { expected: u64 },
    /// Nobody reads any more.
    Closed,
}

fn arrival(progress: &Progress, index: u64) -> Arrival {
    if progress.closed || progress.end.is_some() {
        Arrival::Closed
    } else if index < progress.received {
        Arrival::Duplicate
    } else if index > progress.received {
        Arrival::Gap {
            expected: progress.received,
        }
    } else {
        Arrival::Store
    }
}

/// Registers a stream for the task `task_id` this process submits.
pub(crate) fn open(runtime: &CoreWorker, task_id: &str) -> Arc<StreamState> {
    open_as(runtime, task_id, Mode::Stream)
}

fn open_as(runtime: &CoreWorker, task_id: &str, mode: Mode) -> Arc<StreamState> {
    let state = Arc::new(StreamState {
        mode,
        progress: Mutex::default(),
        room: Notify::new(),
    });
    runtime.streams.insert(task_id.to_string(), state.clone());
    state
}

/// Submits a call of a remote function with `count` return values (`num_returns`): a
/// reference to each, in order, each freed on its own. The task sends them as items of a
/// stream; one not sent (the task failed) becomes the task's error.
pub fn submit_with_returns(
    function: &'static str,
    args: Vec<crate::object_ref::Arg>,
    mut options: crate::submitter::TaskOptions,
    count: usize,
) -> Returns {
    options.apply_capture();
    let runtime = match current() {
        Ok(runtime) => runtime,
        Err(_) => {
            return Returns {
                refs: (0..count)
                    .map(|i| ObjectRef::new(format!("uninitialized.{i}"), String::new()))
                    .collect(),
            }
        }
    };
    let task_id = crate::ids::new_id("task");
    let ids: Vec<String> = (0..count as u64).map(|i| item_id(&task_id, i)).collect();
    for id in &ids {
        runtime.store.slot(id);
    }
    let refs = ids
        .iter()
        .map(|id| ObjectRef::new(id.clone(), runtime.address.clone()))
        .collect();
    let state = open_as(&runtime, &task_id, Mode::Returns);
    let ids_for_cancel = ids.clone();
    let on_end = {
        let runtime = runtime.clone();
        let task_id = task_id.clone();
        move |outcome: Result<()>| {
            runtime.streams.remove(&task_id);
            let sent = state.lock().received;
            // Values never sent: the task's failure, or (it ended without sending them) a
            // mismatch between the declaration and what the function returned.
            let missing = Err(outcome.err().unwrap_or_else(|| {
                Error::Internal(format!(
                    "{function} sent {sent} of its {count} return values"
                ))
            }));
            for id in ids.iter().skip(sent as usize) {
                runtime.set_result(id, missing.clone());
            }
        }
    };
    let aliases = ids_for_cancel;
    crate::submitter::spawn_streaming(
        &runtime,
        (task_id, aliases),
        function,
        args,
        options,
        on_end,
    );
    Returns { refs }
}

/// The references to a task's return values, taken in order by generated code.
pub struct Returns {
    refs: Vec<ObjectRef<()>>,
}

impl Returns {
    /// The next return value's reference, typed.
    pub fn take<T>(&mut self) -> ObjectRef<T> {
        if self.refs.is_empty() {
            return ObjectRef::new("missing-return".to_string(), String::new());
        }
        self.refs.remove(0).retype()
    }
}

/// The owner's answer to a `ReportStreamItem`.
pub(crate) async fn on_item(
    runtime: &Arc<CoreWorker>,
    item: StreamItem,
) -> Result<StreamItemReply> {
    let closed = StreamItemReply { closed: true };
    let value = match item.value {
        Some(stream_item::Value::Inline(bytes)) => Stored::Inline(Arc::new(bytes)),
        Some(stream_item::Value::StoredId(id)) => {
            crate::submitter::stored_id(&id, &item.stored_at)?
        }
        None => {
            return Err(Error::InvalidArgument(format!(
                "item {} of stream {} has no value",
                item.index, item.task_id
            )))
        }
    };
    let id = item_id(&item.task_id, item.index);
    // An item nobody will read: its stored copy is freed here, or nothing would.
    let discard = |value: Stored| {
        if let Stored::Plasma(..) = &value {
            runtime.free(&id, value);
        }
    };
    let Some(state) = runtime.streams.get(&item.task_id).map(|s| s.clone()) else {
        // Dropped by its consumer (or never opened here).
        discard(value);
        return Ok(closed);
    };
    let waker = {
        let mut progress = state.lock();
        match arrival(&progress, item.index) {
            Arrival::Closed => {
                drop(progress);
                discard(value);
                return Ok(closed);
            }
            Arrival::Duplicate => {
                drop(progress);
                // A re-run's copy: the first one stays.
                discard(value);
                return Ok(StreamItemReply { closed: false });
            }
            Arrival::Gap { expected } => {
                return Err(Error::InvalidArgument(format!(
                    "stream {}: item {} arrived while item {expected} was expected",
                    item.task_id, item.index
                )))
            }
            Arrival::Store => {
                match state.mode {
                    Mode::Stream => runtime.store.set_stored(&id, Ok(value)),
                    // The caller may have dropped this one already: then it is freed.
                    Mode::Returns => runtime.set_result(&id, Ok(value)),
                }
                progress.received += 1;
                progress.waker.take()
            }
        }
    };
    if let Some(waker) = waker {
        waker.wake();
    }
    state.wait_for_room().await;
    Ok(StreamItemReply {
        closed: state.is_closed(),
    })
}

/// The items of a streaming task or actor call, in the order they were made; each is a
/// reference to await. Ends after the last item; a failed producer's error is the last
/// item. Read it with `next().await` (or as a `futures::Stream`).
pub struct ObjectRefStream<T> {
    runtime: Option<Arc<CoreWorker>>,
    state: Arc<StreamState>,
    task_id: String,
    /// What produces it (for errors).
    what: String,
    next: u64,
    error_given: bool,
    _type: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ObjectRefStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRefStream({} of {})", self.task_id, self.what)
    }
}

impl<T> ObjectRefStream<T> {
    pub(crate) fn new(
        runtime: Option<Arc<CoreWorker>>,
        state: Arc<StreamState>,
        task_id: String,
        what: String,
    ) -> Self {
        ObjectRefStream {
            runtime,
            state,
            task_id,
            what,
            next: 0,
            error_given: false,
            _type: PhantomData,
        }
    }

    /// A stream that fails at once (Fleet is not initialized).
    pub(crate) fn failed(error: Error, what: &str) -> Self {
        let state = Arc::new(StreamState {
            mode: Mode::Stream,
            progress: Mutex::default(),
            room: Notify::new(),
        });
        state.end(Err(error));
        ObjectRefStream::new(None, state, String::new(), what.to_string())
    }

    /// The producing task's id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Items read so far.
    pub fn items_read(&self) -> u64 {
        self.next
    }

    /// The next item's reference; `None` after the last. A producer's failure comes as
    /// one `Err` item, then the end.
    pub async fn next(&mut self) -> Option<Result<ObjectRef<T>>> {
        futures::StreamExt::next(self).await
    }

    /// Cancels the producing task (see `fleet::cancel`); the stream then ends with
    /// `Error::Cancelled` after the items that arrived before.
    pub async fn cancel(&self) -> Result<()> {
        let runtime = current()?;
        crate::cancel::cancel_owned(
            &runtime,
            &format!("{}.ret", self.task_id),
            crate::cancel::CancelOptions::default(),
        )
        .await
    }
}

impl<T: DeserializeOwned> ObjectRefStream<T> {
    /// The next item's value (waiting for it); `None` after the last.
    pub async fn next_value(&mut self) -> Option<Result<T>> {
        match self.next().await? {
            Ok(item) => Some(item.get().await),
            Err(error) => Some(Err(error)),
        }
    }

    /// Every remaining item's value, in order (the first error ends it).
    pub async fn collect_values(mut self) -> Result<Vec<T>> {
        let mut values = Vec::new();
        while let Some(value) = self.next_value().await {
            values.push(value?);
        }
        Ok(values)
    }
}

impl<T> futures::Stream for ObjectRefStream<T> {
    type Item = Result<ObjectRef<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut progress = this.state.lock();
        if this.next < progress.received {
            let index = this.next;
            this.next += 1;
            progress.consumed = this.next;
            drop(progress);
            this.state.room.notify_waiters();
            let owner = this
                .runtime
                .as_ref()
                .map(|r| r.address.clone())
                .unwrap_or_default();
            return Poll::Ready(Some(Ok(ObjectRef::new(
                item_id(&this.task_id, index),
                owner,
            ))));
        }
        match &progress.end {
            Some(Err(error)) if !this.error_given => {
                this.error_given = true;
                Poll::Ready(Some(Err(error.clone())))
            }
            Some(_) => Poll::Ready(None),
            None => {
                progress.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for ObjectRefStream<T> {
    fn drop(&mut self) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        let unread = {
            let mut progress = self.state.lock();
            progress.closed = true;
            self.next..progress.received
        };
        self.state.room.notify_waiters();
        runtime.streams.remove(&self.task_id);
        // Items that arrived but were never handed out have no reference to free them.
        for index in unread {
            let id = item_id(&self.task_id, index);
            if let Some(stored) = runtime.store.remove(&id) {
                runtime.free(&id, stored);
            }
        }
    }
}

/// Where a streaming task running here sends its items.
#[derive(Clone, Debug)]
pub(crate) struct StreamTarget {
    pub owner: String,
    pub task_id: String,
}

/// Sends a streaming task's items to its caller. The function or method takes it as an
/// argument (`out: fleet::Emitter<T>`); the caller passes nothing for it and gets an
/// [`ObjectRefStream<T>`].
pub struct Emitter<T> {
    target: StreamTarget,
    what: String,
    next: u64,
    _type: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for Emitter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Emitter({} of {})", self.target.task_id, self.what)
    }
}

impl<T: Serialize> Emitter<T> {
    /// Sends the next item; waits while the caller has [`STREAM_WINDOW`] items unread.
    /// `Error::StreamClosed` when the caller is gone: stop producing.
    pub async fn emit(&mut self, item: T) -> Result<()> {
        let bytes = crate::codec::encode(&item, &format!("an item of {}", self.what))?;
        self.emit_encoded(bytes).await
    }

    /// Items sent so far.
    pub fn emitted(&self) -> u64 {
        self.next
    }
}

impl<T> Emitter<T> {
    async fn emit_encoded(&mut self, bytes: Vec<u8>) -> Result<()> {
        let runtime = current()?;
        let (value, stored_at) = if bytes.len() >= INLINE_LIMIT {
            let id = ObjectId::random();
            runtime.plasma.put(id, &bytes).await?;
            (
                stream_item::Value::StoredId(id.to_string()),
                runtime.raylet_address.clone(),
            )
        } else {
            (stream_item::Value::Inline(bytes), String::new())
        };
        let request = StreamItem {
            task_id: self.target.task_id.clone(),
            index: self.next,
            value: Some(value),
            stored_at,
        };
        let closed = |cause: String| Error::StreamClosed {
            task: self.what.clone(),
            cause,
        };
        let reply = if self.target.owner == runtime.address {
            on_item(&runtime, request).await?
        } else {
            let mut owner = runtime.worker_client(&self.target.owner)?;
            owner
                .report_stream_item(request)
                .await
                .map_err(|status| {
                    closed(format!("the owner did not answer: {}", status.message()))
                })?
                .into_inner()
        };
        if reply.closed {
            return Err(closed("the consumer left".into()));
        }
        self.next += 1;
        Ok(())
    }
}

/// Sends a task's return values, each encoded (generated code of `num_returns` functions).
pub async fn send_returns(
    what: &str,
    values: Vec<Vec<u8>>,
) -> std::result::Result<(), crate::registry::TaskError> {
    let mut emitter: Emitter<()> = emitter(what)?;
    for value in values {
        emitter
            .emit_encoded(value)
            .await
            .map_err(crate::registry::TaskError::system)?;
    }
    Ok(())
}

/// The next item of a stream a streaming function returned (generated code calls this).
pub async fn next_item<S: futures::Stream + Unpin>(items: &mut S) -> Option<S::Item> {
    futures::StreamExt::next(items).await
}

/// The emitter of the streaming task running now (generated code calls this).
pub fn emitter<T>(what: &str) -> std::result::Result<Emitter<T>, crate::registry::TaskError> {
    match crate::runtime_context::current_stream() {
        Some(target) => Ok(Emitter {
            target,
            what: what.to_string(),
            next: 0,
            _type: PhantomData,
        }),
        None => Err(crate::registry::TaskError::system(format!(
            "{what} takes a fleet::Emitter but was not called as a streaming task (call it through its generated remote method)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_kept_once_in_order_and_refused_after_the_end() {
        let mut progress = Progress::default();
        assert_eq!(arrival(&progress, 0), Arrival::Store);
        progress.received = 1;
        assert_eq!(arrival(&progress, 0), Arrival::Duplicate);
        assert_eq!(arrival(&progress, 2), Arrival::Gap { expected: 1 });
        assert_eq!(arrival(&progress, 1), Arrival::Store);
        progress.end = Some(Ok(()));
        assert_eq!(arrival(&progress, 1), Arrival::Closed);
        let closed = Progress {
            closed: true,
            ..Progress::default()
        };
        assert_eq!(arrival(&closed, 0), Arrival::Closed);
    }
}
