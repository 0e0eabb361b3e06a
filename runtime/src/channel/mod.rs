//! `fleet::channel`: a typed, ordered, bounded stream from one actor or task to another,
//! on any nodes, without an RPC per message and without the object store in between.
//!
//! ```ignore
//! let (mut tx, rx) = fleet::channel::<Vec<f32>>(16);
//! let consumer = Consumer::remote().spawn().await?;
//! let total = consumer.drain(rx);          // the Receiver moves into the actor
//! for step in 0..100 { tx.send(vec![step as f32; 1 << 18]).await?; }
//! tx.close().await?;
//! ```
//!
//! - Either end is serializable and moves to whichever actor or task it is passed to —
//!   before its first use (an end in use stays where it is; moving it then is an error).
//! - One [`Sender`], one [`Receiver`]; messages arrive in order. At most `capacity` sent
//!   messages are unconsumed at a time: past that, `send` waits (backpressure).
//! - The transport is chosen per pair: a Unix socket between processes of one node, TCP
//!   across nodes. Both ends prove they hold the cluster token (an HMAC challenge: the token
//!   never travels). Vectors of plain numbers (`Vec<f32>`, `Vec<u8>`, ...) are written and
//!   read as their own memory, without a serialization pass.
//! - The receiver registers where it lives in the GCS; the sender finds it there.
//! - An end whose process died makes the other end fail with
//!   [`Error::ChannelPeerLost`] naming the peer, not hang: at once on one node (the kernel
//!   closes a dead process's sockets), within seconds across nodes (TCP keepalive and user
//!   timeout). A dropped `Sender` closes the stream: `recv` then gives `Ok(None)`.
//! - `send` and `recv` are not cancel-safe: a call cancelled mid-message (a `select!`, a
//!   timeout) leaves the channel broken, and the next call says so.
//!
//! - Between processes of one node, large messages (64 KiB and more) go through a
//!   shared-memory ring both map; the socket carries only their frames (`ring`).
//!
//! Modules: `wire` (handshake and frames, pure over any byte stream), `endpoint` (this
//! process's listeners, its waiting receivers, their records in the GCS), `ring` (the
//! shared-memory ring of a same-node pair).

pub(crate) mod endpoint;
mod ring;
pub(crate) mod wire;

use std::any::{Any, TypeId};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

use crate::context::CoreWorker;
use crate::error::{Error, Result};
use endpoint::{Incoming, ReceiverRecord, Stream, RECORDS_NAMESPACE};
pub use wire::MAX_MESSAGE_BYTES;

/// How long a sender waits for its receiver to appear (to be deserialized in its process, or
/// to call `recv` where it was made) before it gives up; `Sender::connect_timeout` changes it.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// Messages at least this large are written from their own memory (no copy into the
/// sender's batch buffer).
const DIRECT_WRITE_BYTES: usize = 64 << 10;
/// A sender's batch buffer is written out when it reaches this.
const BATCH_BYTES: usize = 256 << 10;
/// The receiver's read buffer (small messages come many per read).
const READ_BUFFER_BYTES: usize = 256 << 10;
/// `recv_with` keeps its buffer between messages up to this size (a pipeline of large
/// messages reuses it; one outsized message does not pin its memory).
const MAX_KEPT_SCRATCH_BYTES: usize = 64 << 20;

/// Makes a channel whose sender may be `capacity` messages ahead of its receiver (0 is
/// taken as 1).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let id = format!("ch-{:032x}", rand::random::<u128>());
    let capacity = capacity.clamp(1, u32::MAX as usize) as u32;
    (
        Sender {
            id: id.clone(),
            capacity,
            state: SenderState::Fresh,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            _values: PhantomData,
        },
        {
            let mut receiver = Receiver::unregistered(id, capacity, 0);
            receiver.register_if_running();
            receiver
        },
    )
}

/// How an end travels.
#[derive(Serialize, Deserialize)]
struct WireEnd {
    id: String,
    capacity: u32,
    /// Receivers: how many times the end moved (see `ReceiverRecord::generation`).
    generation: u64,
}

fn broken(channel: &str, reason: impl Into<String>) -> Error {
    Error::Channel {
        channel: channel.to_string(),
        reason: reason.into(),
    }
}

fn lost(channel: &str, peer: &str, cause: impl std::fmt::Display) -> Error {
    Error::ChannelPeerLost {
        channel: channel.to_string(),
        peer: peer.to_string(),
        cause: cause.to_string(),
    }
}

// ----- sender -----

/// The sending end of a [`channel`].
pub struct Sender<T> {
    id: String,
    capacity: u32,
    state: SenderState,
    connect_timeout: Duration,
    _values: PhantomData<fn(T)>,
}

enum SenderState {
    Fresh,
    Connected(Box<Outbound>),
    /// A `send` was cancelled mid-message, or the peer was lost: the reason, said again.
    Broken(Error),
    Closed,
}

struct Outbound {
    stream: Stream,
    /// The receiving process, in words.
    receiver: String,
    credits: u32,
    /// Small messages not yet written.
    batch: Vec<u8>,
    /// Set while a message is being written (a cancelled write leaves it set).
    writing: bool,
    /// The channel's capacity (sizes the ring).
    capacity: u32,
    /// Both ends on one node (a Unix socket): large payloads may go through a ring.
    same_node: bool,
    /// The ring, once the first large message made it.
    ring: Option<SenderRing>,
}

