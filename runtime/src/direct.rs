//! The direct call path: task and actor-call pushes and their replies as length-prefixed
//! protobuf frames on a plain byte stream, instead of a gRPC stream through HTTP/2
//! connection tasks. gRPC stays for the control plane (objects, borrows, exit).
//!
//! - **Where.** Between processes of one machine, an abstract Unix socket named after the
//!   worker's address (`unix_name`); across machines, the worker's own TCP port: the first
//!   bytes of a connection tell the two protocols apart (`MAGIC` vs HTTP/2's preface or a
//!   TLS hello), so no address is added anywhere. With TLS on, only the Unix socket is used
//!   (it never leaves the machine); TCP calls keep to gRPC, which is encrypted.
//! - **Trust.** The caller speaks first; both sides prove they hold the cluster token with
//!   HMAC-SHA256 over two fresh nonces (the token never travels), and the worker answers
//!   with a status before any frame is read.
//! - **Frames.** `u32` little-endian length, then a `TaskSpec` (caller → worker) or a
//!   `TaskReply` (worker → caller); a length past `MAX_MESSAGE_BYTES` ends the connection.
//! - **Writes without a hand-off.** [`FrameWriter::send`] is synchronous: the sending task
//!   appends its frame and, when no one else is writing, writes it to the socket itself
//!   (non-blocking). Only when the socket is full does a spawned task finish the write, so
//!   a frame is never cut by a cancelled caller, and frames queued meanwhile go out together.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use crate::channel::wire::{hmac_sha256, read_name, write_name};

/// The first bytes a caller sends.
pub(crate) const MAGIC: &[u8; 8] = b"FLDCALL1";
/// A connection that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a connection may have queued and unwritten before senders wait (backpressure on a
/// peer that reads slowly).
const MAX_PENDING_BYTES: usize = 64 << 20;
/// Read buffer: many small frames per read.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// The worker's answer to a handshake.
const ACCEPTED: u8 = 0;
const REFUSED: u8 = 1;

/// The abstract Unix socket of the worker serving gRPC at `address`.
pub(crate) fn unix_name(address: &str) -> String {
    format!("fleet-calls-{address}")
}

/// One direct connection, before it is split.
pub(crate) enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A connection's reading half.
pub(crate) enum ReadHalf {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Unix(tokio::net::unix::OwnedReadHalf),
}

/// A connection's writing half.
pub(crate) enum WriteHalf {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Unix(tokio::net::unix::OwnedWriteHalf),
}

impl Conn {
    fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Conn::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Conn::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
        }
    }
}

macro_rules! delegate_io {
    ($ty:ident) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $ty::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
                    $ty::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}
delegate_io!(ReadHalf);

impl AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Conn::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Conn::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl WriteHalf {
    fn try_write(&self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            WriteHalf::Tcp(s) => s.try_write(bytes),
            WriteHalf::Unix(s) => s.try_write(bytes),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            WriteHalf::Tcp(s) => s.write_all(bytes).await,
            WriteHalf::Unix(s) => s.write_all(bytes).await,
        }
    }
}

/// The writing side of a connection, shared by every task that sends on it.
#[derive(Clone)]
pub(crate) struct FrameWriter {
    inner: Arc<WriterInner>,
}

struct WriterInner {
    /// Frames not yet handed to the socket, in order.
    pending: Mutex<Vec<u8>>,
    /// Held by whoever writes to the socket.
    socket: Arc<tokio::sync::Mutex<WriteHalf>>,
    /// Why the connection can no longer be written (set once).
    broken: std::sync::OnceLock<String>,
    /// Signalled when the pending bytes went out.
    drained: tokio::sync::Notify,
    /// The runtime whose reactor the socket belongs to: a write that must wait runs there,
    /// never on an actor's thread (which a busy method may hold).
    runtime: tokio::runtime::Handle,
}

