//! `fleet::channel` between real processes: order, backpressure, dead peers, misuse.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use fleet::{Error, Receiver, Sender};

#[fleet::actor]
pub struct Pipe {
    held_receiver: Option<Receiver<u64>>,
    held_sender: Option<Sender<u64>>,
}

#[fleet::actor]
impl Pipe {
    pub fn new() -> Self {
        Pipe {
            held_receiver: None,
            held_sender: None,
        }
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Receives vectors until the sender closes: (messages, whether message i starts with i,
    /// bytes).
    pub async fn drain_vectors(
        &mut self,
        mut rx: Receiver<Vec<f32>>,
    ) -> Result<(u64, bool, u64), String> {
        let (mut count, mut in_order, mut bytes) = (0u64, true, 0u64);
        while let Some(v) = rx.recv().await.map_err(|e| e.to_string())? {
            in_order &= v.first().copied() == Some(count as f32);
            bytes += (v.len() * 4) as u64;
            count += 1;
        }
        Ok((count, in_order, bytes))
    }

    /// Receives vectors in place (`recv_with`) until the sender closes: (count, whether
    /// message i starts with i and ends with its length, the sum of every element).
    pub async fn drain_in_place(
        &mut self,
        mut rx: Receiver<Vec<f32>>,
    ) -> Result<(u64, bool, f64), String> {
        let (mut count, mut right, mut sum) = (0u64, true, 0.0f64);
        loop {
            let seen = rx
                .recv_with(|values: &[f32]| {
                    let ends = values.first().copied() == Some(count as f32)
                        && values.last().copied() == Some(values.len() as f32);
                    (ends, values.iter().map(|v| f64::from(*v)).sum::<f64>())
                })
                .await
                .map_err(|e| e.to_string())?;
            let Some((ends, total)) = seen else { break };
            right &= ends;
            sum += total;
            count += 1;
        }
        Ok((count, right, sum))
    }

    /// Receives strings until the sender closes: (count, whether string i is made of the
    /// digit i % 10, total bytes).
    pub async fn drain_strings(
        &mut self,
        mut rx: Receiver<String>,
    ) -> Result<(u64, bool, u64), String> {
        let (mut count, mut right, mut bytes) = (0u64, true, 0u64);
        while let Some(text) = rx.recv().await.map_err(|e| e.to_string())? {
            let digit = char::from(b'0' + (count % 10) as u8);
            right &= text.chars().all(|c| c == digit);
            bytes += text.len() as u64;
            count += 1;
        }
        Ok((count, right, bytes))
    }

    /// Receives numbers until the sender closes: (count, whether they came as 0, 1, 2, ...).
    pub async fn drain_numbers(&mut self, mut rx: Receiver<u64>) -> Result<(u64, bool), String> {
        let (mut count, mut in_order) = (0u64, true);
        while let Some(n) = rx.recv().await.map_err(|e| e.to_string())? {
            in_order &= n == count;
            count += 1;
        }
        Ok((count, in_order))
    }

    /// Sends 0..n in batches of 100, then closes.
    pub async fn produce(&mut self, mut tx: Sender<u64>, n: u64) -> Result<u64, String> {
        let mut next = 0;
        while next < n {
            let end = (next + 100).min(n);
            tx.send_batch(next..end).await.map_err(|e| e.to_string())?;
            next = end;
        }
        tx.close().await.map_err(|e| e.to_string())?;
        Ok(n)
    }

    /// Keeps a receiver without receiving (it registers where it lands).
    pub fn hold_receiver(&mut self, rx: Receiver<u64>) {
        self.held_receiver = Some(rx);
    }

    pub async fn recv_held(&mut self, count: usize) -> Result<Vec<u64>, String> {
        let rx = self.held_receiver.as_mut().ok_or("no receiver held")?;
        let mut got = Vec::new();
        for _ in 0..count {
            match rx.recv().await.map_err(|e| e.to_string())? {
                Some(n) => got.push(n),
                None => break,
            }
        }
        Ok(got)
    }

    pub fn hold_sender(&mut self, tx: Sender<u64>) {
        self.held_sender = Some(tx);
    }

    pub async fn send_held(&mut self, values: Vec<u64>) -> Result<(), String> {
        let tx = self.held_sender.as_mut().ok_or("no sender held")?;
        tx.send_batch(values).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

pub async fn channels_carry_ordered_messages_between_processes() -> Result<()> {
    // Driver → actor: 1 MiB vectors of f32, written and read as their own memory.
    let consumer = Pipe::remote().spawn().await?;
    let (mut tx, rx) = fleet::channel::<Vec<f32>>(4);
    let drained = consumer.drain_vectors(rx);
    for i in 0..40 {
        let mut v = vec![0.5f32; 1 << 18];
        v[0] = i as f32;
        tx.send(v).await?;
    }
    tx.close().await?;
    let (count, in_order, bytes) = drained.await?;
    ensure!(
        count == 40 && in_order && bytes == 40 << 20,
        "got {count} vectors ({bytes} bytes), in order: {in_order}"
    );

    // Slices sent from their own memory and read where they lie: small ones (the socket),
    // large ones (the shared ring, past its end several times), mixed with whole vectors.
    let (mut tx, rx) = fleet::channel::<Vec<f32>>(4);
    let drained = consumer.drain_in_place(rx);
    let mut expected_sum = 0.0f64;
    for i in 0..30usize {
        let len = if i % 3 == 0 { 1000 } else { (1 << 18) + i };
        let mut v = vec![1.0f32; len];
        v[0] = i as f32;
        v[len - 1] = len as f32;
        expected_sum += (len - 2) as f64 + i as f64 + len as f64;
        if i % 5 == 4 {
            tx.send(v).await?;
        } else {
            tx.send_slice(&v).await?;
        }
    }
    tx.close().await?;
    let (count, right, sum) = drained.await?;
    ensure!(
        count == 30 && right && sum == expected_sum,
        "in place: {count} vectors, ends right: {right}, sum {sum} (expected {expected_sum})"
    );

    // Large serialized values through the shared-memory ring, past its end many times and
    // with the sender waiting for space (a ring holds about 13 of them, the channel 64).
    let (mut tx, rx) = fleet::channel::<String>(64);
    let drained = consumer.drain_strings(rx);
    for i in 0..120u64 {
        let digit = char::from(b'0' + (i % 10) as u8);
        tx.send(std::iter::repeat_n(digit, 300 << 10).collect())
            .await?;
    }
    tx.close().await?;
    let (count, right, bytes) = drained.await?;
    ensure!(
        count == 120 && right && bytes == 120 * (300 << 10),
        "strings: {count}, right: {right}, {bytes} bytes"
    );
    let prefix = format!("fleet-ch-{}-", std::process::id());
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    ensure!(left.is_empty(), "ring files left behind: {left:?}");

    // Actor → driver, many small messages in batches.
    let producer = Pipe::remote().spawn().await?;
    let (tx, mut rx) = fleet::channel::<u64>(64);
    let produced = producer.produce(tx, 20_000);
    let mut expected = 0u64;
    while let Some(n) = rx.recv().await? {
        ensure!(n == expected, "message {expected} arrived as {n}");
        expected += 1;
    }
    ensure!(
        expected == 20_000,
        "the stream ended after {expected} of 20000"
    );
    ensure!(produced.await? == 20_000);

    // Actor → actor, neither end made where it is used.
    let (tx, rx) = fleet::channel::<u64>(16);
    let drained = consumer.drain_numbers(rx);
    let produced = producer.produce(tx, 5_000);
    produced.await?;
    let (count, in_order) = drained.await?;
    ensure!(
        count == 5_000 && in_order,
        "actor to actor: {count} messages, in order: {in_order}"
    );

    // A dropped sender ends the stream cleanly too.
    let (mut tx, rx) = fleet::channel::<u64>(4);
    let drained = consumer.drain_numbers(rx);
    tx.send(0).await?;
    drop(tx);
    let (count, _) = drained.await?;
    ensure!(count == 1, "a dropped sender's stream had {count} messages");
    // ... also when its last message is still in the ring, unread: the ring outlives it.
    let (mut tx, rx) = fleet::channel::<Vec<f32>>(4);
    let drained = consumer.drain_vectors(rx);
    tx.send(vec![0.0; 1 << 18]).await?;
    drop(tx);
    let (count, in_order, _) = drained.await?;
    ensure!(
        count == 1 && in_order,
        "a dropped sender's ring had {count} messages"
    );
    Ok(())
}

pub async fn a_full_channel_makes_the_sender_wait() -> Result<()> {
    let holder = Pipe::remote().spawn().await?;
    let (mut tx, rx) = fleet::channel::<u64>(4);
    holder.hold_receiver(rx).await?;
    for i in 0..4 {
        tokio::time::timeout(Duration::from_secs(30), tx.send(i))
            .await
            .context("a send within capacity must not wait for the receiver")??;
    }
    let fifth = tokio::spawn(async move {
        tx.send(4).await?;
        Ok::<_, Error>(tx)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        !fifth.is_finished(),
        "a fifth send into a channel of 4 must wait"
    );
    ensure!(holder.recv_held(1).await? == vec![0]);
    let tx = tokio::time::timeout(Duration::from_secs(30), fifth)
        .await
        .context("a consumed message must let the waiting send go")???;
    ensure!(holder.recv_held(4).await? == vec![1, 2, 3, 4]);
    drop(tx);
    Ok(())
}

pub async fn a_channel_whose_peer_died_is_an_error_not_a_hang() -> Result<()> {
    // The receiver's process dies: the sender's next sends fail, naming it.
    let holder = Pipe::remote().spawn().await?;
    let (mut tx, rx) = fleet::channel::<u64>(8);
    holder.hold_receiver(rx).await?;
    tx.send(1).await?;
    let pid = holder.pid().await?;
    super::sigkill(pid)?;
    let started = Instant::now();
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(30), tx.send(2)).await {
            Ok(Ok(())) if started.elapsed() < Duration::from_secs(30) => continue,
            Ok(Ok(())) => return Err(anyhow!("sends to a dead receiver kept succeeding")),
            Ok(Err(error)) => break error,
            Err(_) => return Err(anyhow!("a send to a dead receiver hung")),
        }
    };
    match &error {
        Error::ChannelPeerLost { peer, .. } => {
            ensure!(
                peer.contains("receiver") && peer.contains(&pid.to_string()),
                "{error}"
            )
        }
        other => return Err(anyhow!("expected ChannelPeerLost, got {other}")),
    }
    println!("  a dead receiver was reported in {:?}", started.elapsed());

    // The sender's process dies: the receiver's recv fails, naming it.
    let sender = Pipe::remote().spawn().await?;
    let (tx, mut rx) = fleet::channel::<u64>(8);
    sender.hold_sender(tx).await?;
    sender.send_held(vec![7, 8, 9]).await?;
    for want in [7, 8, 9] {
        ensure!(rx.recv().await? == Some(want));
    }
    let pid = sender.pid().await?;
    super::sigkill(pid)?;
    let error = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .context("recv from a dead sender hung")?
        .err()
        .context("recv from a dead sender must fail, not end cleanly")?;
    match &error {
        Error::ChannelPeerLost { peer, cause, .. } => ensure!(
            peer.contains("sender") && peer.contains(&pid.to_string()) && cause.contains("died"),
            "{error}"
        ),
        other => return Err(anyhow!("expected ChannelPeerLost, got {other}")),
    }
    Ok(())
}

pub async fn channel_misuse_is_a_clear_error() -> Result<()> {
    // A channel has one sender: a copy that connects second is refused.
    let holder = Pipe::remote().spawn().await?;
    let (tx, rx) = fleet::channel::<u64>(4);
    holder.hold_receiver(rx).await?;
    let stored = fleet::put(&tx)?;
    let mut first: Sender<u64> = fleet::get(&stored).await?;
    let mut second: Sender<u64> = fleet::get(&stored).await?;
    first.send(1).await?;
    match second.send(2).await {
        Err(Error::Channel { reason, .. }) => {
            ensure!(reason.contains("already has a sender"), "{reason}")
        }
        other => return Err(anyhow!("a second sender must be refused, got {other:?}")),
    }
    ensure!(holder.recv_held(1).await? == vec![1]);

    // An end in use stays where it is.
    let moved = holder.hold_sender(first).await;
    match moved {
        Err(Error::Serialization { reason, .. }) => {
            ensure!(reason.contains("already used"), "{reason}")
        }
        other => return Err(anyhow!("moving a used sender must fail, got {other:?}")),
    }

    // The receiver went where nobody receives (a stored value never taken out): the
    // sender gives up, saying so.
    let (tx, rx) = fleet::channel::<u64>(4);
    let _parked = fleet::put(&rx)?;
    drop(rx);
    let mut tx = tx.connect_timeout(Duration::from_secs(1));
    match tx.send(1).await {
        Err(Error::Channel { reason, .. }) => ensure!(reason.contains("no receiver"), "{reason}"),
        other => {
            return Err(anyhow!(
                "a send with no receiver must time out, got {other:?}"
            ))
        }
    }
    Ok(())
}