struct SenderRing {
    ring: ring::Ring,
    /// Bytes written (absolute; the receiver's tail follows it).
    head: u64,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("channel", &self.id)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<T: Serialize + 'static> Sender<T> {
    /// The channel's id (what errors and the GCS record name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How long the first `send` waits for the receiver to appear.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sends one message; waits while the channel is full.
    pub async fn send(&mut self, value: T) -> Result<()> {
        self.send_batch(std::iter::once(value)).await.map(|_| ())
    }

    /// Sends one message by reference (the caller keeps it: one value broadcast on many
    /// channels is encoded from the same memory each time).
    pub async fn send_ref(&mut self, value: &T) -> Result<()> {
        self.send_batch(std::iter::once(value)).await.map(|_| ())
    }

    /// Sends messages in order, written together (many small messages per system call);
    /// returns how many. Waits while the channel is full.
    pub async fn send_batch<I>(&mut self, values: I) -> Result<usize>
    where
        I: IntoIterator,
        I::Item: std::borrow::Borrow<T>,
    {
        let id = self.id.clone();
        let link = self.link().await?;
        let mut sent = 0;
        let outcome: std::io::Result<()> = async {
            link.writing = true;
            for value in values {
                link.send_one(&id, Outgoing::Value(std::borrow::Borrow::borrow(&value)))
                    .await?;
                sent += 1;
            }
            link.flush_batch().await?;
            link.writing = false;
            Ok(())
        }
        .await;
        self.settle_send(outcome, sent)
    }

    fn settle_send(&mut self, outcome: std::io::Result<()>, sent: usize) -> Result<usize> {
        match outcome {
            Ok(()) => Ok(sent),
            Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => {
                Err(broken(&self.id, format!("{error} ({sent} sent before it)")))
            }
            Err(error) => Err(self.fail(error)),
        }
    }

    /// Ends the stream: the receiver gets every message sent, then `Ok(None)`.
    pub async fn close(mut self) -> Result<()> {
        match std::mem::replace(&mut self.state, SenderState::Closed) {
            SenderState::Connected(mut link) => {
                let outcome = async {
                    link.flush_batch().await?;
                    link.stream.write_all(&[wire::FRAME_CLOSE]).await?;
                    link.stream.flush().await
                }
                .await;
                let receiver = link.receiver.clone();
                linger(link.stream);
                outcome.map_err(|e| lost(&self.id, &receiver, e))
            }
            SenderState::Broken(error) => Err(error),
            // Never connected: the receiver still waits; connect to tell it the stream is
            // empty, unless nobody ever receives (then the connect times out, as a send would).
            SenderState::Fresh => {
                self.state = SenderState::Fresh;
                let link = self.link().await?;
                let outcome = async {
                    link.stream.write_all(&[wire::FRAME_CLOSE]).await?;
                    link.stream.flush().await
                }
                .await;
                let receiver = link.receiver.clone();
                if let SenderState::Connected(link) =
                    std::mem::replace(&mut self.state, SenderState::Closed)
                {
                    linger(link.stream);
                }
                outcome.map_err(|e| lost(&self.id, &receiver, e))
            }
            SenderState::Closed => Ok(()),
        }
    }

    fn fail(&mut self, error: std::io::Error) -> Error {
        let receiver = match &self.state {
            SenderState::Connected(link) => link.receiver.clone(),
            _ => "receiver".into(),
        };
        let error = lost(&self.id, &format!("receiver, {receiver}"), error);
        self.state = SenderState::Broken(error.clone());
        error
    }

    async fn link(&mut self) -> Result<&mut Outbound> {
        match &self.state {
            SenderState::Fresh => {
                let link = connect(&self.id, self.capacity, self.connect_timeout).await?;
                self.state = SenderState::Connected(Box::new(link));
            }
            SenderState::Connected(link) if link.writing => {
                let error = broken(
                    &self.id,
                    "a send was cancelled in the middle of a message; the stream cannot continue",
                );
                self.state = SenderState::Broken(error.clone());
                return Err(error);
            }
            SenderState::Connected(_) => {}
            SenderState::Broken(error) => return Err(error.clone()),
            SenderState::Closed => return Err(broken(&self.id, "the sender was closed")),
        }
        match &mut self.state {
            SenderState::Connected(link) => Ok(link),
            _ => Err(Error::Internal("channel sender lost its connection".into())),
        }
    }
}

impl Outbound {
    async fn flush_batch(&mut self) -> std::io::Result<()> {
        if !self.batch.is_empty() {
            self.stream.write_all(&self.batch).await?;
            self.batch.clear();
        }
        Ok(())
    }

    async fn read_credit(&mut self) -> std::io::Result<()> {
        let mut frame = [0u8; wire::CREDIT_BYTES];
        self.stream.read_exact(&mut frame).await?;
        if frame[0] != wire::FRAME_CREDIT {
            return Err(std::io::Error::other(format!(
                "a corrupt frame from the receiver (kind {})",
                frame[0]
            )));
        }
        let mut count = [0u8; 4];
        count.copy_from_slice(&frame[1..]);
        self.credits = self.credits.saturating_add(u32::from_le_bytes(count));
        Ok(())
    }

