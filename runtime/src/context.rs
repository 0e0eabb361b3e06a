//! The core worker of this process: its identity, its connections (GCS, raylet, other core
//! workers), its memory store and lease pool. One per process, set by `fleet::init()`.

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use fleet_gcs::auth::AuthChannel;
use fleet_gcs::GcsClient;
use fleet_proto::runtime::core_worker_client::CoreWorkerClient;
use fleet_proto::runtime::get_object_reply;
use fleet_proto::runtime::raylet_client::RayletClient;
use fleet_proto::runtime::{GetObjectRequest, TaskReply, TaskSpec};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::object_ref::{Location, MemoryStore, Stored};
use crate::plasma::{ObjectData, Plasma};
use crate::submitter::{LeasePool, Leaser, Lineage};
use fleet_raylet::object_store::ObjectId;
use futures::future::{BoxFuture, FutureExt, Shared};

/// Largest message of the core-worker service. Values of `INLINE_LIMIT` and more travel by
/// reference through the object store, a task's inline arguments are capped at
/// `INLINE_ARGS_BUDGET`, and a restoring actor reads its checkpoint from the store: so no
/// message of this service carries more than a few of those.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

static CURRENT: OnceLock<Arc<CoreWorker>> = OnceLock::new();

/// This process's core worker.
pub fn current() -> Result<Arc<CoreWorker>> {
    CURRENT.get().cloned().ok_or(Error::NotInitialized)
}

pub(crate) fn try_current() -> Option<&'static Arc<CoreWorker>> {
    CURRENT.get()
}

pub(crate) fn install(worker: Arc<CoreWorker>) -> Result<()> {
    CURRENT
        .set(worker)
        .map_err(|_| Error::Internal("fleet::init() was called twice in this process".into()))
}

/// Tasks sent on one worker stream at once before a sender waits (backpressure: the
/// stream's HTTP/2 window and this bound keep a slow worker from growing the queue).
const TASK_STREAM_CAPACITY: usize = 1024;

type ReplyWaiter = oneshot::Sender<std::result::Result<TaskReply, String>>;

/// How tasks reach one worker.
enum Outbound {
    /// A gRPC stream (the fallback, and TCP under TLS).
    Grpc(mpsc::Sender<TaskSpec>),
    /// The direct path (`direct`): frames written by the calling task itself.
    Direct(crate::direct::FrameWriter),
}

/// A task stream to one worker.
struct WorkerConnection {
    outbound: Outbound,
    /// Calls waiting for their reply.
    pending: DashMap<String, ReplyWaiter>,
    /// Set (before the last drain) once the stream ended: a call that registers after that
    /// sees it and is refused, so none is left waiting.
    closed: std::sync::atomic::AtomicBool,
}

impl WorkerConnection {
    fn new(outbound: Outbound) -> Self {
        WorkerConnection {
            outbound,
            pending: DashMap::new(),
            closed: Default::default(),
        }
    }

    fn is_open(&self) -> bool {
        let open = match &self.outbound {
            Outbound::Grpc(sender) => !sender.is_closed(),
            Outbound::Direct(writer) => writer.broken().is_none(),
        };
        open && !self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Registers a waiter; false when the stream has already ended.
    fn register(&self, task_id: &str, waiter: ReplyWaiter) -> bool {
        self.pending.insert(task_id.to_string(), waiter);
        // The drain comes after the flag: a waiter inserted before the flag is drained, one
        // inserted after it sees the flag here.
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            self.pending.remove(task_id);
            return false;
        }
        true
    }

    fn answer(&self, reply: TaskReply) {
        if let Some((_, waiter)) = self.pending.remove(&reply.task_id) {
            let _ = waiter.send(Ok(reply));
        }
    }

    fn forget(&self, task_id: &str) {
        self.pending.remove(task_id);
    }

    /// Ends the stream for its callers: every waiter gets `cause`, later calls are refused.
    fn fail_all(&self, cause: &str) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let ids: Vec<String> = self.pending.iter().map(|e| e.key().clone()).collect();
        for id in ids {
            if let Some((_, waiter)) = self.pending.remove(&id) {
                let _ = waiter.send(Err(cause.to_string()));
            }
        }
    }
}

