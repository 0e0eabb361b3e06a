//! The channel's byte protocol, over any ordered byte stream (a Unix socket between the
//! processes of one node, TCP across nodes).
//!
//! Handshake (both sides prove they hold the cluster token without sending it):
//! 1. receiver's process → sender: `FLC1`, a 32-byte nonce;
//! 2. sender → receiver: its own nonce, `HMAC(token, "sender" | nonces | channel id)`, the
//!    channel id and a description of the sender (for the other side's errors);
//! 3. receiver → sender: a status byte; on acceptance `HMAC(token, "receiver" | nonces | id)`
//!    and a description of the receiver, else a reason.
//!
//! Then the sender writes frames — `DATA` (a u64 length and the encoded value) or `CLOSE` —
//! and the receiver answers with `CREDIT` frames (a u32 count) as it consumes: the sender
//! may have at most the channel's capacity of unconsumed messages outstanding, so a full
//! channel makes `send` wait and no buffer grows past capacity × message size.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Opens the handshake (and names the protocol's version).
pub(crate) const MAGIC: &[u8; 4] = b"FLC1";
/// A sender's data frame: a u64 length, then the encoded value.
pub(crate) const FRAME_DATA: u8 = 1;
/// A sender's last frame: the stream ends cleanly.
pub(crate) const FRAME_CLOSE: u8 = 2;
/// A receiver's credit frame: a u32 count of messages consumed.
pub(crate) const FRAME_CREDIT: u8 = 3;
/// A sender's large message in the shared-memory ring: a u64 length, a u64 start.
pub(crate) const FRAME_DATA_SHM: u8 = 4;
/// A sender offers a shared-memory ring: a u16 length, then its file name.
pub(crate) const FRAME_RING: u8 = 5;
/// Bytes of a ring data frame.
pub(crate) const DATA_SHM_BYTES: usize = 17;
/// Bytes of a data frame's header.
pub(crate) const DATA_HEADER_BYTES: usize = 9;
/// Bytes of a credit frame.
pub(crate) const CREDIT_BYTES: usize = 5;
/// The largest value one message may carry: a frame's length comes from the peer, and
/// the receiver allocates it, so it is bounded.
pub const MAX_MESSAGE_BYTES: u64 = 1 << 30;
/// The longest channel id or end description accepted in a handshake.
const MAX_NAME_BYTES: usize = 1024;

/// The receiver's answer to a sender's handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Answer {
    Accepted = 0,
    /// No receiver of that channel in this process: the record the sender used is stale
    /// (the end moved, or has not registered here yet); look it up again.
    NotHere = 1,
    /// Refused for good (a second sender, a wrong token).
    Refused = 2,
}

/// HMAC-SHA256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block_key.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(block_key.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn proof(token: &[u8], role: &[u8], ours: &[u8; 32], theirs: &[u8; 32], id: &str) -> [u8; 32] {
    hmac_sha256(token, &[role, ours, theirs, id.as_bytes()])
}

pub(crate) async fn write_name<W: AsyncWrite + Unpin>(
    stream: &mut W,
    name: &str,
) -> std::io::Result<()> {
    let bytes = &name.as_bytes()[..name.len().min(MAX_NAME_BYTES)];
    stream
        .write_all(&(bytes.len() as u16).to_le_bytes())
        .await?;
    stream.write_all(bytes).await
}

pub(crate) async fn read_name<R: AsyncRead + Unpin>(stream: &mut R) -> Result<String, String> {
    let len = stream.read_u16_le().await.map_err(|e| e.to_string())? as usize;
    if len > MAX_NAME_BYTES {
        return Err(format!("a name of {len} bytes (at most {MAX_NAME_BYTES})"));
    }
    let mut bytes = vec![0u8; len];
    stream
        .read_exact(&mut bytes)
        .await
        .map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "a name that is not UTF-8".to_string())
}

/// What a receiving process learned from a sender's half of the handshake.
pub(crate) struct SenderHello {
    pub channel: String,
    pub sender: String,
    server_nonce: [u8; 32],
    client_nonce: [u8; 32],
}