    /// Waits for a credit, then encodes one message (a message refused before a byte of it
    /// was written gives its credit back: the stream is intact).
    async fn send_one<T: Serialize + 'static>(
        &mut self,
        id: &str,
        message: Outgoing<'_, T>,
    ) -> std::io::Result<()> {
        while self.credits == 0 {
            self.flush_batch().await?;
            self.read_credit().await?;
        }
        self.credits -= 1;
        let encoded = match message {
            Outgoing::Value(value) => self.encode(id, value).await,
            Outgoing::Raw { count, memory } => self.encode_raw(id, count, memory).await,
        };
        if let Err(error) = encoded {
            if error.kind() == std::io::ErrorKind::InvalidInput {
                self.credits += 1;
                self.flush_batch().await?;
                self.writing = false;
            }
            return Err(error);
        }
        Ok(())
    }

    /// A numeric vector's count and elements: straight from their memory.
    async fn encode_raw(&mut self, id: &str, count: [u8; 8], memory: &[u8]) -> std::io::Result<()> {
        let len = (count.len() + memory.len()) as u64;
        check_size(id, len)?;
        if memory.len() >= DIRECT_WRITE_BYTES && self.put_in_ring(&[&count, memory]).await? {
            return self.flush_if_full().await;
        }
        self.batch.extend_from_slice(&wire::data_header(len));
        self.batch.extend_from_slice(&count);
        if memory.len() >= DIRECT_WRITE_BYTES {
            self.flush_batch().await?;
            self.stream.write_all(memory).await?;
        } else {
            self.batch.extend_from_slice(memory);
        }
        self.flush_if_full().await
    }

    /// Appends (or, when large, writes) one message.
    async fn encode<T: Serialize + 'static>(&mut self, id: &str, value: &T) -> std::io::Result<()> {
        if let Some((count, memory)) = crate::codec::raw_parts(value) {
            return self.encode_raw(id, count, memory).await;
        }
        let start = self.batch.len();
        self.batch.extend_from_slice(&wire::data_header(0));
        if let Err(error) = bincode::serialize_into(&mut self.batch, value) {
            self.batch.truncate(start);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("cannot encode a message: {error}"),
            ));
        }
        let len = (self.batch.len() - start - wire::DATA_HEADER_BYTES) as u64;
        if let Err(error) = check_size(id, len) {
            self.batch.truncate(start);
            return Err(error);
        }
        self.batch[start..start + wire::DATA_HEADER_BYTES].copy_from_slice(&wire::data_header(len));
        if len as usize >= DIRECT_WRITE_BYTES && self.same_node {
            let payload = self.batch.split_off(start + wire::DATA_HEADER_BYTES);
            self.batch.truncate(start);
            if !self.put_in_ring(&[&payload]).await? {
                self.batch.extend_from_slice(&wire::data_header(len));
                self.batch.extend_from_slice(&payload);
            }
        }
        self.flush_if_full().await
    }

    async fn flush_if_full(&mut self) -> std::io::Result<()> {
        if self.batch.len() >= BATCH_BYTES {
            self.flush_batch().await?;
        }
        Ok(())
    }

    /// Copies a payload (its parts in order) into the shared-memory ring and queues its
    /// frame; false when it does not go that way (ends on different nodes, no ring could
    /// be made, larger than the ring).
    async fn put_in_ring(&mut self, parts: &[&[u8]]) -> std::io::Result<bool> {
        if !self.same_node {
            return Ok(false);
        }
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if self.ring.is_none() {
            match ring::Ring::create(ring::ring_bytes(len, self.capacity)) {
                Ok((ring, name)) => {
                    self.batch.extend_from_slice(&wire::ring_frame(&name));
                    self.ring = Some(SenderRing { ring, head: 0 });
                }
                Err(error) => {
                    // No shared memory here: the socket carries everything.
                    tracing::debug!(%error, "channel ring not made");
                    self.same_node = false;
                    return Ok(false);
                }
            }
        }
        let (start, end) = loop {
            let Some(sender) = self.ring.as_ref() else {
                return Ok(false);
            };
            let size = sender.ring.size();
            if len > size {
                return Ok(false);
            }
            if let Some(spot) = ring::place(sender.head, sender.ring.tail(), size, len) {
                break spot;
            }
            // Full: say so, look once more (the receiver may have just freed space without
            // seeing the flag), else wait for the credit the receiver sends on freeing space.
            sender.ring.set_waiting();
            if let Some(spot) = ring::place(sender.head, sender.ring.tail(), size, len) {
                break spot;
            }
            self.flush_batch().await?;
            self.read_credit().await?;
        };
        let Some(sender) = self.ring.as_mut() else {
            return Ok(false);
        };
        let mut at = start;
        for part in parts {
            if !sender.ring.write(at, part) {
                return Ok(false);
            }
            at += part.len() as u64;
        }
        sender.head = end;
        // The payload's bytes are visible before the frame that names them.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.batch
            .extend_from_slice(&wire::data_shm_frame(len, start));
        Ok(true)
    }
}

