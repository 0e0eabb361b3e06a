//! How replicas reach each other (and clients reach replicas).
//!
//! [`Connector`] makes a gRPC channel to an address: [`TcpConnector`] for real sockets; the
//! simulation passes one over `turmoil`'s network. [`PeerTransport`] keeps one sender task
//! per peer with a bounded queue: the driver never waits on the network, a slow or dead
//! peer only loses messages (which Raft retransmits) and is reported unreachable.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use fleet_proto::gcs::raft_transport_client::RaftTransportClient;
use fleet_proto::gcs::RaftEnvelope;
use raft::prelude::{Message, MessageType};
use raft::SnapshotStatus;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};

use crate::storage::encode_pb;

/// Largest gRPC message a replica accepts or sends (snapshots travel whole).
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;

/// Makes gRPC channels to addresses.
pub trait Connector: Send + Sync + 'static {
    /// A lazily connecting channel to `address` (`HOST:PORT`).
    fn channel(&self, address: &str) -> Result<Channel, String>;
}

/// HTTP/2 flow-control window of one stream (clients and servers of Fleet's services).
pub const STREAM_WINDOW_BYTES: u32 = 16 << 20;
/// HTTP/2 flow-control window of one connection.
pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;

/// Real TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn channel(&self, address: &str) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("'{address}' is not a HOST:PORT address: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            // HTTP/2's default 64 KiB windows stall large transfers (objects, job binaries,
            // snapshots) on a window update every 64 KiB.
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
        Ok(endpoint.connect_lazy())
    }
}

/// What the transport tells the driver.
#[derive(Debug)]
pub enum PeerFeedback {
    /// Sending to this peer failed.
    Unreachable(u64),
    /// A snapshot to this peer finished or failed.
    Snapshot(u64, SnapshotStatus),
}

/// Per-peer sender tasks.
pub struct PeerTransport {
    id: u64,
    cluster_name: String,
    connector: Arc<dyn Connector>,
    addresses: Arc<RwLock<BTreeMap<u64, String>>>,
    peers: Mutex<HashMap<u64, mpsc::Sender<Message>>>,
    feedback: mpsc::Sender<PeerFeedback>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl PeerTransport {
    /// A transport for replica `id`; feedback goes to the returned receiver.
    pub fn new(
        id: u64,
        cluster_name: String,
        connector: Arc<dyn Connector>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> (Self, mpsc::Receiver<PeerFeedback>) {
        let (feedback, feedback_rx) = mpsc::channel(1024);
        (
            PeerTransport {
                id,
                cluster_name,
                connector,
                addresses: Arc::default(),
                peers: Mutex::new(HashMap::new()),
                feedback,
                tasks,
                shutdown,
            },
            feedback_rx,
        )
    }

    /// Where peers are: shared with the driver, which fills it at start and updates it on
    /// membership changes.
    pub fn addresses(&self) -> Arc<RwLock<BTreeMap<u64, String>>> {
        self.addresses.clone()
    }

    /// Queues messages to their peers; never blocks.
    pub fn send(&self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            if to == self.id {
                continue;
            }
            let sender = self.sender(to);
            if let Err(mpsc::error::TrySendError::Full(message)) = sender.try_send(message) {
                tracing::debug!(to, kind = ?message.get_msg_type(), "peer queue full; message dropped");
                let _ = self.feedback.try_send(PeerFeedback::Unreachable(to));
            }
        }
    }

    fn sender(&self, to: u64) -> mpsc::Sender<Message> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = peers.get(&to) {
            if !sender.is_closed() {
                return sender.clone();
            }
        }
        let (tx, rx) = mpsc::channel(4096);
        let task = PeerTask {
            from: self.id,
            to,
            cluster_name: self.cluster_name.clone(),
            connector: self.connector.clone(),
            addresses: self.addresses.clone(),
            feedback: self.feedback.clone(),
        };
        self.tasks.spawn(task.run(rx, self.shutdown.clone()));
        peers.insert(to, tx.clone());
        tx
    }
}

struct PeerTask {
    from: u64,
    to: u64,
    cluster_name: String,
    connector: Arc<dyn Connector>,
    addresses: Arc<RwLock<BTreeMap<u64, String>>>,
    feedback: mpsc::Sender<PeerFeedback>,
}

impl PeerTask {
    async fn run(self, mut rx: mpsc::Receiver<Message>, shutdown: CancellationToken) {
        let mut client: Option<(String, RaftTransportClient<Channel>)> = None;
        // Logged on change only: an unreachable peer is retried on every Raft heartbeat.
        let mut reachable: Option<bool> = None;
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = rx.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
            };
            let mut batch = vec![first];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            let address = self
                .addresses
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&self.to)
                .cloned();
            let Some(address) = address else {
                tracing::debug!(to = self.to, "no address for peer; messages dropped");
                let _ = self.feedback.try_send(PeerFeedback::Unreachable(self.to));
                continue;
            };
            if client.as_ref().is_none_or(|(a, _)| *a != address) {
                match self.connector.channel(&address) {
                    Ok(channel) => {
                        let c = RaftTransportClient::new(channel)
                            .max_decoding_message_size(MAX_MESSAGE_BYTES)
                            .max_encoding_message_size(MAX_MESSAGE_BYTES);
                        client = Some((address.clone(), c));
                    }
                    Err(error) => {
                        tracing::warn!(to = self.to, %address, %error, "cannot reach peer");
                        continue;
                    }
                }
            }
            let snapshots: Vec<u64> = batch
                .iter()
                .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
                .map(|m| m.to)
                .collect();
            let mut envelope = RaftEnvelope {
                cluster_name: self.cluster_name.clone(),
                from: self.from,
                to: self.to,
                messages: Vec::with_capacity(batch.len()),
            };
            for message in &batch {
                match encode_pb(message) {
                    Ok(bytes) => envelope.messages.push(bytes),
                    Err(error) => tracing::error!(%error, "cannot encode raft message"),
                }
            }
            let Some((_, c)) = client.as_mut() else {
                continue;
            };
            let sent = tokio::time::timeout(Duration::from_secs(5), c.send(envelope)).await;
            let ok = matches!(sent, Ok(Ok(_)));
            if ok && reachable != Some(true) {
                if reachable.is_some() {
                    tracing::info!(to = self.to, %address, "replica reachable again");
                }
                reachable = Some(true);
            }
            if !ok && reachable != Some(false) {
                let cause = match &sent {
                    Ok(Err(status)) => crate::error::describe_status(status),
                    _ => "no answer in 5 s".to_string(),
                };
                tracing::warn!(
                    to = self.to,
                    %address,
                    %cause,
                    "cannot reach replica; retrying (check that it runs and that --peers has its address)"
                );
                reachable = Some(false);
            }
            if !ok {
                match &sent {
                    Ok(Ok(_)) => {}
                    Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                        tracing::error!(to = self.to, %address, "{}", status.message());
                    }
                    Ok(Err(status)) => {
                        tracing::debug!(to = self.to, %address, %status, "send to peer failed")
                    }
                    Err(_) => tracing::debug!(to = self.to, %address, "send to peer timed out"),
                }
                let _ = self.feedback.try_send(PeerFeedback::Unreachable(self.to));
            }
            for to in snapshots {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                let _ = self.feedback.try_send(PeerFeedback::Snapshot(to, status));
            }
        }
    }
}