impl FrameWriter {
    fn new(socket: WriteHalf) -> Self {
        FrameWriter {
            inner: Arc::new(WriterInner {
                pending: Mutex::new(Vec::new()),
                socket: Arc::new(tokio::sync::Mutex::new(socket)),
                broken: std::sync::OnceLock::new(),
                drained: tokio::sync::Notify::new(),
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// Why nothing more can be sent, if so.
    pub(crate) fn broken(&self) -> Option<&str> {
        self.inner.broken.get().map(String::as_str)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one message as a frame: written now when the socket takes it, else queued
    /// behind the write in progress. Waits only while `MAX_PENDING_BYTES` are queued.
    pub(crate) async fn send<M: Message>(&self, message: &M) -> Result<(), String> {
        loop {
            if let Some(cause) = self.broken() {
                return Err(cause.to_string());
            }
            let drained = self.inner.drained.notified();
            if self.pending().len() < MAX_PENDING_BYTES {
                break;
            }
            drained.await;
        }
        self.send_now(message)
    }

    /// Sends one message as a frame without waiting (replies: their number is bounded by
    /// the calls admitted).
    pub(crate) fn send_now<M: Message>(&self, message: &M) -> Result<(), String> {
        if let Some(cause) = self.broken() {
            return Err(cause.to_string());
        }
        {
            let mut pending = self.pending();
            let len = message.encoded_len();
            pending.reserve(4 + len);
            pending.extend_from_slice(&(len as u32).to_le_bytes());
            // Encoding into a Vec cannot fail (it grows).
            let _ = message.encode(&mut *pending);
        }
        self.flush();
        Ok(())
    }

    /// Writes what is queued, unless another task is writing (it will see the new bytes).
    fn flush(&self) {
        loop {
            let Ok(mut socket) = self.inner.socket.clone().try_lock_owned() else {
                return;
            };
            let mut batch = std::mem::take(&mut *self.pending());
            if batch.is_empty() {
                drop(socket);
                // A frame queued after the take but before the unlock is seen here.
                if self.pending().is_empty() {
                    self.inner.drained.notify_waiters();
                    return;
                }
                continue;
            }
            let mut written = 0;
            while written < batch.len() {
                match socket.try_write(&batch[written..]) {
                    Ok(0) => {
                        self.fail("the connection closed".into());
                        return;
                    }
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        self.fail(e.to_string());
                        return;
                    }
                }
            }
            if written < batch.len() {
                // The socket is full: a task finishes this write (holding the lock), so no
                // caller's cancellation can cut a frame in half.
                batch.drain(..written);
                let this = self.clone();
                self.inner.runtime.spawn(async move {
                    if let Err(e) = socket.write_all(&batch).await {
                        this.fail(e.to_string());
                        return;
                    }
                    drop(socket);
                    this.flush();
                });
                return;
            }
            drop(socket);
        }
    }

    fn fail(&self, cause: String) {
        let _ = self.inner.broken.set(cause);
        self.pending().clear();
        self.inner.drained.notify_waiters();
    }
}

/// Reads the next frame's bytes; `None` at a clean end of the stream.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {limit})"),
        ));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(body))
}

fn proof(token: &[u8], role: &[u8], client: &[u8; 32], server: &[u8; 32]) -> [u8; 32] {
    hmac_sha256(token, &[b"fleet-calls/", role, client, server])
}

/// The caller's half of the handshake; `Err` is why the worker cannot be called this way.
async fn greet(stream: &mut Conn, token: &[u8], caller: &str) -> Result<(), String> {
    let client: [u8; 32] = rand::random();
    let mut hello = Vec::with_capacity(40);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&client);
    stream.write_all(&hello).await.map_err(|e| e.to_string())?;
    write_name(stream, caller)
        .await
        .map_err(|e| e.to_string())?;
    let mut server = [0u8; 32];
    let mut mac = [0u8; 32];
    stream
        .read_exact(&mut server)
        .await
        .map_err(|e| format!("no answer to the handshake: {e}"))?;
    stream
        .read_exact(&mut mac)
        .await
        .map_err(|e| e.to_string())?;
    if !fleet_gcs::auth::constant_time_eq(&proof(token, b"worker", &client, &server), &mac) {
        return Err("the worker does not hold this cluster's token".into());
    }
    stream
        .write_all(&proof(token, b"caller", &client, &server))
        .await
        .map_err(|e| e.to_string())?;
    match stream.read_u8().await.map_err(|e| e.to_string())? {
        ACCEPTED => Ok(()),
        _ => Err(format!(
            "refused: {}",
            read_name(stream).await.unwrap_or_default()
        )),
    }
}

