//! `ObjectRef<T>`: a typed reference to a value that exists (or will) somewhere in the
//! cluster, and the per-process memory store that holds the values this process owns.
//!
//! Ownership (Ray's model): the process that submits a task or puts a value owns the
//! result; its memory store holds it; other processes holding the reference (borrowers)
//! fetch it from the owner's CoreWorker service. A reference serialized into a task's
//! arguments or a value travels as (id, owner address).

use std::future::IntoFuture;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::Notify;

use crate::codec;
use crate::error::{Error, Result};
use crate::plasma::ObjectData;
use crate::registry::BoxFuture;
use fleet_raylet::object_store::ObjectId;

/// Where an owned value is.
#[derive(Clone)]
pub enum Stored {
    /// In this process's memory.
    Inline(Arc<Vec<u8>>),
    /// In a node's object store: the id there, and that node's raylet (HOST:PORT).
    Plasma(ObjectId, Location),
}

/// The raylet whose object store holds a value.
pub type Location = Arc<str>;

/// A value slot in the memory store.
#[derive(Default)]
pub struct Slot {
    value: OnceLock<Result<Stored, Error>>,
    ready: Notify,
    /// Who else may still need the value.
    refs: std::sync::Mutex<SlotRefs>,
    /// Set when the value was rebuilt after its copy was lost with a node: where it is now.
    rebuilt: std::sync::Mutex<Option<Stored>>,
}

/// The owner's view of a value's other holders.
#[derive(Default)]
struct SlotRefs {
    /// Processes (CoreWorker addresses) that kept a reference after a call.
    borrowers: std::collections::HashSet<String>,
    /// A reference was passed on into a value anyone may decode: keep it for good.
    pinned: bool,
    /// The owner's own references are all gone.
    owner_done: bool,
}

impl Slot {
    /// Waits for the value.
    pub async fn wait(&self) -> Result<Stored> {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(value) = self.try_get() {
                return value;
            }
            notified.await;
        }
    }

    /// The value, if ready.
    pub fn try_get(&self) -> Option<Result<Stored>> {
        let value = self.value.get()?;
        if let Some(rebuilt) = self
            .rebuilt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Some(Ok(rebuilt));
        }
        Some(value.clone())
    }
}

/// Values owned by (or cached in) this process.
#[derive(Default)]
pub struct MemoryStore {
    slots: DashMap<String, Arc<Slot>>,
}

impl MemoryStore {
    /// The slot for `id`, created empty if absent.
    pub fn slot(&self, id: &str) -> Arc<Slot> {
        self.slots.entry(id.to_string()).or_default().clone()
    }

    /// The slot for `id`, if this process has one.
    pub fn existing(&self, id: &str) -> Option<Arc<Slot>> {
        self.slots.get(id).map(|s| s.clone())
    }

    /// Fills a slot with an inline value (first write wins) and wakes its waiters.
    pub fn set(&self, id: &str, value: Result<Vec<u8>>) {
        self.set_stored(id, value.map(|v| Stored::Inline(Arc::new(v))));
    }

    /// Fills a slot (first write wins) and wakes its waiters.
    pub fn set_stored(&self, id: &str, value: Result<Stored>) {
        let slot = self.slot(id);
        let _ = slot.value.set(value);
        slot.ready.notify_waiters();
    }

    /// Fills the slot of a result its owner still wants; hands the value back when the slot
    /// is gone (every reference to it dropped while it was being made), for the caller to
    /// free: otherwise a fire-and-forget task's result would stay in memory for good.
    pub fn fill(&self, id: &str, value: Result<Stored>) -> Option<Stored> {
        let Some(slot) = self.existing(id) else {
            return value.ok();
        };
        let _ = slot.value.set(value);
        slot.ready.notify_waiters();
        None
    }

    /// The value was rebuilt (its copy was lost): readers get `stored` from now on.
    pub fn relocate(&self, id: &str, stored: Stored) {
        if let Some(slot) = self.existing(id) {
            *slot.rebuilt.lock().unwrap_or_else(|e| e.into_inner()) = Some(stored);
            slot.ready.notify_waiters();
        }
    }

    /// Records that `borrower` kept a reference (or, `permanent`, passed it on).
    pub fn add_borrower(&self, id: &str, borrower: &str, permanent: bool) {
        if let Some(slot) = self.existing(id) {
            let mut refs = slot.refs.lock().unwrap_or_else(|e| e.into_inner());
            if permanent {
                refs.pinned = true;
            } else {
                refs.borrowers.insert(borrower.to_string());
            }
        }
    }

    /// `borrower` holds no more references; frees the value (returning where it was) when
    /// nobody does.
    pub fn release_borrower(&self, id: &str, borrower: &str) -> Option<Stored> {
        let slot = self.existing(id)?;
        let free = {
            let mut refs = slot.refs.lock().unwrap_or_else(|e| e.into_inner());
            refs.borrowers.remove(borrower);
            refs.owner_done && refs.borrowers.is_empty() && !refs.pinned
        };
        if free {
            self.remove(id)
        } else {
            None
        }
    }