/// The core worker.
pub struct CoreWorker {
    /// The job this process belongs to.
    pub job_id: String,
    /// `driver-…` or the worker id the raylet gave.
    pub worker_id: String,
    /// The node it runs on.
    pub node_id: String,
    /// Where other processes reach its CoreWorker service.
    pub address: String,
    /// Process id.
    pub pid: u32,
    /// The actors' default namespace.
    pub namespace: String,
    /// GPU ids this process may use.
    pub gpu_ids: Vec<u32>,
    pub(crate) gcs: GcsClient,
    pub(crate) raylet: RayletClient<AuthChannel>,
    /// The local raylet's address: where values this process stores are.
    pub(crate) raylet_address: String,
    location: Location,
    /// Leases from the local raylet, following spillbacks to other nodes.
    pub(crate) leaser: Leaser,
    /// How to re-run the tasks whose results live in an object store (lineage), by object id.
    pub(crate) lineage: DashMap<String, Arc<Lineage>>,
    /// Finished task attempts, batched into the GCS task events table (`fleet list tasks`).
    task_events: mpsc::Sender<fleet_proto::gcs::TaskEvent>,
    /// Task events dropped because the queue to the GCS was full (it was unreachable).
    task_events_dropped: std::sync::atomic::AtomicU64,
    rebuilding: DashMap<String, Shared<BoxFuture<'static, Result<Stored>>>>,
    pub(crate) store: MemoryStore,
    pub(crate) plasma: Plasma,
    pub(crate) leases: Arc<LeasePool>,
    clients: DashMap<String, CoreWorkerClient<AuthChannel>>,
    /// Every actor this process holds a handle to (a link ends with its last handle).
    pub(crate) links: DashMap<String, std::sync::Weak<crate::actor::ActorLink>>,
    /// The actors this process created and may have to restart, kept until they die.
    pub(crate) owned_links: DashMap<String, Arc<crate::actor::ActorLink>>,
    /// Borrowed references alive in this process: id → (live handles, reported to owner).
    borrowed: DashMap<String, (usize, bool)>,
    connections: DashMap<String, Arc<WorkerConnection>>,
    /// Whether this process is a driver (not a worker).
    pub is_driver: bool,
    /// The last caller incarnation handed to an actor link.
    incarnations: std::sync::atomic::AtomicU64,
    /// Every background task of this core worker (ended by `fleet::shutdown()`).
    pub(crate) tasks: crate::tasks::TaskOwner,
    /// What `fleet::cancel` can stop: results this process waits for, tasks it runs.
    pub(crate) cancels: crate::cancel::Cancels,
    /// Streams of the streaming tasks this process submitted, by task id.
    pub(crate) streams: DashMap<String, Arc<crate::stream::StreamState>>,
    /// Placement groups this process created (it reschedules them when a node dies).
    pub(crate) placement_groups: DashMap<String, crate::placement::PlacementGroupHandle>,
    /// A driver's stream to its raylet, open for the driver's life (closed last by
    /// `fleet::shutdown()`, after the job's end is recorded).
    attachment: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub(crate) struct CoreWorkerParts {
    pub job_id: String,
    pub worker_id: String,
    pub node_id: String,
    pub address: String,
    pub namespace: String,
    pub gpu_ids: Vec<u32>,
    pub gcs: GcsClient,
    pub raylet: RayletClient<AuthChannel>,
    pub raylet_address: String,
    /// SHA-256 of the job's binary uploaded to the cluster (empty: the raylet's own).
    pub job_binary: String,
    pub plasma: Plasma,
    pub is_driver: bool,
}

impl CoreWorker {
    pub(crate) fn new(parts: CoreWorkerParts) -> Self {
        let tasks = crate::tasks::TaskOwner::new();
        let leaser = Leaser::new(
            parts.raylet.clone(),
            parts.raylet_address.clone(),
            parts.job_id.clone(),
            parts.job_binary,
        );
        CoreWorker {
            location: Location::from(parts.raylet_address.as_str()),
            raylet_address: parts.raylet_address,
            leaser: leaser.clone(),
            lineage: DashMap::new(),
            rebuilding: DashMap::new(),
            job_id: parts.job_id,
            worker_id: parts.worker_id,
            node_id: parts.node_id,
            address: parts.address,
            pid: std::process::id(),
            namespace: parts.namespace,
            gpu_ids: parts.gpu_ids,
            task_events: spawn_task_event_reporter(parts.gcs.clone(), &tasks),
            task_events_dropped: Default::default(),
            gcs: parts.gcs,
            raylet: parts.raylet.clone(),
            store: MemoryStore::default(),
            plasma: parts.plasma,
            leases: Arc::new(LeasePool::new(leaser, tasks.clone())),
            clients: DashMap::new(),
            links: DashMap::new(),
            owned_links: DashMap::new(),
            borrowed: DashMap::new(),
            connections: DashMap::new(),
            is_driver: parts.is_driver,
            incarnations: Default::default(),
            tasks,
            cancels: Default::default(),
            streams: DashMap::new(),
            placement_groups: DashMap::new(),
            attachment: std::sync::Mutex::new(None),
        }
    }

