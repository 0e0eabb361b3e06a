//! The core worker of this process: its identity, its connections (GCS, raylet, other core
//! workers), its memory store and lease pool. One per process, set by `fleet::init()`.

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use fleet_gcs::GcsClient;
use fleet_proto::runtime::core_worker_client::CoreWorkerClient;
use fleet_proto::runtime::get_object_reply;
use fleet_proto::runtime::raylet_client::RayletClient;
use fleet_proto::runtime::{GetObjectRequest, TaskReply, TaskSpec};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::object_ref::{MemoryStore, Stored};
use crate::plasma::{ObjectData, Plasma};
use crate::submitter::LeasePool;
use fleet_raylet::object_store::ObjectId;

/// Largest gRPC message (objects travel inline for now).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

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

/// A task stream to one worker.
struct WorkerConnection {
    sender: mpsc::UnboundedSender<TaskSpec>,
    pending: DashMap<String, oneshot::Sender<std::result::Result<TaskReply, String>>>,
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
    pub(crate) raylet: RayletClient<Channel>,
    pub(crate) store: MemoryStore,
    pub(crate) plasma: Plasma,
    pub(crate) leases: Arc<LeasePool>,
    clients: DashMap<String, CoreWorkerClient<Channel>>,
    pub(crate) links: DashMap<String, Arc<crate::actor::ActorLink>>,
    /// Borrowed references alive in this process: id → (live handles, reported to owner).
    borrowed: DashMap<String, (usize, bool)>,
    connections: DashMap<String, Arc<WorkerConnection>>,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Whether this process is a driver (not a worker).
    pub is_driver: bool,
}

pub(crate) struct CoreWorkerParts {
    pub job_id: String,
    pub worker_id: String,
    pub node_id: String,
    pub address: String,
    pub namespace: String,
    pub gpu_ids: Vec<u32>,
    pub gcs: GcsClient,
    pub raylet: RayletClient<Channel>,
    pub plasma: Plasma,
    pub is_driver: bool,
}

impl CoreWorker {
    pub(crate) fn new(parts: CoreWorkerParts) -> Self {
        CoreWorker {
            job_id: parts.job_id,
            worker_id: parts.worker_id,
            node_id: parts.node_id,
            address: parts.address,
            pid: std::process::id(),
            namespace: parts.namespace,
            gpu_ids: parts.gpu_ids,
            gcs: parts.gcs,
            raylet: parts.raylet.clone(),
            store: MemoryStore::default(),
            plasma: parts.plasma,
            leases: Arc::new(LeasePool::new(parts.raylet)),
            clients: DashMap::new(),
            links: DashMap::new(),
            borrowed: DashMap::new(),
            connections: DashMap::new(),
            runtime: tokio::runtime::Handle::current(),
            is_driver: parts.is_driver,
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

    /// The GCS client.
    pub fn gcs(&self) -> &GcsClient {
        &self.gcs
    }

    /// A client for another process's CoreWorker service.
    pub(crate) fn worker_client(&self, address: &str) -> Result<CoreWorkerClient<Channel>> {
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

    async fn load(&self, stored: Stored) -> Result<ObjectData> {
        match stored {
            Stored::Inline(bytes) => Ok(ObjectData::Inline(bytes)),
            Stored::Plasma(id) => self.plasma.get(id).await,
        }
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
        self.runtime.spawn(async move {
            if let Err(status) = client.release_borrow(request).await {
                tracing::debug!(%owner, status = %status.message(), "could not release a borrowed object");
            }
        });
    }

    /// Pushes a task to the worker at `address` over this process's stream to it (opened on
    /// first use, reopened after a failure); the error is the transport's cause.
    pub(crate) async fn push(
        &self,
        address: &str,
        spec: TaskSpec,
    ) -> std::result::Result<TaskReply, String> {
        let connection = match self.connections.get(address).map(|c| c.clone()) {
            Some(connection) if !connection.sender.is_closed() => connection,
            _ => {
                let connection = self.open_connection(address).await?;
                self.connections
                    .insert(address.to_string(), connection.clone());
                connection
            }
        };
        let (tx, rx) = oneshot::channel();
        connection.pending.insert(spec.task_id.clone(), tx);
        if connection.sender.send(spec).is_err() {
            self.connections.remove(address);
            return Err(format!("the connection to worker {address} closed"));
        }
        rx.await
            .unwrap_or_else(|_| Err(format!("the connection to worker {address} closed")))
    }

    async fn open_connection(
        &self,
        address: &str,
    ) -> std::result::Result<Arc<WorkerConnection>, String> {
        let mut client = self.worker_client(address).map_err(|e| e.to_string())?;
        let (sender, receiver) = mpsc::unbounded_channel::<TaskSpec>();
        let replies = client
            .push_tasks(tokio_stream::wrappers::UnboundedReceiverStream::new(
                receiver,
            ))
            .await
            .map_err(|s| fleet_gcs::error::describe_status(&s))?
            .into_inner();
        let connection = Arc::new(WorkerConnection {
            sender,
            pending: DashMap::new(),
        });
        let reader = connection.clone();
        let address = address.to_string();
        tokio::spawn(async move {
            let mut replies = replies;
            let cause = loop {
                match replies.message().await {
                    Ok(Some(reply)) => {
                        if let Some((_, waiter)) = reader.pending.remove(&reply.task_id) {
                            let _ = waiter.send(Ok(reply));
                        }
                    }
                    Ok(None) => break format!("worker {address} closed the task stream"),
                    Err(status) => break fleet_gcs::error::describe_status(&status),
                }
            };
            // Everything still in flight on this stream failed with the worker.
            let ids: Vec<String> = reader.pending.iter().map(|e| e.key().clone()).collect();
            for id in ids {
                if let Some((_, waiter)) = reader.pending.remove(&id) {
                    let _ = waiter.send(Err(cause.clone()));
                }
            }
        });
        Ok(connection)
    }

    /// The serialized value of an object: from this process's store when it owns (or has
    /// cached) it, from the node's object store when it is large, otherwise fetched from its
    /// owner.
    pub async fn get_bytes(&self, id: &str, owner: &str) -> Result<ObjectData> {
        if owner == self.address {
            let stored = self.store.slot(id).wait().await?;
            return self.load(stored).await;
        }
        if let Some(slot) = self.store.existing(id) {
            if let Some(value) = slot.try_get() {
                return self.load(value?).await;
            }
        }
        let mut client = self.worker_client(owner)?;
        let reply = client
            .get_object(GetObjectRequest {
                object_id: id.to_string(),
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
                self.plasma.get(stored).await
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