/// Receiving side, steps 1–2: greets the sender and checks its proof. `Err` is a reason
/// (already sent to the peer when it is a refusal).
pub(crate) async fn accept_sender<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    token: &[u8],
) -> Result<SenderHello, String> {
    let server_nonce: [u8; 32] = rand::random();
    let mut hello = Vec::with_capacity(36);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&server_nonce);
    stream.write_all(&hello).await.map_err(|e| e.to_string())?;
    let mut client_nonce = [0u8; 32];
    let mut mac = [0u8; 32];
    stream
        .read_exact(&mut client_nonce)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .read_exact(&mut mac)
        .await
        .map_err(|e| e.to_string())?;
    let channel = read_name(stream).await?;
    let sender = read_name(stream).await?;
    let expected = proof(token, b"sender", &server_nonce, &client_nonce, &channel);
    if !fleet_gcs::auth::constant_time_eq(&expected, &mac) {
        let reason = "the sender does not hold this cluster's token";
        let _ = refuse(stream, Answer::Refused, reason).await;
        return Err(format!("{reason} (sender says it is {sender})"));
    }
    Ok(SenderHello {
        channel,
        sender,
        server_nonce,
        client_nonce,
    })
}

/// Receiving side, step 3 on acceptance.
pub(crate) async fn admit<S: AsyncWrite + Unpin>(
    stream: &mut S,
    token: &[u8],
    hello: &SenderHello,
    receiver: &str,
) -> std::io::Result<()> {
    let mac = proof(
        token,
        b"receiver",
        &hello.server_nonce,
        &hello.client_nonce,
        &hello.channel,
    );
    let mut answer = vec![Answer::Accepted as u8];
    answer.extend_from_slice(&mac);
    stream.write_all(&answer).await?;
    write_name(stream, receiver).await?;
    stream.flush().await
}

/// Receiving side, step 3 on refusal.
pub(crate) async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    answer: Answer,
    reason: &str,
) -> std::io::Result<()> {
    stream.write_all(&[answer as u8]).await?;
    write_name(stream, reason).await?;
    stream.flush().await
}

/// How a sender's handshake ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Greeting {
    /// Connected to the receiver, described by this text.
    Accepted { receiver: String },
    /// Stale record: look the receiver up again.
    NotHere(String),
    /// Refused: the reason.
    Refused(String),
}

/// Sending side of the handshake.
pub(crate) async fn greet_receiver<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    token: &[u8],
    channel: &str,
    sender: &str,
) -> Result<Greeting, String> {
    let mut hello = [0u8; 36];
    stream
        .read_exact(&mut hello)
        .await
        .map_err(|e| format!("no greeting: {e}"))?;
    if &hello[..4] != MAGIC {
        return Err("the peer does not speak Fleet's channel protocol".into());
    }
    let mut server_nonce = [0u8; 32];
    server_nonce.copy_from_slice(&hello[4..]);
    let client_nonce: [u8; 32] = rand::random();
    let mut message = Vec::with_capacity(64);
    message.extend_from_slice(&client_nonce);
    message.extend_from_slice(&proof(
        token,
        b"sender",
        &server_nonce,
        &client_nonce,
        channel,
    ));
    stream
        .write_all(&message)
        .await
        .map_err(|e| e.to_string())?;
    write_name(stream, channel)
        .await
        .map_err(|e| e.to_string())?;
    write_name(stream, sender)
        .await
        .map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let status = stream
        .read_u8()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    if status == Answer::Accepted as u8 {
        let mut mac = [0u8; 32];
        stream
            .read_exact(&mut mac)
            .await
            .map_err(|e| e.to_string())?;
        let expected = proof(token, b"receiver", &server_nonce, &client_nonce, channel);
        if !fleet_gcs::auth::constant_time_eq(&expected, &mac) {
            return Err("the receiving process does not hold this cluster's token".into());
        }
        let receiver = read_name(stream).await?;
        return Ok(Greeting::Accepted { receiver });
    }
    let reason = read_name(stream).await?;
    match status {
        s if s == Answer::NotHere as u8 => Ok(Greeting::NotHere(reason)),
        s if s == Answer::Refused as u8 => Ok(Greeting::Refused(reason)),
        other => Err(format!("an unknown answer {other}")),
    }
}

/// A data frame's header.
pub(crate) fn data_header(len: u64) -> [u8; DATA_HEADER_BYTES] {
    let mut header = [0u8; DATA_HEADER_BYTES];
    header[0] = FRAME_DATA;
    header[1..].copy_from_slice(&len.to_le_bytes());
    header
}