fn check_size(id: &str, len: u64) -> std::io::Result<()> {
    if len > MAX_MESSAGE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "a message of {len} bytes on channel {id} is over the limit of {MAX_MESSAGE_BYTES}; split it"
            ),
        ));
    }
    Ok(())
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let SenderState::Connected(link) = &mut self.state {
            if link.writing {
                return;
            }
            // Say the stream ended cleanly (else the receiver takes it for a crash). The
            // batch is empty between sends; the socket takes a byte unless it is full, and
            // then a task finishes the job.
            let mut tail = std::mem::take(&mut link.batch);
            tail.push(wire::FRAME_CLOSE);
            let written = link.stream.try_write(&tail).unwrap_or(0);
            if let (Ok(handle), SenderState::Connected(link)) = (
                tokio::runtime::Handle::try_current(),
                std::mem::replace(&mut self.state, SenderState::Closed),
            ) {
                let mut stream = link.stream;
                handle.spawn(async move {
                    if written < tail.len() {
                        let _ = stream.write_all(&tail[written..]).await;
                        let _ = stream.flush().await;
                    }
                    drain_until_closed(stream).await;
                });
            }
        }
    }
}

/// How long a closed sender's socket waits for the receiver to finish reading.
const LINGER: Duration = Duration::from_secs(60);

/// Ends a sender's connection without losing its last bytes: closing a TCP socket that
/// has unread input (credit frames the sender never needed) sends a reset, and a reset
/// makes the receiver's kernel drop what it had not read yet. So: half-close (the
/// receiver reads everything, then its end closes), read and discard until then, and only
/// then close — in a task, bounded by `LINGER`.
fn linger(stream: Stream) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(drain_until_closed(stream));
    }
}

async fn drain_until_closed(mut stream: Stream) {
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 4096];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

impl<T> Serialize for Sender<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        if !matches!(self.state, SenderState::Fresh) {
            return Err(serde::ser::Error::custom(format!(
                "channel {}'s Sender was already used here; an end moves to another process only before its first use",
                self.id
            )));
        }
        WireEnd {
            id: self.id.clone(),
            capacity: self.capacity,
            generation: 0,
        }
        .serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Sender<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let end = WireEnd::deserialize(deserializer)?;
        Ok(Sender {
            id: end.id,
            capacity: end.capacity.max(1),
            state: SenderState::Fresh,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            _values: PhantomData,
        })
    }
}

/// Plain numbers whose vectors a channel carries as their own memory (no serialization):
/// what `Sender::send_slice` and `Receiver::recv_with` take.
pub trait RawElement: bytemuck::Pod + Serialize + DeserializeOwned + sealed::Sealed {}

mod sealed {
    pub trait Sealed {}
}

macro_rules! raw_elements {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl RawElement for $t {}
    )*};
}
raw_elements!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);

impl<E: RawElement> Sender<Vec<E>> {
    /// Sends a slice as one `Vec<E>` message, written from the slice's own memory (no
    /// vector is made; between processes of one node a large one is copied once, into the
    /// shared ring).
    pub async fn send_slice(&mut self, values: &[E]) -> Result<()> {
        let id = self.id.clone();
        let link = self.link().await?;
        let outcome: std::io::Result<()> = async {
            link.writing = true;
            link.send_one::<Vec<E>>(
                &id,
                Outgoing::Raw {
                    count: (values.len() as u64).to_le_bytes(),
                    memory: bytemuck::cast_slice(values),
                },
            )
            .await?;
            link.flush_batch().await?;
            link.writing = false;
            Ok(())
        }
        .await;
        self.settle_send(outcome, 0).map(|_| ())
    }
}

