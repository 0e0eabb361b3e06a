//! How replicas reach each other (and clients reach replicas).
//!
//! [`Connector`] makes a gRPC channel to an address: [`TcpConnector`] for real sockets; the
//! simulation passes one over `turmoil`'s network. [`NetworkSettings`] are this process's
//! place on the network: the IP its servers bind (`FLEET_NODE_IP`, the node's address, which
//! a raylet hands to its workers) and an optional HTTP CONNECT proxy every outgoing
//! connection goes through (`FLEET_EGRESS_PROXY`; the chaos harness's fault-injecting proxy
//! uses it, as would a site that routes traffic through one). [`PeerTransport`] keeps one sender task
//! per peer with a bounded queue: the driver never waits on the network, a slow or dead
//! peer only loses messages (which Raft retransmits) and is reported unreachable.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use fleet_proto::gcs::raft_transport_client::RaftTransportClient;
use fleet_proto::gcs::RaftEnvelope;
use hyper_util::rt::TokioIo;
use raft::prelude::{Message, MessageType};
use raft::SnapshotStatus;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Endpoint, Uri};

use crate::auth::{authed, AuthChannel};
use crate::storage::encode_pb;

/// Largest gRPC message between replicas, and of a read's answer (snapshots travel whole).
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;
/// Largest request of the client API a replica accepts: records are small (a KV value, a
/// batch of 2,048 task events or 4,096 location changes), so a client cannot make a
/// replica buffer more than this per request.
pub const MAX_CLIENT_REQUEST_BYTES: usize = 64 << 20;

/// Makes gRPC channels to addresses.
pub trait Connector: Send + Sync + 'static {
    /// A lazily connecting channel to `address` (`HOST:PORT`) whose requests carry this
    /// process's cluster token.
    fn channel(&self, address: &str) -> Result<AuthChannel, String>;
}

/// HTTP/2 flow-control window of one stream (clients and servers of Fleet's services).
pub const STREAM_WINDOW_BYTES: u32 = 16 << 20;
/// HTTP/2 flow-control window of one connection.
pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;

/// Environment variable: the IP this process's servers bind (default 127.0.0.1).
pub const NODE_IP_ENV: &str = "FLEET_NODE_IP";
/// Environment variable: `HOST:PORT` of an HTTP CONNECT proxy for every outgoing connection.
pub const EGRESS_PROXY_ENV: &str = "FLEET_EGRESS_PROXY";

/// This process's place on the network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkSettings {
    /// The IP servers bind and advertise (None: 127.0.0.1).
    pub node_ip: Option<IpAddr>,
    /// HTTP CONNECT proxy (`HOST:PORT`) that outgoing connections go through.
    pub egress_proxy: Option<String>,
}

static NETWORK: RwLock<Option<NetworkSettings>> = RwLock::new(None);

impl NetworkSettings {
    /// Reads `FLEET_NODE_IP` and `FLEET_EGRESS_PROXY`; a malformed value is an error naming
    /// the variable.
    pub fn from_env() -> Result<Self, String> {
        let node_ip = match std::env::var(NODE_IP_ENV) {
            Ok(text) if !text.is_empty() => Some(text.parse::<IpAddr>().map_err(|e| {
                format!("{NODE_IP_ENV}={text:?} is not an IP address ({e}); unset it or give the node's IP")
            })?),
            _ => None,
        };
        let egress_proxy = match std::env::var(EGRESS_PROXY_ENV) {
            Ok(text) if !text.is_empty() => {
                if !text.contains(':') {
                    return Err(format!(
                        "{EGRESS_PROXY_ENV}={text:?} is not a HOST:PORT address; unset it or give the proxy's address"
                    ));
                }
                Some(text)
            }
            _ => None,
        };
        Ok(NetworkSettings {
            node_ip,
            egress_proxy,
        })
    }

    /// The settings in force: those [`set`](Self::set) gave, else the environment's (a
    /// malformed variable is logged and ignored).
    pub fn current() -> Self {
        if let Some(settings) = NETWORK.read().unwrap_or_else(|e| e.into_inner()).clone() {
            return settings;
        }
        let settings = Self::from_env().unwrap_or_else(|error| {
            tracing::error!(%error, "ignoring the network settings");
            NetworkSettings::default()
        });
        *NETWORK.write().unwrap_or_else(|e| e.into_inner()) = Some(settings.clone());
        settings
    }

    /// Sets this process's settings (a driver placing itself on a node); connections made
    /// after this use them.
    pub fn set(settings: NetworkSettings) {
        *NETWORK.write().unwrap_or_else(|e| e.into_inner()) = Some(settings);
    }