/// A ring data frame.
pub(crate) fn data_shm_frame(len: u64, start: u64) -> [u8; DATA_SHM_BYTES] {
    let mut frame = [0u8; DATA_SHM_BYTES];
    frame[0] = FRAME_DATA_SHM;
    frame[1..9].copy_from_slice(&len.to_le_bytes());
    frame[9..].copy_from_slice(&start.to_le_bytes());
    frame
}

/// A ring offer frame.
pub(crate) fn ring_frame(name: &str) -> Vec<u8> {
    let mut frame = vec![FRAME_RING];
    frame.extend_from_slice(&(name.len() as u16).to_le_bytes());
    frame.extend_from_slice(name.as_bytes());
    frame
}

/// A credit frame.
pub(crate) fn credit_frame(count: u32) -> [u8; CREDIT_BYTES] {
    let mut frame = [0u8; CREDIT_BYTES];
    frame[0] = FRAME_CREDIT;
    frame[1..].copy_from_slice(&count.to_le_bytes());
    frame
}

/// How many consumed messages a receiver lets pile up before it grants them back: a
/// quarter of the capacity (one credit write per many messages), at least one.
pub(crate) fn credit_batch(capacity: u32) -> u32 {
    (capacity / 4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn long_keys_are_hashed_first() {
        let key = [0xaau8; 131];
        let mac = hmac_sha256(
            &key,
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    async fn handshake(
        receiver_token: &'static [u8],
        sender_token: &'static [u8],
    ) -> (Result<String, String>, Result<Greeting, String>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let hello = accept_sender(&mut a, receiver_token).await?;
            admit(&mut a, receiver_token, &hello, "the receiver")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(format!("{} from {}", hello.channel, hello.sender))
        });
        let greeting = greet_receiver(&mut b, sender_token, "ch-1", "the sender").await;
        (server.await.expect("server task"), greeting)
    }

    #[tokio::test]
    async fn ends_with_the_same_token_connect_and_learn_each_other() {
        let (server, greeting) = handshake(b"secret-token", b"secret-token").await;
        assert_eq!(server, Ok("ch-1 from the sender".to_string()));
        assert_eq!(
            greeting,
            Ok(Greeting::Accepted {
                receiver: "the receiver".into()
            })
        );
    }

    #[tokio::test]
    async fn a_sender_without_the_token_is_refused() {
        let (server, greeting) = handshake(b"secret-token", b"other-token!").await;
        let error = server.expect_err("a wrong token must be refused");
        assert!(error.contains("token"), "{error}");
        match greeting {
            Ok(Greeting::Refused(reason)) => assert!(reason.contains("token"), "{reason}"),
            other => panic!("the sender must hear the refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_receiver_without_the_token_is_not_trusted() {
        // The receiver's check fails first here (the sender's proof does not match), so
        // impersonate a receiver that skips the check: it cannot forge the proof.
        let (mut a, mut b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut hello = [0u8; 36];
            hello[..4].copy_from_slice(MAGIC);
            a.write_all(&hello).await.expect("write");
            let mut rest = vec![0u8; 64 + 2 + 4 + 2 + 10];
            a.read_exact(&mut rest).await.expect("read");
            let mut answer = vec![Answer::Accepted as u8];
            answer.extend_from_slice(&[0u8; 32]);
            a.write_all(&answer).await.expect("write");
            write_name(&mut a, "impostor").await.expect("write");
        });
        let greeting = greet_receiver(&mut b, b"secret-token", "ch-1", "the sender").await;
        server.await.expect("server task");
        let error = greeting.expect_err("a forged proof must be rejected");
        assert!(error.contains("token"), "{error}");
    }

    #[tokio::test]
    async fn a_stranger_that_does_not_speak_the_protocol_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await
            .expect("write");
        drop(a);
        let error = greet_receiver(&mut b, b"t", "ch", "s")
            .await
            .expect_err("garbage must fail");
        assert!(error.contains("protocol"), "{error}");
    }

    #[test]
    fn credits_come_back_in_quarters_of_the_capacity() {
        assert_eq!(credit_batch(1), 1);
        assert_eq!(credit_batch(3), 1);
        assert_eq!(credit_batch(64), 16);
    }
}