/// One message to send: a value to encode, or a numeric vector's parts.
enum Outgoing<'a, T> {
    Value(&'a T),
    Raw { count: [u8; 8], memory: &'a [u8] },
}

/// Finds the receiver in the GCS and connects to it.
async fn connect(id: &str, capacity: u32, timeout: Duration) -> Result<Outbound> {
    let worker = crate::context::current()?;
    let token = endpoint::token()?;
    let me = endpoint::describe(&worker);
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let mut last_reason = "its Receiver has not been used or moved into a process yet".to_string();
    loop {
        if let Some(record) = worker.gcs.kv_get(RECORDS_NAMESPACE, id.as_bytes()).await? {
            let record: ReceiverRecord =
                crate::codec::decode(&record.value, &format!("channel {id}'s receiver record"))?;
            match dial(&worker, &record).await {
                Ok(mut stream) => {
                    let greeting =
                        wire::greet_receiver(&mut stream, token.secret().as_bytes(), id, &me)
                            .await
                            .map_err(|e| lost(id, &format!("receiver, {}", record.holder), e))?;
                    match greeting {
                        wire::Greeting::Accepted { receiver } => {
                            let same_node = matches!(stream, Stream::Unix(_));
                            return Ok(Outbound {
                                stream,
                                receiver,
                                credits: capacity,
                                batch: Vec::with_capacity(BATCH_BYTES + DIRECT_WRITE_BYTES),
                                writing: false,
                                capacity,
                                same_node,
                                ring: None,
                            });
                        }
                        wire::Greeting::NotHere(reason) => last_reason = reason,
                        wire::Greeting::Refused(reason) => return Err(broken(id, reason)),
                    }
                }
                Err(error) => {
                    // The process in the record is gone — or the end moved on and a newer
                    // record is coming: look again until the deadline.
                    last_reason = format!("{} does not answer ({error})", record.holder);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(broken(
                id,
                format!("no receiver to connect to after {timeout:?}: {last_reason}"),
            ));
        }
        tokio::time::sleep(nap).await;
        nap = (nap * 2).min(Duration::from_millis(50));
    }
}

async fn dial(worker: &CoreWorker, record: &ReceiverRecord) -> std::io::Result<Stream> {
    if record.node_id == worker.node_id && !record.unix_name.is_empty() {
        if let Ok(stream) = endpoint::connect_unix(&record.unix_name).await {
            return Ok(stream);
        }
    }
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&record.tcp_address),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    endpoint::tune_tcp(&stream);
    Ok(Stream::Tcp(stream))
}

// ----- receiver -----

/// The receiving end of a [`channel`].
pub struct Receiver<T> {
    id: String,
    capacity: u32,
    /// Which copy of the end this is (see `ReceiverRecord::instance`).
    instance: u64,
    /// How many times it moved (see `ReceiverRecord::generation`).
    generation: u64,
    /// Set when it was serialized to move on: the GCS record is then the new holder's.
    moved: std::sync::atomic::AtomicBool,
    state: ReceiverState,
    _values: PhantomData<fn() -> T>,
}

enum ReceiverState {
    /// Not registered anywhere yet.
    Fresh,
    /// Registered here; `published` ends when the GCS has the record.
    Waiting {
        incoming: oneshot::Receiver<Incoming>,
        published: Option<tokio::task::JoinHandle<Result<()>>>,
    },
    Connected(Box<Inbound>),
    Ended,
    Broken(Error),
}

struct Inbound {
    reader: BufReader<Stream>,
    sender: String,
    consumed: u32,
    batch: u32,
    scratch: Vec<u8>,
    /// `recv_with`'s buffer for messages off the socket (aligned for every element type).
    aligned_scratch: Vec<u64>,
    /// Set while a message is being read (a cancelled read leaves it set).
    reading: bool,
    /// The sender's shared-memory ring, once it offered one.
    ring: Option<ring::Ring>,
    /// The sender waits for ring space: grant credits now, not at the batch boundary.
    sender_waits: bool,
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("channel", &self.id)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<T> Receiver<T> {
    fn unregistered(id: String, capacity: u32, generation: u64) -> Self {
        Receiver {
            id,
            capacity,
            instance: rand::random(),
            generation,
            moved: Default::default(),
            state: ReceiverState::Fresh,
            _values: PhantomData,
        }
    }

    /// Registers where the end is (made, or landed), so that its sender can connect — and
    /// be up to `capacity` messages ahead — before the first `recv`. Outside a running
    /// Fleet process, the first `recv` does it.
    fn register_if_running(&mut self) {
        if let Some(worker) = crate::context::try_current().cloned() {
            if tokio::runtime::Handle::try_current().is_ok() {
                self.register(worker);
            }
        }
    }

    /// The channel's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Registers this end in this process and (in a task) in the GCS.
    fn register(&mut self, worker: Arc<CoreWorker>) {
        let incoming = endpoint::open_slot(&self.id, self.instance);
        let (id, instance, generation) = (self.id.clone(), self.instance, self.generation);
        let published = tokio::runtime::Handle::try_current()
            .ok()
            .map(|handle| handle.spawn(publish(worker, id, instance, generation)));
        self.state = ReceiverState::Waiting {
            incoming,
            published,
        };
    }
}

/// Writes the receiver's record unless a later generation of the end has written one
/// (compare-and-set on the record's version, so two writers cannot interleave).
async fn publish(
    worker: Arc<CoreWorker>,
    id: String,
    instance: u64,
    generation: u64,
) -> Result<()> {
    let endpoint = endpoint::endpoint(&worker).await?;
    let record = ReceiverRecord {
        node_id: worker.node_id.clone(),
        tcp_address: endpoint.tcp_address.clone(),
        unix_name: endpoint.unix_name.clone(),
        holder: endpoint::describe(&worker),
        instance,
        generation,
    };
    let value = crate::codec::encode(&record, "a channel receiver record")?;
    let mut attempts = 0;
    loop {
        let existing = worker.gcs.kv_get(RECORDS_NAMESPACE, id.as_bytes()).await?;
        let expected_version = match &existing {
            Some(existing) => {
                let newer = crate::codec::decode::<ReceiverRecord>(&existing.value, "a record")
                    .is_ok_and(|r| r.generation > generation);
                if newer {
                    // The end has moved on from here: its new place is what senders read.
                    return Ok(());
                }
                existing.mod_version
            }
            None => 0,
        };
        match worker
            .gcs
            .kv_compare_and_set(RECORDS_NAMESPACE, id.as_bytes(), &value, expected_version)
            .await
        {
            Ok(_) => return Ok(()),
            // Another copy wrote between the read and the write: read again.
            Err(_) if attempts < 8 => attempts += 1,
            Err(error) => return Err(error.into()),
        }
    }
}

impl<T: DeserializeOwned + 'static> Receiver<T> {
    /// The next message; `Ok(None)` once the sender closed (or was dropped) and every
    /// message was received. Waits for the sender to connect and for messages.
    pub async fn recv(&mut self) -> Result<Option<T>> {
        let id = self.id.clone();
        let link = match self.link().await? {
            Some(link) => link,
            None => return Ok(None),
        };
        link.reading = true;
        let outcome = link.read_message::<T>(&id).await;
        self.settle_recv(outcome).await
    }

    /// After a read: a message is acknowledged (credits go back in batches, or at once to
    /// a sender waiting for ring space); an end or an error stays with the receiver.
    async fn settle_recv<R>(&mut self, outcome: Result<Option<R>>) -> Result<Option<R>> {
        match outcome {
            Ok(Some(value)) => {
                if let ReceiverState::Connected(link) = &mut self.state {
                    link.reading = false;
                    link.consumed += 1;
                    if link.consumed >= link.batch || std::mem::take(&mut link.sender_waits) {
                        let frame = wire::credit_frame(link.consumed);
                        link.consumed = 0;
                        // A sender that closed may be gone already; the next read tells.
                        let _ = link.reader.get_mut().write_all(&frame).await;
                    }
                }
                Ok(Some(value))
            }
            Ok(None) => {
                self.state = ReceiverState::Ended;
                Ok(None)
            }
            Err(error) => {
                self.state = ReceiverState::Broken(error.clone());
                Err(error)
            }
        }
    }

    async fn link(&mut self) -> Result<Option<&mut Inbound>> {
        if matches!(self.state, ReceiverState::Fresh) {
            self.register(crate::context::current()?);
        }
        let publishing = match &mut self.state {
            ReceiverState::Waiting { published, .. } => published.take(),
            _ => None,
        };
        if let Some(task) = publishing {
            let failure = match task.await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error),
                Err(join) => Some(Error::Internal(format!(
                    "channel {}: registering the receiver failed: {join}",
                    self.id
                ))),
            };
            if let Some(error) = failure {
                // Not registered (the GCS did not take the record): the next recv tries again.
                endpoint::close_slot(&self.id, self.instance, true);
                self.state = ReceiverState::Fresh;
                return Err(error);
            }
        }
        if let ReceiverState::Waiting { incoming, .. } = &mut self.state {
            let arrived = incoming.await.map_err(|_| {
                broken(
                    &self.id,
                    "the receiver's registration was replaced (another copy of this end registered in this process)",
                )
            })?;
            self.state = ReceiverState::Connected(Box::new(Inbound {
                reader: BufReader::with_capacity(READ_BUFFER_BYTES, arrived.stream),
                sender: arrived.sender,
                consumed: 0,
                batch: wire::credit_batch(self.capacity),
                scratch: Vec::new(),
                aligned_scratch: Vec::new(),
                reading: false,
                ring: None,
                sender_waits: false,
            }));
        }
        if matches!(&self.state, ReceiverState::Connected(link) if link.reading) {
            let error = broken(
                &self.id,
                "a recv was cancelled in the middle of a message; the stream cannot continue",
            );
            self.state = ReceiverState::Broken(error.clone());
            return Err(error);
        }
        match &mut self.state {
            ReceiverState::Connected(link) => Ok(Some(link)),
            ReceiverState::Ended => Ok(None),
            ReceiverState::Broken(error) => Err(error.clone()),
            ReceiverState::Fresh | ReceiverState::Waiting { .. } => {
                Err(Error::Internal("channel receiver did not connect".into()))
            }
        }
    }
}