    /// The owner's last reference dropped; frees the value (returning where it was) unless
    /// a borrower holds it or it was passed on.
    pub fn owner_dropped(&self, id: &str) -> Option<Stored> {
        let slot = self.existing(id)?;
        let free = {
            let mut refs = slot.refs.lock().unwrap_or_else(|e| e.into_inner());
            refs.owner_done = true;
            refs.borrowers.is_empty() && !refs.pinned
        };
        if free {
            self.remove(id)
        } else {
            None
        }
    }

    /// Forgets a value; returns where it was.
    pub fn remove(&self, id: &str) -> Option<Stored> {
        let (_, slot) = self.slots.remove(id)?;
        slot.try_get().and_then(|v| v.ok())
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

pub(crate) struct RefInner {
    pub(crate) id: String,
    pub(crate) owner: String,
    /// Serialized outside a call's arguments (into a value that is put or returned), or
    /// deserialized from one: whoever decodes that value may need it at any time, so the
    /// owner keeps the value for the rest of its life.
    escaped: AtomicBool,
}

// Borrowing (Ray's ownership model, in its conservative form):
// - A reference serialized while a call's arguments are encoded is recorded in
//   `ENCODE_TRACE`; the call keeps those references alive until its reply.
// - While a task runs, the references its code deserializes, and the borrowed references it
//   serializes elsewhere (into its result, a put), are recorded in `RUN_TRACE`. When it ends,
//   those still alive in the worker (an actor kept them, a sub-call holds them) or passed on
//   are reported in the reply as retained, and their owners pin them.
// - Otherwise the owner frees a value when its own last reference drops.
thread_local! {
    static ENCODE_TRACE: std::cell::RefCell<Option<Vec<Arc<RefInner>>>> = const { std::cell::RefCell::new(None) };
    static RUN_TRACE: std::cell::RefCell<Option<RunTrace>> = const { std::cell::RefCell::new(None) };
}

/// What a running task did with references.
#[derive(Default)]
pub struct RunTrace {
    deserialized: Vec<std::sync::Weak<RefInner>>,
    passed_on: Vec<(String, String)>,
}

impl RunTrace {
    /// The references this process still holds (each reported to its owner once, until it
    /// lets go) or passed on, to report in the reply.
    pub fn retained(self) -> Vec<fleet_proto::runtime::RetainedRef> {
        let Some(runtime) = crate::context::try_current() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut passed_on = self.passed_on;
        passed_on.sort();
        passed_on.dedup();
        for (object_id, owner) in passed_on {
            out.push(fleet_proto::runtime::RetainedRef {
                object_id,
                owner,
                borrower: runtime.address.clone(),
                permanent: true,
            });
        }
        for weak in self.deserialized {
            let Some(inner) = weak.upgrade() else {
                continue;
            };
            if inner.owner != runtime.address && runtime.report_borrow(&inner.id) {
                out.push(fleet_proto::runtime::RetainedRef {
                    object_id: inner.id.clone(),
                    owner: inner.owner.clone(),
                    borrower: runtime.address.clone(),
                    permanent: false,
                });
            }
        }
        out
    }
}

/// A future whose polls record what it does with references.
pub struct Traced<F> {
    inner: std::pin::Pin<Box<F>>,
    trace: Option<RunTrace>,
}

impl<F: std::future::Future> Traced<F> {
    /// Traces `future`.
    pub fn new(future: F) -> Self {
        Traced {
            inner: Box::pin(future),
            trace: Some(RunTrace::default()),
        }
    }
}

impl<F: std::future::Future> std::future::Future for Traced<F> {
    type Output = (F::Output, RunTrace);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let trace = self.trace.take().unwrap_or_default();
        let previous = RUN_TRACE.with(|t| t.borrow_mut().replace(trace));
        let polled = self.inner.as_mut().poll(cx);
        let trace = RUN_TRACE
            .with(|t| std::mem::replace(&mut *t.borrow_mut(), previous))
            .unwrap_or_default();
        match polled {
            std::task::Poll::Ready(output) => std::task::Poll::Ready((output, trace)),
            std::task::Poll::Pending => {
                self.trace = Some(trace);
                std::task::Poll::Pending
            }
        }
    }
}

/// Encodes a call argument, collecting the references inside it.
pub(crate) fn encode_argument<T: Serialize>(value: &T) -> (Result<Vec<u8>>, Vec<RefGuard>) {
    let previous = ENCODE_TRACE.with(|t| t.borrow_mut().replace(Vec::new()));
    let encoded = codec::encode(value, "an argument");
    let contained = ENCODE_TRACE
        .with(|t| std::mem::replace(&mut *t.borrow_mut(), previous))
        .unwrap_or_default();
    (encoded, contained.into_iter().map(RefGuard).collect())
}

impl Drop for RefInner {
    fn drop(&mut self) {
        let Some(runtime) = crate::context::try_current() else {
            return;
        };
        if runtime.address != self.owner {
            // A borrowed reference: this process may be registered as a borrower.
            runtime.borrow_dropped(&self.id, &self.owner);
            return;
        }
        if self.escaped.load(Ordering::Relaxed) {
            return;
        }
        if let Some(stored) = runtime.store.owner_dropped(&self.id) {
            runtime.free(&self.id, stored);
        }
    }
}

/// A reference to a value of type `T`; `.await` it (or `fleet::get`) for the value.
pub struct ObjectRef<T> {
    pub(crate) inner: Arc<RefInner>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef {
            inner: self.inner.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRef({})", self.inner.id)
    }
}

impl<T> ObjectRef<T> {
    pub(crate) fn new(id: String, owner: String) -> Self {
        ObjectRef {
            inner: Arc::new(RefInner {
                id,
                owner,
                escaped: AtomicBool::new(false),
            }),
            _type: PhantomData,
        }
    }

