//! Where a process's channel receivers are reached: one TCP listener (on the node's
//! address, for other nodes) and one Unix socket in Linux's abstract namespace (for the
//! processes of this node: no file to clean up, gone with the process), started the
//! first time a receiver registers here; the receivers waiting in this process, by channel
//! id; and their records in the GCS (`fleet.channels` KV namespace), which senders read to
//! find them.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OnceCell};

use super::wire::{self, Answer};
use crate::context::CoreWorker;
use crate::error::{Error, Result};

/// The GCS KV namespace of receiver records.
pub(crate) const RECORDS_NAMESPACE: &str = "fleet.channels";
/// A connection that has not finished its handshake by then is dropped (a stranger, or a
/// peer that hung, cannot hold a task of this process).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive: a peer whose node vanished (no FIN, no RST) is found within about
/// idle + interval × retries = 2 + 1 × 4 s, the order of the node-failure detection time;
/// the user timeout does the same for a write that is never acknowledged.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 4;
const USER_TIMEOUT: Duration = Duration::from_secs(8);

/// One end-to-end byte stream of a channel.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Stream {
    /// Writes what the socket takes now without waiting (a dropped sender's last frame).
    pub(crate) fn try_write(&self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(bytes),
            Stream::Unix(s) => s.try_write(bytes),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Socket buffers of a Unix-socket channel: a 1 MiB message passes in one or two wakeups
/// instead of five (the default is about 200 KiB; the kernel caps this at wmem_max).
const UNIX_BUFFER_BYTES: usize = 4 << 20;

/// Larger buffers for a Unix-socket channel (best effort).
pub(crate) fn tune_unix(stream: &tokio::net::UnixStream) {
    let socket = socket2::SockRef::from(stream);
    let _ = socket.set_send_buffer_size(UNIX_BUFFER_BYTES);
    let _ = socket.set_recv_buffer_size(UNIX_BUFFER_BYTES);
}

/// Nagle off (a small message goes now), keepalive and a user timeout (a vanished peer
/// is an error, not a hang).
pub(crate) fn tune_tcp(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let _ = socket.set_tcp_keepalive(&keepalive);
    let _ = socket.set_tcp_user_timeout(Some(USER_TIMEOUT));
}

/// Where a receiver waits: what a sender reads from the GCS.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReceiverRecord {
    /// The node of the receiving process.
    pub node_id: String,
    /// Its TCP listener.
    pub tcp_address: String,
    /// Its abstract Unix socket name (empty where there is none).
    pub unix_name: String,
    /// The process, in words (for the sender's errors).
    pub holder: String,
    /// Which deserialized copy of the end registered (a copy that goes away removes the
    /// record only when it is still its own).
    pub instance: u64,
    /// How many times the end had moved when it registered: a record is replaced only by
    /// one of the same or a later generation, so a late write from a process the end has
    /// left never hides where it went.
    pub generation: u64,
}

/// A sender's connection, handed to the waiting receiver after its handshake.
pub(crate) struct Incoming {
    pub stream: Stream,
    /// The sending process, in words.
    pub sender: String,
}

enum Slot {
    /// A receiver waits for its sender.
    Waiting {
        instance: u64,
        deliver: oneshot::Sender<Incoming>,
    },
    /// Its sender connected.
    Attached { instance: u64 },
}

/// The receivers of this process, by channel id.
static SLOTS: std::sync::LazyLock<DashMap<String, Slot>> = std::sync::LazyLock::new(DashMap::new);

/// Registers a receiver here; its sender's connection arrives on the returned channel.
pub(crate) fn open_slot(channel: &str, instance: u64) -> oneshot::Receiver<Incoming> {
    let (deliver, incoming) = oneshot::channel();
    SLOTS.insert(channel.to_string(), Slot::Waiting { instance, deliver });
    incoming
}

/// Removes a receiver's slot if it is `instance`'s; with `only_waiting`, only while no
/// sender has connected. True when no slot of `instance` remains.
pub(crate) fn close_slot(channel: &str, instance: u64, only_waiting: bool) -> bool {
    SLOTS.remove_if(channel, |_, slot| match slot {
        Slot::Waiting { instance: i, .. } => *i == instance,
        Slot::Attached { instance: i } => *i == instance && !only_waiting,
    });
    !SLOTS.get(channel).is_some_and(|slot| match slot.value() {
        Slot::Waiting { instance: i, .. } | Slot::Attached { instance: i } => *i == instance,
    })
}

/// This process's listeners.
pub(crate) struct Endpoint {
    pub tcp_address: String,
    pub unix_name: String,
}

static ENDPOINT: OnceCell<std::result::Result<Endpoint, String>> = OnceCell::const_new();

/// This process's listeners, started on first use.
pub(crate) async fn endpoint(worker: &Arc<CoreWorker>) -> Result<&'static Endpoint> {
    let started = ENDPOINT.get_or_init(|| start(worker.clone())).await;
    started.as_ref().map_err(|reason| Error::Channel {
        channel: "(any)".into(),
        reason: reason.clone(),
    })
}

/// The host part of `host:port`.
fn host_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map(|(host, _)| host)
        .unwrap_or(address)
}