impl<E: RawElement> Receiver<Vec<E>> {
    /// The next message, lent to `f` where it lies instead of being copied into a new
    /// vector: between processes of one node a large message is read in the shared ring
    /// itself, otherwise from a buffer the receiver reuses. `Ok(None)` at the end, as
    /// `recv`.
    pub async fn recv_with<R>(&mut self, f: impl FnOnce(&[E]) -> R) -> Result<Option<R>> {
        let id = self.id.clone();
        let link = match self.link().await? {
            Some(link) => link,
            None => return Ok(None),
        };
        link.reading = true;
        let outcome = link.read_raw_with::<E, R>(&id, f).await;
        self.settle_recv(outcome).await
    }
}

/// Where the next message's bytes are.
enum Payload {
    /// Next on the stream, `len` bytes.
    Socket { len: u64 },
    /// In the shared ring at `start`.
    Ring { len: u64, start: u64 },
}

impl Inbound {
    /// One message, or `None` at a clean end.
    /// Reads frames up to the next message: where its bytes are, or `None` at a clean end.
    async fn next_payload(&mut self, id: &str, peer: &str) -> Result<Option<Payload>> {
        loop {
            let kind = match self.reader.read_u8().await {
                Ok(kind) => kind,
                Err(error) if ended_abruptly(&error) => {
                    return Err(lost(
                        id,
                        peer,
                        format!(
                            "the stream ended without a close: the sender's process died ({error})"
                        ),
                    ))
                }
                Err(error) => return Err(lost(id, peer, error)),
            };
            match kind {
                wire::FRAME_CLOSE => return Ok(None),
                wire::FRAME_DATA => break,
                wire::FRAME_RING => {
                    let len = self
                        .reader
                        .read_u16_le()
                        .await
                        .map_err(|e| lost(id, peer, e))?;
                    if len > 255 {
                        return Err(lost(
                            id,
                            peer,
                            format!("a corrupt frame: a ring name of {len} bytes"),
                        ));
                    }
                    let mut name = vec![0u8; usize::from(len)];
                    self.reader
                        .read_exact(&mut name)
                        .await
                        .map_err(|e| lost(id, peer, e))?;
                    let name = String::from_utf8_lossy(&name).into_owned();
                    let mapped = ring::Ring::open(&name)
                        .map_err(|e| lost(id, peer, format!("its ring {name}: {e}")))?;
                    self.ring = Some(mapped);
                }
                wire::FRAME_DATA_SHM => {
                    let len = self
                        .reader
                        .read_u64_le()
                        .await
                        .map_err(|e| lost(id, peer, e))?;
                    let start = self
                        .reader
                        .read_u64_le()
                        .await
                        .map_err(|e| lost(id, peer, e))?;
                    return Ok(Some(Payload::Ring { len, start }));
                }
                other => return Err(lost(id, peer, format!("a corrupt frame (kind {other})"))),
            }
        }
        let len = self
            .reader
            .read_u64_le()
            .await
            .map_err(|e| lost(id, peer, e))?;
        if len > MAX_MESSAGE_BYTES {
            return Err(lost(
                id,
                peer,
                format!("a corrupt frame: {len} bytes is over the limit of {MAX_MESSAGE_BYTES}"),
            ));
        }
        Ok(Some(Payload::Socket { len }))
    }