    /// Values this process holds (owned or cached), and the bytes in the node's object store
    /// when this process hosts it: for tests and diagnostics.
    pub fn held_objects(&self) -> (usize, Option<u64>) {
        let stored = match &self.plasma {
            Plasma::Local(store) => Some(store.stats().used_bytes),
            Plasma::Remote { .. } => None,
        };
        (self.store.len(), stored)
    }

    /// Links to actors this process holds handles to, and how many of those actors it owns:
    /// for tests and diagnostics (a link ends with its last handle).
    pub fn actor_links(&self) -> (usize, usize) {
        let live = self
            .links
            .iter()
            .filter(|link| link.strong_count() > 0)
            .count();
        (live, self.owned_links.len())
    }

    /// Keeps a driver's stream to its raylet open until [`detach_driver`](Self::detach_driver).
    pub(crate) fn attach(&self, stream: tokio::task::JoinHandle<()>) {
        let old = self
            .attachment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(stream);
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Closes the driver's stream to its raylet.
    pub(crate) fn detach_driver(&self) {
        let stream = self
            .attachment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(stream) = stream {
            stream.abort();
        }
    }

    /// Background tasks of this core worker running now (0 after `fleet::shutdown()`).
    pub fn background_tasks(&self) -> usize {
        self.tasks.running()
    }

    /// A caller incarnation no actor link of this process used before: increasing, so an
    /// actor can tell this process's newer call order from an older one.
    pub(crate) fn next_incarnation(&self) -> u64 {
        self.incarnations
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1
    }

    /// The GCS client.
    pub fn gcs(&self) -> &GcsClient {
        &self.gcs
    }

    /// A client for another process's CoreWorker service.
    pub(crate) fn worker_client(&self, address: &str) -> Result<CoreWorkerClient<AuthChannel>> {
        if let Some(client) = self.clients.get(address) {
            return Ok(client.clone());
        }
        let channel =
            fleet_gcs::transport::Connector::channel(&fleet_gcs::transport::TcpConnector, address)
                .map_err(Error::Internal)?;
        let client = CoreWorkerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        self.clients.insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// Records a finished task attempt (sent to the GCS in batches, never waited for). The
    /// queue is bounded: while the GCS cannot take events, the newest are dropped (they are
    /// for operators; no acknowledged work depends on them), and the drops are counted.
    pub(crate) fn task_event(&self, event: fleet_proto::gcs::TaskEvent) {
        if self.task_events.try_send(event).is_err() {
            let dropped = self
                .task_events_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if dropped.is_multiple_of(10_000) {
                tracing::warn!(
                    dropped = dropped + 1,
                    "task events dropped: the queue to the control store is full"
                );
            }
        }
    }

    /// Where values this process stores are (its node's raylet).
    pub(crate) fn local_location(&self) -> Location {
        self.location.clone()
    }

    /// Reads a stored object held by the raylet at `at`: from this node's store, after
    /// having this node's raylet pull a copy when it is elsewhere.
    async fn fetch_stored(&self, object: &str, id: ObjectId, at: &Location) -> Result<ObjectData> {
        if at.is_empty() || **at == *self.raylet_address {
            return self.plasma.get(id).await;
        }
        if let Ok(data) = self.plasma.get(id).await {
            return Ok(data);
        }
        let mut raylet = self.raylet.clone();
        raylet
            .pull_object(fleet_proto::runtime::PullObjectRequest {
                object_id: id.to_string(),
                from_address: at.to_string(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable if status.message().starts_with("cannot copy") => {
                    Error::ObjectLost {
                        object_id: object.to_string(),
                        location: at.to_string(),
                        reason: status.message().to_string(),
                    }
                }
                _ => Error::ObjectUnavailable {
                    object_id: object.to_string(),
                    reason: format!(
                        "this node's raylet could not pull it from {at}: {}",
                        status.message()
                    ),
                },
            })?;
        self.plasma.get(id).await
    }

    /// An owned value's bytes; a stored copy lost with its node is rebuilt from lineage.
    async fn load(self: &Arc<Self>, object: &str, mut stored: Stored) -> Result<ObjectData> {
        let mut rebuilds = 0;
        loop {
            let (id, at) = match stored {
                Stored::Inline(bytes) => return Ok(ObjectData::Inline(bytes)),
                Stored::Plasma(id, at) => (id, at),
            };
            match self.fetch_stored(object, id, &at).await {
                Err(Error::ObjectLost { .. }) if rebuilds < 3 => {
                    rebuilds += 1;
                    stored = self.reconstruct(object, at).await?;
                }
                other => return other,
            }
        }
    }

    /// Rebuilds an owned object whose copy at `lost_at` is gone by re-running the task that
    /// made it (once, however many readers ask); returns where it is now.
    pub(crate) async fn reconstruct(
        self: &Arc<Self>,
        object: &str,
        lost_at: Location,
    ) -> Result<Stored> {
        if let Some(Ok(Stored::Plasma(id, at))) =
            self.store.existing(object).and_then(|s| s.try_get())
        {
            if at != lost_at {
                // Rebuilt meanwhile.
                return Ok(Stored::Plasma(id, at));
            }
        }
        let shared = self
            .rebuilding
            .entry(object.to_string())
            .or_insert_with(|| {
                let this = self.clone();
                let object = object.to_string();
                async move {
                    let result = crate::submitter::rebuild(&this, &object, &lost_at).await;
                    this.rebuilding.remove(&object);
                    result
                }
                .boxed()
                .shared()
            })
            .clone();
        shared.await
    }

    /// Frees an owned value that nobody references any more (and forgets its lineage).
    /// Sets a task's or call's result, freeing it at once if nobody holds a reference to it
    /// any more.
    pub(crate) fn set_result(&self, object: &str, outcome: Result<Stored>) {
        if let Some(unwanted) = self.store.fill(object, outcome) {
            self.free(object, unwanted);
        }
    }

    pub(crate) fn free(&self, object: &str, stored: Stored) {
        self.lineage.remove(object);
        let Stored::Plasma(id, at) = stored else {
            return;
        };
        if at.is_empty() || *at == *self.raylet_address {
            if let Some(request) = self.plasma.delete(id) {
                self.tasks.spawn(request);
            }
            return;
        }
        // Held by another node: free it there (that raylet frees the copies made from it,
        // this node's included).
        let Ok(mut raylet) = self.leaser.raylet_at(&at) else {
            return;
        };
        self.tasks.spawn(async move {
            let _ = raylet
                .store_delete(fleet_proto::runtime::StoreDeleteRequest {
                    object_id: id.to_string(),
                })
                .await;
        });
    }

    /// A reply said a worker still holds (or passed on) these references: register the
    /// borrowers with the owners. Called before the call's own hold on them is released.
    pub(crate) async fn pin_retained(&self, retained: &[fleet_proto::runtime::RetainedRef]) {
        let mut by_owner: std::collections::BTreeMap<&str, Vec<fleet_proto::runtime::RetainedRef>> =
            std::collections::BTreeMap::new();
        for r in retained {
            if r.owner == self.address {
                self.store
                    .add_borrower(&r.object_id, &r.borrower, r.permanent);
            } else {
                by_owner
                    .entry(r.owner.as_str())
                    .or_default()
                    .push(r.clone());
            }
        }
        for (owner, refs) in by_owner {
            if let Ok(mut client) = self.worker_client(owner) {
                let request = fleet_proto::runtime::PinObjectsRequest { refs };
                if let Err(status) = client.pin_objects(request).await {
                    tracing::debug!(owner, status = %status.message(), "could not register borrowers at the owner");
                }
            }
        }
    }

    /// A borrowed reference was decoded in this process.
    pub(crate) fn borrow_created(&self, id: &str, _owner: &str) {
        self.borrowed.entry(id.to_string()).or_insert((0, false)).0 += 1;
    }

    /// Marks a borrowed reference as reported to its owner; false if it already was.
    pub(crate) fn report_borrow(&self, id: &str) -> bool {
        match self.borrowed.get_mut(id) {
            Some(mut entry) if !entry.1 => {
                entry.1 = true;
                true
            }
            _ => false,
        }
    }

    /// A borrowed reference dropped; when it was this process's last one for that object and
    /// the owner counts this process as a borrower, tell the owner.
    pub(crate) fn borrow_dropped(&self, id: &str, owner: &str) {
        let release = match self.borrowed.get_mut(id) {
            Some(mut entry) => {
                entry.0 = entry.0.saturating_sub(1);
                (entry.0 == 0).then_some(entry.1)
            }
            None => None,
        };
        let Some(reported) = release else { return };
        self.borrowed.remove_if(id, |_, entry| entry.0 == 0);
        if !reported {
            return;
        }
        let Ok(mut client) = self.worker_client(owner) else {
            return;
        };
        let request = fleet_proto::runtime::ReleaseBorrowRequest {
            object_id: id.to_string(),
            borrower: self.address.clone(),
        };
        let owner = owner.to_string();
        self.tasks.spawn(async move {
            if let Err(status) = client.release_borrow(request).await {
                tracing::debug!(%owner, status = %status.message(), "could not release a borrowed object");
            }
        });
    }

    /// A node was declared dead: calls in flight to its workers fail now (their actors
    /// restart, their tasks retry elsewhere) instead of waiting on connections that may
    /// never break (a partitioned node).
    pub(crate) fn on_node_dead(&self, node_id: &str, cause: &str) {
        for address in self.leaser.node_died(node_id) {
            let Some((_, connection)) = self.connections.remove(&address) else {
                continue;
            };
            connection.fail_all(&format!("its node {node_id} was declared dead ({cause})"));
        }
    }

    /// Pushes a task to the worker at `address` over this process's stream to it (opened on
    /// first use, reopened after a failure); the error is the transport's cause. Waits while
    /// the stream holds `TASK_STREAM_CAPACITY` unsent tasks.
    pub(crate) async fn push(
        &self,
        address: &str,
        spec: TaskSpec,
    ) -> std::result::Result<TaskReply, String> {
        let connection = match self.connections.get(address).map(|c| c.clone()) {
            Some(connection) if connection.is_open() => connection,
            _ => {
                let connection = self.open_connection(address).await?;
                self.connections
                    .insert(address.to_string(), connection.clone());
                connection
            }
        };
        let closed = || format!("the connection to worker {address} closed");
        let (tx, rx) = oneshot::channel();
        let task_id = spec.task_id.clone();
        if !connection.register(&task_id, tx) {
            self.connections
                .remove_if(address, |_, c| Arc::ptr_eq(c, &connection));
            return Err(closed());
        }
        let sent = match &connection.outbound {
            Outbound::Grpc(sender) => sender.send(spec).await.map_err(|_| closed()),
            Outbound::Direct(writer) => writer
                .send(&spec)
                .await
                .map_err(|cause| format!("{} ({cause})", closed())),
        };
        if let Err(cause) = sent {
            connection.forget(&task_id);
            self.connections
                .remove_if(address, |_, c| Arc::ptr_eq(c, &connection));
            return Err(cause);
        }
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    async fn open_connection(
        &self,
        address: &str,
    ) -> std::result::Result<Arc<WorkerConnection>, String> {
        if crate::direct::enabled() {
            let me = format!("{} (pid {})", self.worker_id, self.pid);
            match crate::direct::connect(address, &me).await {
                Ok((writer, reader)) => return Ok(self.read_direct(address, writer, reader)),
                Err(reason) => {
                    tracing::debug!(worker = %address, %reason, "no direct call path; using gRPC")
                }
            }
        }
        let mut client = self.worker_client(address).map_err(|e| e.to_string())?;
        let (sender, receiver) = mpsc::channel::<TaskSpec>(TASK_STREAM_CAPACITY);
        let replies = client
            .push_tasks(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .map_err(|s| fleet_gcs::error::describe_status(&s))?
            .into_inner();
        let connection = Arc::new(WorkerConnection::new(Outbound::Grpc(sender)));
        let reader = connection.clone();
        let address = address.to_string();
        // The reader ends with the stream; at shutdown its waiters are told.
        let closing = connection.clone();
        self.tasks.spawn_answering(
            async move {
                let mut replies = replies;
                let cause = loop {
                    match replies.message().await {
                        Ok(Some(reply)) => reader.answer(reply),
                        Ok(None) => break format!("worker {address} closed the task stream"),
                        Err(status) => break fleet_gcs::error::describe_status(&status),
                    }
                };
                // Everything still in flight on this stream failed with the worker.
                reader.fail_all(&cause);
            },
            move || closing.fail_all("fleet::shutdown() closed this process's connections"),
        );
        Ok(connection)
    }

    /// A direct connection's reader: replies answer their calls until the stream ends,
    /// which fails every call still in flight on it.
    fn read_direct(
        &self,
        address: &str,
        writer: crate::direct::FrameWriter,
        mut reader: tokio::io::BufReader<crate::direct::ReadHalf>,
    ) -> Arc<WorkerConnection> {
        let connection = Arc::new(WorkerConnection::new(Outbound::Direct(writer)));
        let replies = connection.clone();
        let closing = connection.clone();
        let address = address.to_string();
        self.tasks.spawn_answering(
            async move {
                let cause = loop {
                    match crate::direct::read_frame(&mut reader, MAX_MESSAGE_BYTES).await {
                        Ok(Some(frame)) => {
                            match <TaskReply as prost::Message>::decode(frame.as_slice()) {
                                Ok(reply) => replies.answer(reply),
                                Err(error) => {
                                    break format!(
                                    "worker {address} sent a reply that does not decode ({error})"
                                )
                                }
                            }
                        }
                        Ok(None) => break format!("worker {address} closed the connection"),
                        Err(error) => {
                            break format!("the connection to worker {address} failed: {error}")
                        }
                    }
                };
                replies.fail_all(&cause);
            },
            move || closing.fail_all("fleet::shutdown() closed this process's connections"),
        );
        connection
    }

    /// The serialized value of an object: from this process's store when it owns (or has
    /// cached) it, from the node's object store when it is large, otherwise fetched from its
    /// owner.
    /// Returns once the object exists (or failed) anywhere, without bringing its bytes to
    /// this node: an owned one when its slot is filled, a borrowed one when its owner
    /// answers (a large one's owner answers with where it is, which is not fetched).
    pub(crate) async fn object_ready(&self, id: &str, owner: &str) {
        if owner == self.address {
            let _ = self.store.slot(id).wait().await;
            return;
        }
        if let Some(slot) = self.store.existing(id) {
            if slot.try_get().is_some() {
                return;
            }
        }
        if let Ok(mut client) = self.worker_client(owner) {
            // Any answer means ready: a value, where it is stored, or why it failed.
            let _ = client
                .get_object(GetObjectRequest {
                    object_id: id.to_string(),
                    lost_at: String::new(),
                })
                .await;
        }
    }

    pub async fn get_bytes(self: &Arc<Self>, id: &str, owner: &str) -> Result<ObjectData> {
        if owner == self.address {
            let stored = self.store.slot(id).wait().await?;
            return self.load(id, stored).await;
        }
        if let Some(slot) = self.store.existing(id) {
            if let Some(value) = slot.try_get() {
                return self.load(id, value?).await;
            }
        }
        let mut lost_at = String::new();
        for _ in 0..4 {
            match self.borrow_bytes(id, owner, &lost_at).await {
                Err(Error::ObjectLost { location, .. }) if location != lost_at => {
                    // Ask the owner to rebuild it, then read the new copy.
                    lost_at = location;
                }
                other => return other,
            }
        }
        Err(Error::ObjectUnavailable {
            object_id: id.into(),
            reason: "it was lost and rebuilt repeatedly; giving up".into(),
        })
    }

    /// A large argument passed by reference: this node's copy (pulled once per node), or,
    /// when the copy it names is lost, the owner's rebuilt one.
    pub(crate) async fn stored_arg(
        self: &Arc<Self>,
        arg: &fleet_proto::runtime::StoredArg,
    ) -> Result<ObjectData> {
        let stored: ObjectId = arg
            .stored_id
            .parse()
            .map_err(|e| Error::ObjectUnavailable {
                object_id: arg.object_id.clone(),
                reason: format!("invalid stored id in a task argument: {e}"),
            })?;
        let at = Location::from(arg.stored_at.as_str());
        match self.fetch_stored(&arg.object_id, stored, &at).await {
            Err(Error::ObjectLost { location, .. }) => {
                let mut lost_at = location;
                for _ in 0..3 {
                    match self
                        .borrow_bytes(&arg.object_id, &arg.owner, &lost_at)
                        .await
                    {
                        Err(Error::ObjectLost { location, .. }) if location != lost_at => {
                            lost_at = location;
                        }
                        other => return other,
                    }
                }
                Err(Error::ObjectUnavailable {
                    object_id: arg.object_id.clone(),
                    reason: "it was lost and rebuilt repeatedly; giving up".into(),
                })
            }
            other => other,
        }
    }

    /// A borrowed value, from its owner.
    async fn borrow_bytes(&self, id: &str, owner: &str, lost_at: &str) -> Result<ObjectData> {
        let mut client = self.worker_client(owner)?;
        let reply = client
            .get_object(GetObjectRequest {
                object_id: id.to_string(),
                lost_at: lost_at.to_string(),
            })
            .await
            .map_err(|status| Error::ObjectUnavailable {
                object_id: id.into(),
                reason: format!(
                    "its owner at {owner} did not answer ({}); the owner may have exited",
                    status.message()
                ),
            })?
            .into_inner();
        match reply.result {
            Some(get_object_reply::Result::Value(bytes)) => Ok(ObjectData::Inline(Arc::new(bytes))),
            Some(get_object_reply::Result::StoredId(stored)) => {
                let stored: ObjectId = stored.parse().map_err(|e| Error::ObjectUnavailable {
                    object_id: id.into(),
                    reason: format!("its owner named an invalid stored id: {e}"),
                })?;
                let at = Location::from(reply.stored_at.as_str());
                self.fetch_stored(id, stored, &at).await
            }
            Some(get_object_reply::Result::Error(error)) => {
                Err(crate::executor::error_from_wire(error))
            }
            None => Err(Error::ObjectUnavailable {
                object_id: id.into(),
                reason: "empty answer from its owner".into(),
            }),
        }
    }
}

/// How often task events go to the GCS (one proposal per batch).
const TASK_EVENT_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

/// Task events in one proposal at most.
const TASK_EVENT_BATCH: usize = 2048;
/// Task events queued for the GCS at most.
const TASK_EVENT_QUEUE: usize = 16_384;

fn spawn_task_event_reporter(
    gcs: GcsClient,
    tasks: &crate::tasks::TaskOwner,
) -> mpsc::Sender<fleet_proto::gcs::TaskEvent> {
    let (tx, mut rx) = mpsc::channel::<fleet_proto::gcs::TaskEvent>(TASK_EVENT_QUEUE);
    tasks.spawn(async move {
        // A full batch goes at once (the queue drains at the GCS's pace); otherwise events
        // gather for TASK_EVENT_FLUSH first, one proposal for many.
        let mut behind = false;
        while let Some(first) = rx.recv().await {
            if !behind {
                tokio::time::sleep(TASK_EVENT_FLUSH).await;
            }
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
                if batch.len() >= TASK_EVENT_BATCH {
                    break;
                }
            }
            behind = batch.len() >= TASK_EVENT_BATCH;
            if let Err(error) = gcs.add_task_events(batch).await {
                // Events are for operators; losing a batch must not stall work.
                tracing::debug!(%error, "task events not recorded");
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_registered_after_the_last_drain_is_refused_not_left_waiting() {
        let (sender, _receiver) = mpsc::channel(1);
        let connection = WorkerConnection::new(Outbound::Grpc(sender));
        let (tx, rx) = oneshot::channel();
        assert!(connection.register("a", tx));
        connection.fail_all("the worker died");
        assert_eq!(
            rx.await.expect("answered"),
            Err("the worker died".to_string())
        );
        // Before, a waiter added after the reader's last drain waited forever.
        let (tx, rx) = oneshot::channel();
        assert!(
            !connection.register("b", tx),
            "the ended stream took a call"
        );
        assert!(
            rx.await.is_err(),
            "its waiter is dropped, so the caller is told"
        );
        assert!(!connection.is_open());
    }
}