async fn start(worker: Arc<CoreWorker>) -> std::result::Result<Endpoint, String> {
    let host = host_of(&worker.address).to_string();
    let tcp = TcpListener::bind((host.trim_matches(['[', ']']), 0))
        .await
        .map_err(|e| format!("cannot listen for channel connections on {host}: {e}"))?;
    let port = tcp
        .local_addr()
        .map_err(|e| format!("the channel listener has no address: {e}"))?
        .port();
    let tcp_address = format!("{host}:{port}");
    let token_owner = worker.clone();
    worker.tasks.spawn_watching({
        let stop = worker.tasks.token();
        async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = tcp.accept() => accepted,
                };
                match accepted {
                    Ok((stream, _)) => {
                        tune_tcp(&stream);
                        token_owner.tasks.spawn(handshake(Stream::Tcp(stream)));
                    }
                    Err(error) => {
                        // Out of descriptors, most likely: wait instead of spinning.
                        tracing::warn!(%error, "channel listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
    let unix_name = start_unix(&worker)?;
    Ok(Endpoint {
        tcp_address,
        unix_name,
    })
}

#[cfg(target_os = "linux")]
fn start_unix(worker: &Arc<CoreWorker>) -> std::result::Result<String, String> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!(
        "fleet-channel-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("abstract socket name {name}: {e}"))?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&address)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::UnixListener::from_std)
        .map_err(|e| format!("cannot listen on the Unix socket {name}: {e}"))?;
    let owner = worker.clone();
    let stop = worker.tasks.token();
    worker.tasks.spawn_watching(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    tune_unix(&stream);
                    owner.tasks.spawn(handshake(Stream::Unix(stream)))
                }
                Err(error) => {
                    tracing::warn!(%error, "channel Unix listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(name)
}

#[cfg(not(target_os = "linux"))]
fn start_unix(_worker: &Arc<CoreWorker>) -> std::result::Result<String, String> {
    Ok(String::new())
}

/// Connects to a receiver's Unix socket.
#[cfg(target_os = "linux")]
pub(crate) async fn connect_unix(name: &str) -> std::io::Result<Stream> {
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    // A local connect does not wait on the network: it succeeds or fails at once.
    let stream = std::os::unix::net::UnixStream::connect_addr(&address)?;
    stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    tune_unix(&stream);
    Ok(Stream::Unix(stream))
}

#[cfg(not(target_os = "linux"))]
pub(crate) async fn connect_unix(_name: &str) -> std::io::Result<Stream> {
    Err(std::io::Error::other("no abstract Unix sockets here"))
}

/// The cluster token's bytes (what both ends prove they hold).
pub(crate) fn token() -> Result<Arc<fleet_gcs::auth::ClusterToken>> {
    fleet_gcs::auth::process_token()
        .ok_or_else(|| Error::Internal(fleet_gcs::auth::describe_own_token()))
}

/// This process, in words.
pub(crate) fn describe(worker: &CoreWorker) -> String {
    format!(
        "{} (pid {}) on node {}",
        worker.worker_id, worker.pid, worker.node_id
    )
}

/// A sender connected: check it, then hand it to the waiting receiver.
async fn handshake(mut stream: Stream) {
    let Ok(token) = token() else { return };
    let me = crate::context::try_current()
        .map(|w| describe(w))
        .unwrap_or_else(|| format!("pid {}", std::process::id()));
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let hello = wire::accept_sender(&mut stream, token.secret().as_bytes()).await?;
        let deliver = match SLOTS.get_mut(&hello.channel) {
            Some(mut slot) => match slot.value() {
                Slot::Waiting { instance, .. } => {
                    let instance = *instance;
                    match std::mem::replace(slot.value_mut(), Slot::Attached { instance }) {
                        Slot::Waiting { deliver, .. } => Ok(deliver),
                        Slot::Attached { .. } => Err((Answer::Refused, String::new())),
                    }
                }
                Slot::Attached { .. } => Err((
                    Answer::Refused,
                    format!(
                        "channel {} already has a sender (a channel has one Sender: pass it to one place)",
                        hello.channel
                    ),
                )),
            },
            None => Err((
                Answer::NotHere,
                format!("no receiver of channel {} in {me}", hello.channel),
            )),
        };
        match deliver {
            Ok(deliver) => {
                wire::admit(&mut stream, token.secret().as_bytes(), &hello, &me)
                    .await
                    .map_err(|e| e.to_string())?;
                // A receiver dropped meanwhile drops the stream: the sender sees it closed.
                let _ = deliver.send(Incoming {
                    stream,
                    sender: hello.sender,
                });
                Ok(())
            }
            Err((answer, reason)) => {
                let _ = wire::refuse(&mut stream, answer, &reason).await;
                Err(reason)
            }
        }
    })
    .await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => tracing::debug!(%reason, "channel connection refused"),
        Err(_) => tracing::debug!("channel handshake timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_from_the_workers_address() {
        assert_eq!(host_of("127.0.0.1:4000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:4000"), "[::1]");
        assert_eq!(host_of("node-a"), "node-a");
    }

    #[test]
    fn a_slot_is_closed_only_by_its_own_instance() {
        let _incoming = open_slot("test-slot-a", 1);
        assert!(close_slot("test-slot-a", 2, false));
        assert!(
            SLOTS.contains_key("test-slot-a"),
            "another copy's slot stays"
        );
        assert!(close_slot("test-slot-a", 1, true));
        assert!(!SLOTS.contains_key("test-slot-a"));
        SLOTS.insert("test-slot-b".into(), Slot::Attached { instance: 3 });
        assert!(
            !close_slot("test-slot-b", 3, true),
            "a connected end is not moved"
        );
        assert!(close_slot("test-slot-b", 3, false));
    }
}