/// The worker's half of the handshake (the magic already peeked, not read).
async fn accept(stream: &mut Conn, token: &[u8]) -> Result<String, String> {
    let mut magic = [0u8; 8];
    stream
        .read_exact(&mut magic)
        .await
        .map_err(|e| e.to_string())?;
    if &magic != MAGIC {
        return Err("not a direct-call connection".into());
    }
    let mut client = [0u8; 32];
    stream
        .read_exact(&mut client)
        .await
        .map_err(|e| e.to_string())?;
    let caller = read_name(stream).await?;
    let server: [u8; 32] = rand::random();
    let mut answer = Vec::with_capacity(64);
    answer.extend_from_slice(&server);
    answer.extend_from_slice(&proof(token, b"worker", &client, &server));
    stream.write_all(&answer).await.map_err(|e| e.to_string())?;
    let mut mac = [0u8; 32];
    stream
        .read_exact(&mut mac)
        .await
        .map_err(|e| e.to_string())?;
    if !fleet_gcs::auth::constant_time_eq(&proof(token, b"caller", &client, &server), &mac) {
        let reason = "the caller does not hold this cluster's token";
        let _ = stream.write_all(&[REFUSED]).await;
        let _ = write_name(stream, reason).await;
        return Err(format!("{reason} (it says it is {caller})"));
    }
    stream
        .write_all(&[ACCEPTED])
        .await
        .map_err(|e| e.to_string())?;
    Ok(caller)
}

fn token() -> Result<Arc<fleet_gcs::auth::ClusterToken>, String> {
    fleet_gcs::auth::process_token().ok_or_else(fleet_gcs::auth::describe_own_token)
}

/// Whether calls to other machines may go over plain TCP (not when the cluster runs TLS).
pub(crate) fn tcp_allowed() -> bool {
    !matches!(fleet_gcs::tls::current(), Ok(Some(_)))
        && std::env::var("FLEET_DIRECT_CALLS").map_or(true, |v| v != "unix")
}

/// Whether the direct path is on at all (`FLEET_DIRECT_CALLS=0` keeps every call on gRPC,
/// for diagnosis).
pub(crate) fn enabled() -> bool {
    std::env::var("FLEET_DIRECT_CALLS").map_or(true, |v| v != "0")
}

/// Connects to the worker serving gRPC at `address`: its Unix socket when it is on this
/// machine, else its TCP port. Returns the writer and the reading half.
pub(crate) async fn connect(
    address: &str,
    caller: &str,
) -> Result<(FrameWriter, BufReader<ReadHalf>), String> {
    let token = token()?;
    let mut conn = match connect_unix(&unix_name(address)) {
        Ok(stream) => Conn::Unix(stream),
        Err(unix_error) => {
            if !tcp_allowed() {
                return Err(format!(
                    "no local socket ({unix_error}) and TCP calls use gRPC here"
                ));
            }
            let stream = TcpStream::connect(address)
                .await
                .map_err(|e| format!("cannot connect to {address}: {e}"))?;
            crate::channel::endpoint::tune_tcp(&stream);
            Conn::Tcp(stream)
        }
    };
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        greet(&mut conn, token.secret().as_bytes(), caller),
    )
    .await
    .map_err(|_| "the handshake timed out".to_string())??;
    let (read, write) = conn.split();
    Ok((
        FrameWriter::new(write),
        BufReader::with_capacity(READ_BUFFER_BYTES, read),
    ))
}

#[cfg(target_os = "linux")]
fn connect_unix(name: &str) -> std::io::Result<UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let stream = std::os::unix::net::UnixStream::connect_addr(&address)?;
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

#[cfg(not(target_os = "linux"))]
fn connect_unix(_name: &str) -> std::io::Result<UnixStream> {
    Err(std::io::Error::other("no abstract Unix sockets here"))
}

/// Listens on the abstract Unix socket of the worker serving at `address`.
#[cfg(target_os = "linux")]
pub(crate) fn listen_unix(address: &str) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let name = unix_name(address);
    let socket = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&socket)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn listen_unix(_address: &str) -> std::io::Result<tokio::net::UnixListener> {
    Err(std::io::Error::other("no abstract Unix sockets here"))
}

/// Whether the first bytes of a TCP connection are a direct caller's (else it is gRPC).
pub(crate) async fn is_direct(stream: &TcpStream) -> bool {
    let mut first = [0u8; MAGIC.len()];
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(n)) if n >= MAGIC.len() => return &first == MAGIC,
            // Fewer bytes so far: a prefix of the magic may still become it.
            Ok(Ok(n)) if n > 0 && first[..n] == MAGIC[..n] => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => return false,
        }
    }
}