    /// The IP servers bind.
    pub fn bind_ip(&self) -> IpAddr {
        self.node_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
}

/// Opens a tunnel to `target` through the HTTP CONNECT proxy at `proxy`.
pub async fn connect_via_proxy(proxy: &str, target: &str) -> std::io::Result<TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(proxy).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot reach the egress proxy {proxy} ({EGRESS_PROXY_ENV}): {e}"),
        )
    })?;
    stream.set_nodelay(true)?;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    // Read the reply byte by byte up to its blank line: nothing past it may be consumed.
    let mut reply = Vec::with_capacity(64);
    while !reply.ends_with(b"\r\n\r\n") {
        if reply.len() >= 8192 {
            return Err(std::io::Error::other(format!(
                "the egress proxy {proxy} sent an over-long reply to CONNECT {target}"
            )));
        }
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!("the egress proxy {proxy} closed the connection to {target}"),
            ));
        }
        reply.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&reply);
    let status_line = status_line.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("the egress proxy {proxy} refused CONNECT {target}: {status_line}"),
        ));
    }
    Ok(stream)
}

/// Real TCP (through the egress proxy when one is set).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn channel(&self, address: &str) -> Result<AuthChannel, String> {
        // A peer that stops answering (partitioned, frozen) fails the calls waiting on it
        // within 5 s instead of leaving them on a dead connection; pings go out only while
        // calls are in flight.
        tcp_channel(address, Duration::from_secs(2), Duration::from_secs(3))
    }
}

/// Real TCP to the control store: a replica that stops answering (a leader partitioned
/// away) is given up within 1.5 s, so that clients move to the new leader quickly. Safe to
/// be quick: every GCS call is retried, and writes are applied exactly once across retries.
#[derive(Clone, Copy, Debug, Default)]
pub struct ControlStoreConnector;

impl Connector for ControlStoreConnector {
    fn channel(&self, address: &str) -> Result<AuthChannel, String> {
        tcp_channel(address, Duration::from_millis(500), Duration::from_secs(1))
    }
}

/// The runtime that runs every connection's background tasks (its HTTP/2 driver and its
/// request buffer), when the process set one ([`set_io_runtime`]).
static IO_RUNTIME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();

/// Runs the background tasks of every channel made from now on on `handle`'s runtime,
/// whichever runtime first uses the channel. Without it they run on the runtime that made
/// the channel: a channel first used from an actor's own thread then stalls, for every
/// user in the process, whenever that thread is busy, and dies with it (seen as "Service
/// was not ready" from the control store for 30 s). `fleet::init` sets the process's main
/// runtime; the first call wins.
pub fn set_io_runtime(handle: tokio::runtime::Handle) {
    let _ = IO_RUNTIME.set(handle);
}

/// Spawns a connection's tasks on the I/O runtime.
#[derive(Clone)]
struct OnIoRuntime(tokio::runtime::Handle);

impl<F> hyper::rt::Executor<F> for OnIoRuntime
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// A lazily connecting channel to `address` with HTTP/2 keepalive pings every
/// `keepalive_interval` while calls are in flight, each answered within `keepalive_timeout`.
fn tcp_channel(
    address: &str,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
) -> Result<AuthChannel, String> {
    let tls = crate::tls::current()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| format!("'{address}' is not a HOST:PORT address: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(keepalive_interval)
        .keep_alive_timeout(keepalive_timeout)
        // HTTP/2's default 64 KiB windows stall large transfers (objects, job binaries,
        // snapshots) on a window update every 64 KiB.
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
    let endpoint = match IO_RUNTIME.get() {
        Some(handle) => endpoint.executor(OnIoRuntime(handle.clone())),
        None => endpoint,
    };
    let endpoint = match &tls {
        // End to end: through an egress proxy too, the TLS session is with the peer.
        Some(tls) => endpoint
            .tls_config(tls.client_config(address))
            .map_err(|e| format!("TLS settings unusable for {address}: {e}"))?,
        None => endpoint,
    };
    let Some(proxy) = NetworkSettings::current().egress_proxy else {
        return Ok(authed(endpoint.connect_lazy()));
    };
    let target = address.to_string();
    Ok(authed(endpoint.connect_with_connector_lazy(
        tower::service_fn(move |_: Uri| {
            let proxy = proxy.clone();
            let target = target.clone();
            async move {
                let stream = connect_via_proxy(&proxy, &target).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }),
    )))
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
        let mut client: Option<(String, RaftTransportClient<AuthChannel>)> = None;
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