    async fn read_message<T: DeserializeOwned + 'static>(&mut self, id: &str) -> Result<Option<T>> {
        let peer = format!("sender, {}", self.sender);
        let len = match self.next_payload(id, &peer).await? {
            None => return Ok(None),
            Some(Payload::Ring { len, start }) => {
                return self.read_from_ring(id, &peer, len, start).map(Some)
            }
            Some(Payload::Socket { len }) => len,
        };
        if let Some(value) = read_raw_vec::<T>(&mut self.reader, len)
            .await
            .map_err(|e| lost(id, &peer, e))?
        {
            return Ok(Some(value));
        }
        self.scratch.resize(len as usize, 0);
        self.reader
            .read_exact(&mut self.scratch)
            .await
            .map_err(|e| lost(id, &peer, e))?;
        let value = crate::codec::decode(&self.scratch, &format!("a message on channel {id}"))?;
        if self.scratch.capacity() > READ_BUFFER_BYTES {
            self.scratch = Vec::new();
        }
        Ok(Some(value))
    }
}

impl Inbound {
    /// A message whose bytes are in the ring (its frame's kind was read).
    fn read_from_ring<T: DeserializeOwned + 'static>(
        &mut self,
        id: &str,
        peer: &str,
        len: u64,
        start: u64,
    ) -> Result<T> {
        let ring = self
            .ring
            .as_ref()
            .ok_or_else(|| lost(id, peer, "a corrupt frame: ring data before the ring"))?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let bytes = ring.read(start, len).ok_or_else(|| {
            lost(
                id,
                peer,
                format!("a corrupt frame: {len} bytes at {start} are not in the ring"),
            )
        })?;
        let what = format!("a message on channel {id}");
        let value = match raw_vec_from_slice::<T>(bytes) {
            Some(Ok(value)) => value,
            Some(Err(reason)) => return Err(lost(id, peer, reason)),
            None => crate::codec::decode(bytes, &what)?,
        };
        ring.release_to(start + len);
        self.sender_waits = ring.take_waiting();
        Ok(value)
    }

    /// The next message as a numeric vector lent to `f` (see `Receiver::recv_with`).
    async fn read_raw_with<E: RawElement, R>(
        &mut self,
        id: &str,
        f: impl FnOnce(&[E]) -> R,
    ) -> Result<Option<R>> {
        let peer = format!("sender, {}", self.sender);
        let width = std::mem::size_of::<E>() as u64;
        let counted = |bytes: &[u8]| -> std::result::Result<usize, String> {
            let Some((count, elements)) = bytes.split_first_chunk::<8>() else {
                return Err("a corrupt frame: no element count".into());
            };
            let count = u64::from_le_bytes(*count);
            if count.checked_mul(width) != Some(elements.len() as u64) {
                return Err(format!(
                    "a corrupt frame (or a message that is not a vector of {}): {count} elements in {} bytes",
                    std::any::type_name::<E>(),
                    elements.len()
                ));
            }
            Ok(count as usize)
        };
        match self.next_payload(id, &peer).await? {
            None => Ok(None),
            Some(Payload::Ring { len, start }) => {
                let ring = self
                    .ring
                    .as_ref()
                    .ok_or_else(|| lost(id, &peer, "a corrupt frame: ring data before the ring"))?;
                std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
                let bytes = ring.read(start, len).ok_or_else(|| {
                    lost(
                        id,
                        &peer,
                        format!("a corrupt frame: {len} bytes at {start} are not in the ring"),
                    )
                })?;
                counted(bytes).map_err(|reason| lost(id, &peer, reason))?;
                let elements = &bytes[8..];
                // Ring payloads start on 64-byte boundaries, so the elements (after the
                // count) are aligned; a copy covers any that were not.
                let value = match bytemuck::try_cast_slice::<u8, E>(elements) {
                    Ok(values) => f(values),
                    Err(_) => {
                        let copied: Vec<E> = elements
                            .chunks_exact(width as usize)
                            .map(bytemuck::pod_read_unaligned)
                            .collect();
                        f(&copied)
                    }
                };
                ring.release_to(start + len);
                self.sender_waits = ring.take_waiting();
                Ok(Some(value))
            }
            Some(Payload::Socket { len }) => {
                if len < 8 {
                    return Err(lost(id, &peer, "a corrupt frame: no element count"));
                }
                let count = self
                    .reader
                    .read_u64_le()
                    .await
                    .map_err(|e| lost(id, &peer, e))?;
                if count.checked_mul(width) != Some(len - 8) {
                    return Err(lost(
                        id,
                        &peer,
                        format!("a corrupt frame (or a message that is not a vector of {}): {count} elements in {} bytes", std::any::type_name::<E>(), len - 8),
                    ));
                }
                // Read into reused, 8-byte-aligned memory.
                let words = ((len - 8) as usize).div_ceil(8);
                if self.aligned_scratch.len() < words {
                    self.aligned_scratch.resize(words, 0);
                }
                let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.aligned_scratch)
                    [..(len - 8) as usize];
                self.reader
                    .read_exact(bytes)
                    .await
                    .map_err(|e| lost(id, &peer, e))?;
                let value = f(bytemuck::cast_slice::<u8, E>(bytes));
                if self.aligned_scratch.len() * 8 > MAX_KEPT_SCRATCH_BYTES {
                    self.aligned_scratch = Vec::new();
                }
                Ok(Some(value))
            }
        }
    }
}