/// Serves one direct connection: the handshake, then every task frame it brings, each
/// reply written back as a frame.
pub(crate) async fn serve(mut conn: Conn, executor: crate::executor::Executor) {
    let Ok(token) = token() else { return };
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        accept(&mut conn, token.secret().as_bytes()),
    )
    .await;
    let caller = match accepted {
        Ok(Ok(caller)) => caller,
        Ok(Err(reason)) => {
            tracing::debug!(%reason, "direct call connection refused");
            return;
        }
        Err(_) => {
            tracing::debug!("direct call handshake timed out");
            return;
        }
    };
    let (read, write) = conn.split();
    let writer = FrameWriter::new(write);
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, read);
    loop {
        let frame = match read_frame(&mut reader, crate::context::MAX_MESSAGE_BYTES).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%caller, %error, "direct call connection ended");
                return;
            }
        };
        let spec = match fleet_proto::runtime::TaskSpec::decode(frame.as_slice()) {
            Ok(spec) => spec,
            Err(error) => {
                // A corrupt frame: nothing after it can be trusted on this connection.
                tracing::warn!(%caller, %error, "a direct call frame did not decode; closing");
                return;
            }
        };
        executor.take_direct_task(spec, writer.clone()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Conn, Conn) {
        let (a, b) = UnixStream::pair().expect("a socket pair");
        (Conn::Unix(a), Conn::Unix(b))
    }

    #[tokio::test]
    async fn callers_and_workers_prove_the_token_and_strangers_are_refused() {
        let (mut caller, mut worker) = pair();
        let (greeted, accepted) = tokio::join!(
            greet(&mut caller, b"the-token", "caller-a"),
            accept(&mut worker, b"the-token"),
        );
        assert_eq!(greeted, Ok(()));
        assert_eq!(accepted, Ok("caller-a".to_string()));

        let (mut caller, mut worker) = pair();
        let (greeted, accepted) = tokio::join!(
            async move {
                // A caller that finds the worker's proof wrong hangs up.
                let greeted = greet(&mut caller, b"a-wrong-token", "stranger").await;
                drop(caller);
                greeted
            },
            accept(&mut worker, b"the-token"),
        );
        // The caller already sees that the worker's proof does not match its token.
        assert!(greeted.is_err_and(|e| e.contains("token")));
        assert!(accepted.is_err());

        // Something that is not a caller at all.
        let (mut other, mut worker) = pair();
        other
            .write_all(b"PRI * HTTP/2.0\r\n")
            .await
            .expect("a write");
        let accepted = accept(&mut worker, b"the-token").await;
        assert!(accepted.is_err_and(|e| e.contains("not a direct-call")));
    }

    #[tokio::test]
    async fn frames_arrive_whole_and_in_order_and_oversized_ones_are_refused() {
        let (a, b) = UnixStream::pair().expect("a socket pair");
        let (_, write) = Conn::Unix(a).split();
        let (read, _keep) = Conn::Unix(b).split();
        let writer = FrameWriter::new(write);
        let mut reader = BufReader::new(read);
        // Large enough that the socket fills and a spawned task finishes some writes.
        let reader_task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..200 {
                let frame = read_frame(&mut reader, 1 << 20)
                    .await
                    .expect("a frame")
                    .expect("not the end");
                let spec =
                    fleet_proto::runtime::TaskSpec::decode(frame.as_slice()).expect("it decodes");
                seen.push((spec.seq, spec.args.len()));
            }
            seen
        });
        for seq in 0..200u64 {
            let spec = fleet_proto::runtime::TaskSpec {
                seq,
                args: vec![
                    fleet_proto::runtime::Arg {
                        value: Some(fleet_proto::runtime::arg::Value::Inline(vec![7; 64 << 10])),
                    };
                    (seq % 3) as usize
                ],
                ..Default::default()
            };
            writer.send(&spec).await.expect("sent");
        }
        let seen = reader_task.await.expect("the reader");
        let expected: Vec<(u64, usize)> = (0..200u64).map(|s| (s, (s % 3) as usize)).collect();
        assert_eq!(seen, expected);

        let mut oversized: &[u8] = &[0xff, 0xff, 0xff, 0x7f, 1, 2, 3];
        let refused = read_frame(&mut oversized, 1 << 20).await;
        assert!(refused.is_err_and(|e| e.to_string().contains("at most")));
    }
}
