//! The gRPC services of one replica: `Gcs` (clients) and `RaftTransport` (peers).

use std::pin::Pin;
use std::time::Duration;

use fleet_proto::gcs::gcs_server::Gcs;
use fleet_proto::gcs::raft_transport_server::RaftTransport;
use fleet_proto::gcs::{
    ChangeMemberRequest, ChangeMemberResponse, EventKind, RaftAck, RaftEnvelope, ReadRequest,
    ReadResponse, StatusRequest, StatusResponse, WatchEvent, WatchRequest, WatchResponse,
    WriteRequest, WriteResponse,
};
use futures::Stream;
use raft::prelude::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::node::{NodeHandle, NodeRequest};
use crate::storage::decode_pb;

/// How often an idle watch stream reports progress (the version it has reached).
const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// The client-facing service.
#[derive(Clone)]
pub struct GcsService {
    node: NodeHandle,
    shutdown: CancellationToken,
}

impl GcsService {
    /// A service over a running driver.
    pub fn new(node: NodeHandle, shutdown: CancellationToken) -> Self {
        GcsService { node, shutdown }
    }

    async fn ask<T>(
        &self,
        what: &'static str,
        build: impl FnOnce(oneshot::Sender<Result<T>>) -> NodeRequest,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.node
            .requests
            .send(build(tx))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let timeout = self.node.config.request_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::Timeout {
                what,
                millis: timeout.as_millis() as u64,
            }),
        }
    }

    /// Waits until a read on this replica is linearizable (ReadIndex).
    pub async fn read_barrier(&self) -> Result<()> {
        if !self.node.view.is_leader() {
            return Err(self.node.not_leader());
        }
        self.ask("a read index confirmation", |respond| {
            NodeRequest::ReadBarrier { respond }
        })
        .await
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Gcs for GcsService {
    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        if !self.node.view.is_leader() {
            return Err(self.node.not_leader().into());
        }
        let request = request.into_inner();
        if request
            .command
            .as_ref()
            .and_then(|c| c.op.as_ref())
            .is_none()
        {
            return Err(Error::InvalidRequest("write carries no command".into()).into());
        }
        let answer = self
            .ask("the write to commit", |respond| NodeRequest::Propose {
                request,
                respond,
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let request = request.into_inner();
        if !request.stale_ok {
            self.read_barrier().await?;
        }
        let state = self.node.state.read().unwrap_or_else(|e| e.into_inner());
        Ok(Response::new(ReadResponse {
            records: state.read(&request),
            version: state.applied(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        // Watches are served by the leader so that a watcher never follows a replica cut off
        // from the cluster; when leadership moves the stream ends and the client resumes
        // from its last version at the new leader.
        if !self.node.view.is_leader() {
            return Err(self.node.not_leader().into());
        }
        let request = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let node = self.node.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(serve_watch(node, request, tx, shutdown));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let (tx, rx) = oneshot::channel();
        self.node
            .requests
            .send(NodeRequest::Status { respond: tx })
            .await
            .map_err(|_| Status::from(Error::ShuttingDown))?;
        let status = rx.await.map_err(|_| Status::from(Error::ShuttingDown))?;
        Ok(Response::new(status))
    }

    async fn change_member(
        &self,
        request: Request<ChangeMemberRequest>,
    ) -> Result<Response<ChangeMemberResponse>, Status> {
        let change = request.into_inner();
        if change.id == 0 {
            return Err(
                Error::InvalidRequest("member id 0 is reserved; ids start at 1".into()).into(),
            );
        }
        let members = self
            .ask("the membership change to commit", |respond| {
                NodeRequest::ChangeMember { change, respond }
            })
            .await?;
        Ok(Response::new(ChangeMemberResponse { members }))
    }
}

async fn serve_watch(
    node: NodeHandle,
    request: WatchRequest,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    shutdown: CancellationToken,
) {
    let mut applied_rx = node.applied.clone();
    let mut cursor = request.start_version;
    let mut last_sent_version = 0;
    let mut last_sent_at = tokio::time::Instant::now();
    let mut progress = tokio::time::interval(WATCH_PROGRESS_INTERVAL);
    loop {
        let response = {
            let state = node.state.read().unwrap_or_else(|e| e.into_inner());
            let applied = state.applied();
            let resync = |state: &crate::state_machine::StateMachine| WatchResponse {
                resync: true,
                events: state
                    .matching_records(&request.filters)
                    .into_iter()
                    .map(|record| WatchEvent {
                        version: record.mod_version,
                        kind: EventKind::Put as i32,
                        record: Some(record),
                    })
                    .collect(),
                version: applied,
            };
            if cursor == 0 {
                Some(resync(&state))
            } else if cursor <= applied {
                match state.changes_since(cursor, &request.filters) {
                    Some(events) if !events.is_empty() || applied > last_sent_version => {
                        Some(WatchResponse {
                            resync: false,
                            events,
                            version: applied,
                        })
                    }
                    Some(_) => None,
                    None => Some(resync(&state)),
                }
            } else {
                None
            }
        };
        if let Some(response) = response {
            let version = response.version;
            let has_events = !response.events.is_empty() || response.resync;
            // Empty progress reports are rate-limited; events go out at once.
            if has_events || progress_due(&mut progress) {
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
                last_sent_version = version;
                cursor = version + 1;
                last_sent_at = tokio::time::Instant::now();
            }
        } else if last_sent_at.elapsed() >= WATCH_PROGRESS_INTERVAL && cursor > 0 {
            // Nothing changed: a heartbeat, so a watcher can tell a quiet leader from one
            // it can no longer hear (and resume elsewhere).
            let heartbeat = WatchResponse {
                resync: false,
                events: Vec::new(),
                version: cursor - 1,
            };
            if tx.send(Ok(heartbeat)).await.is_err() {
                return;
            }
            last_sent_at = tokio::time::Instant::now();
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = tx.send(Err(Error::ShuttingDown.into())).await;
                return;
            }
            _ = tx.closed() => return,
            changed = applied_rx.changed() => {
                if changed.is_err() {
                    let _ = tx.send(Err(Error::ShuttingDown.into())).await;
                    return;
                }
            }
            _ = progress.tick() => {}
        }
        if !node.view.is_leader() {
            let _ = tx.send(Err(node.not_leader().into())).await;
            return;
        }
    }
}

fn progress_due(interval: &mut tokio::time::Interval) -> bool {
    use futures::FutureExt;
    interval.tick().now_or_never().is_some()
}

/// The peer-facing service.
#[derive(Clone)]
pub struct RaftService {
    node: NodeHandle,
}

impl RaftService {
    /// A service feeding peer messages into the driver.
    pub fn new(node: NodeHandle) -> Self {
        RaftService { node }
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn send(&self, request: Request<RaftEnvelope>) -> Result<Response<RaftAck>, Status> {
        let envelope = request.into_inner();
        let ours = &self.node.config.cluster_name;
        if envelope.cluster_name != *ours {
            return Err(Status::failed_precondition(format!(
                "replica {} at {} belongs to cluster '{ours}', but replica {} sent it a message for \
                 cluster '{}'; check --peers and --cluster-name",
                self.node.config.id, self.node.config.advertise_address, envelope.from, envelope.cluster_name
            )));
        }
        let own_id = self.node.config.id;
        check_sender(own_id, envelope.from, &self.node.addresses)?;
        // Decode everything before queueing anything: an envelope is taken whole or not at all.
        let mut messages = Vec::with_capacity(envelope.messages.len());
        for bytes in envelope.messages {
            let message: Message = decode_pb(&bytes, "raft message").map_err(|reason| {
                Status::invalid_argument(format!("from replica {}: {reason}", envelope.from))
            })?;
            if message.from != envelope.from || message.to != own_id {
                return Err(Status::invalid_argument(format!(
                    "replica {} sent replica {own_id} a raft message from {} to {}: a message's \
                     sender and receiver must match its envelope",
                    envelope.from, message.from, message.to
                )));
            }
            messages.push(message);
        }
        for message in messages {
            self.node
                .raft_messages
                .send(message)
                .await
                .map_err(|_| Status::from(Error::ShuttingDown))?;
        }
        Ok(Response::new(RaftAck {}))
    }
}

/// A Raft envelope is taken only from another member of the group. A replica that knows no
/// members yet (one started with `--join`, before its first snapshot) takes any member's
/// messages; the cluster token already keeps strangers out.
fn check_sender(
    own_id: u64,
    from: u64,
    members: &std::sync::RwLock<std::collections::BTreeMap<u64, String>>,
) -> Result<(), Status> {
    let members = members.read().unwrap_or_else(|e| e.into_inner());
    if from == own_id || from == 0 || (!members.is_empty() && !members.contains_key(&from)) {
        return Err(Status::permission_denied(format!(
            "replica {own_id} takes raft messages only from the other members of its group \
             ({:?}); replica {from} is not one (a removed replica, or a misconfigured --id)",
            members
                .keys()
                .filter(|id| **id != own_id)
                .collect::<Vec<_>>()
        )));
    }
    Ok(())
}