/// `read_raw_vec`'s twin for bytes already in memory (a ring).
fn raw_vec_from_slice<T: 'static>(bytes: &[u8]) -> Option<std::result::Result<T, String>> {
    if cfg!(target_endian = "big") {
        return None;
    }
    macro_rules! numeric_vec {
        ($($t:ty),*) => {$(
            if TypeId::of::<T>() == TypeId::of::<Vec<$t>>() {
                let width = std::mem::size_of::<$t>();
                let Some((count, elements)) = bytes.split_first_chunk::<8>() else {
                    return Some(Err("a corrupt frame: no element count".into()));
                };
                let count = u64::from_le_bytes(*count);
                if count.checked_mul(width as u64) != Some(elements.len() as u64) {
                    return Some(Err(format!("a corrupt frame: {count} elements in {} bytes", elements.len())));
                }
                // One copy into fresh memory, without zeroing it first (a memset would be
                // a third pass over the bytes, after the sender's and before this one).
                let mut values: Vec<$t> = Vec::with_capacity(count as usize);
                // SAFETY: the vector has room for `count` elements, `elements` holds exactly
                // `count * width` bytes (checked above) and does not overlap the new
                // allocation, and every bit pattern is a valid plain number; the length is
                // set only after the bytes are in place.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        elements.as_ptr(),
                        values.as_mut_ptr().cast::<u8>(),
                        elements.len(),
                    );
                    values.set_len(count as usize);
                }
                let boxed: Box<dyn Any> = Box::new(values);
                return boxed.downcast::<T>().ok().map(|v| Ok(*v));
            }
        )*};
    }
    numeric_vec!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);
    None
}

/// The connection went away under a reader (what a killed peer's kernel does to it).
fn ended_abruptly(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// For a vector of plain numbers, reads the message straight into the vector's memory
/// (the layout `codec::raw_parts` writes: a u64 count, then the elements). `None` for other
/// types.
async fn read_raw_vec<T: 'static>(
    reader: &mut BufReader<Stream>,
    len: u64,
) -> std::io::Result<Option<T>> {
    if cfg!(target_endian = "big") {
        return Ok(None);
    }
    macro_rules! numeric_vec {
        ($($t:ty),*) => {$(
            if TypeId::of::<T>() == TypeId::of::<Vec<$t>>() {
                let count = reader.read_u64_le().await?;
                let width = std::mem::size_of::<$t>() as u64;
                if len < 8 || count.checked_mul(width) != Some(len - 8) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("a corrupt frame: {count} elements in {len} bytes"),
                    ));
                }
                let mut values: Vec<$t> = vec![<$t>::default(); count as usize];
                reader.read_exact(bytemuck::cast_slice_mut(&mut values)).await?;
                let boxed: Box<dyn Any> = Box::new(values);
                return Ok(boxed.downcast::<T>().ok().map(|v| *v));
            }
        )*};
    }
    numeric_vec!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);
    Ok(None)
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        if matches!(self.state, ReceiverState::Fresh) {
            return;
        }
        endpoint::close_slot(&self.id, self.instance, false);
        if self.moved.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // Remove the GCS record if it is still this copy's.
        let Some(worker) = crate::context::try_current().cloned() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (id, instance) = (self.id.clone(), self.instance);
        handle.spawn(async move {
            if let Ok(Some(record)) = worker.gcs.kv_get(RECORDS_NAMESPACE, id.as_bytes()).await {
                let mine = crate::codec::decode::<ReceiverRecord>(&record.value, "a record")
                    .is_ok_and(|r| r.instance == instance);
                if mine {
                    let _ = worker
                        .gcs
                        .kv_delete(RECORDS_NAMESPACE, id.as_bytes(), false)
                        .await;
                }
            }
        });
    }
}

impl<T> Serialize for Receiver<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let movable = match &self.state {
            ReceiverState::Fresh => true,
            // Waiting, no sender yet: the end may still move on (its slot here closes, so a
            // sender that reads the old record is told to look again).
            ReceiverState::Waiting { .. } => endpoint::close_slot(&self.id, self.instance, true),
            _ => false,
        };
        if !movable {
            return Err(serde::ser::Error::custom(format!(
                "channel {}'s Receiver was already used here; an end moves to another process only before its first use",
                self.id
            )));
        }
        self.moved.store(true, std::sync::atomic::Ordering::SeqCst);
        WireEnd {
            id: self.id.clone(),
            capacity: self.capacity,
            generation: self.generation + 1,
        }
        .serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Receiver<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let end = WireEnd::deserialize(deserializer)?;
        let mut receiver = Receiver::unregistered(end.id, end.capacity.max(1), end.generation);
        receiver.register_if_running();
        Ok(receiver)
    }
}