    /// The object's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The owner's address.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The serialized value (waiting for it).
    pub async fn bytes(&self) -> Result<ObjectData> {
        crate::context::current()?
            .get_bytes(&self.inner.id, &self.inner.owner)
            .await
    }

    /// The same reference, seen as another type (a return value of a multi-return task).
    pub(crate) fn retype<U>(self) -> ObjectRef<U> {
        ObjectRef {
            inner: self.inner,
            _type: PhantomData,
        }
    }

    pub(crate) fn mark_escaped(&self) {
        self.inner.escaped.store(true, Ordering::Relaxed);
    }
}

impl<T: DeserializeOwned> ObjectRef<T> {
    /// The value (waiting for it).
    pub async fn get(&self) -> Result<T> {
        let bytes = self.bytes().await?;
        codec::decode(&bytes, &format!("object {}", self.inner.id))
    }

    /// The value, or `Error::GetTimeout` (naming the object and its task) when it is not
    /// ready within `after`. The object is not affected: a later get can still have it.
    pub async fn timeout(&self, after: std::time::Duration) -> Result<T> {
        match tokio::time::timeout(after, self.get()).await {
            Ok(result) => result,
            Err(_) => Err(crate::error::Error::GetTimeout {
                object_id: self.inner.id.clone(),
                // A task's result is `TASK_ID.ret` (see `submit_task`).
                task: self.inner.id.strip_suffix(".ret").map(str::to_string),
                after,
            }),
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = BoxFuture<'static, Result<T>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.get().await })
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for &ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = BoxFuture<'static, Result<T>>;

    fn into_future(self) -> Self::IntoFuture {
        let this = self.clone();
        Box::pin(async move { this.get().await })
    }
}

#[derive(Serialize, Deserialize)]
struct WireRef {
    id: String,
    owner: String,
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let in_argument = ENCODE_TRACE.with(|t| match t.borrow_mut().as_mut() {
            Some(contained) => {
                contained.push(self.inner.clone());
                true
            }
            None => false,
        });
        if !in_argument {
            self.mark_escaped();
            RUN_TRACE.with(|t| {
                if let Some(trace) = t.borrow_mut().as_mut() {
                    trace
                        .passed_on
                        .push((self.inner.id.clone(), self.inner.owner.clone()));
                }
            });
        }
        WireRef {
            id: self.inner.id.clone(),
            owner: self.inner.owner.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireRef::deserialize(deserializer)?;
        let r = ObjectRef::new(wire.id, wire.owner);
        // A decoded reference never frees the value when it drops (it is not the owner's
        // original); the running task reports it if it is still held at the end.
        r.mark_escaped();
        if let Some(runtime) = crate::context::try_current() {
            if runtime.address != r.inner.owner {
                runtime.borrow_created(&r.inner.id, &r.inner.owner);
            }
        }
        RUN_TRACE.with(|t| {
            if let Some(trace) = t.borrow_mut().as_mut() {
                trace.deserialized.push(Arc::downgrade(&r.inner));
            }
        });
        Ok(r)
    }
}

/// An argument to a remote function or actor method: a value, or a reference resolved to its
/// value before the call.
pub enum Arg {
    /// A serialized value (or the error serializing it), and the references inside it.
    Value(Result<Vec<u8>>, Vec<RefGuard>),
    /// A reference to resolve.
    Ref {
        /// Object id.
        id: String,
        /// Owner address.
        owner: String,
        /// Keeps the owner's value alive until the argument is resolved.
        guard: RefGuard,
    },
}

/// Holds a reference while a call that carries it is in flight.
pub struct RefGuard(#[allow(dead_code)] Arc<RefInner>);

/// What can be passed where a remote function expects a `T`: a `T`, or an `ObjectRef<T>`.
pub trait IntoArg<T> {
    /// The argument.
    fn into_arg(self) -> Arg;
}

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self) -> Arg {
        let (encoded, contained) = encode_argument(&self);
        Arg::Value(encoded, contained)
    }
}

impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Arg {
        // Not an escape: the caller resolves argument references to values before the call,
        // so the worker never borrows them; the guard keeps the value until then.
        Arg::Ref {
            id: self.inner.id.clone(),
            owner: self.inner.owner.clone(),
            guard: RefGuard(self.inner.clone()),
        }
    }
}

impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Arg {
        <ObjectRef<T> as IntoArg<T>>::into_arg(self.clone())
    }
}
