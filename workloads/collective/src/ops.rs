//! The collective operations of a [`Group`], and how a failed one breaks the group on
//! every rank (see `group`).
//!
//! - `all_reduce`: the ring (reduce-scatter then all-gather, in pieces, sending piece `p` of
//!   a step while piece `p+1` of the step before is still arriving) above
//!   `GroupOptions::small_bytes`; at or below it, every rank sends its buffer to every
//!   other and each combines them in rank order (one hop instead of `2(n-1)`).
//! - `reduce_scatter`, `all_gather`: one phase of the ring each.
//! - `broadcast`: direct from the root when small, else a pipelined chain around the ring.
//! - `reduce`: a ring reduce-scatter, then each rank's shard to the root.
//! - `barrier`, `send`/`recv`: direct messages.
//!
//! Every buffer is a slice of an [`Element`] type; the ranks must pass buffers of the same
//! length and type to the same operations in the same order: a length that does not match
//! is a `Mismatch` on the rank that sees it, and breaks the group.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet::{Receiver, Sender};
use tokio::sync::Notify;

use crate::element::{combine_bytes, copy_bytes, Element, ReduceOp};
use crate::error::{CollectiveError, Result};
use crate::group::{abort_key, Abort, Group, Links, NAMESPACE};
use crate::schedule::{piece_count, piece_range, ring_steps, shard_range, Phases};

/// Why an operation failed on this rank, before the group's cause is settled.
pub(crate) enum Failure {
    /// The channel with `peer` failed: its process or node is gone (or it broke the group).
    Peer { peer: usize, cause: String },
    /// `peer` closed its channel: it broke the group after a failure of its own.
    Closed { peer: usize },
    /// A message did not match what this rank expected.
    Mismatch(String),
}

type Flow<T> = std::result::Result<T, Failure>;

/// What the algorithms need to know of their rank.
#[derive(Clone, Copy)]
struct Ctx {
    rank: usize,
    world: usize,
    piece_bytes: usize,
    small_bytes: usize,
}

fn sender(to: &mut [Option<Sender<Vec<u8>>>], peer: usize) -> Flow<&mut Sender<Vec<u8>>> {
    to.get_mut(peer)
        .and_then(Option::as_mut)
        .ok_or_else(|| Failure::Mismatch(format!("no channel to rank {peer}")))
}

fn receiver(from: &mut [Option<Receiver<Vec<u8>>>], peer: usize) -> Flow<&mut Receiver<Vec<u8>>> {
    from.get_mut(peer)
        .and_then(Option::as_mut)
        .ok_or_else(|| Failure::Mismatch(format!("no channel from rank {peer}")))
}

async fn send_to(tx: &mut Sender<Vec<u8>>, peer: usize, bytes: Vec<u8>) -> Flow<()> {
    tx.send(bytes).await.map_err(|e| Failure::Peer {
        peer,
        cause: e.to_string(),
    })
}

async fn recv_exact(rx: &mut Receiver<Vec<u8>>, peer: usize, expected: usize) -> Flow<Vec<u8>> {
    match rx.recv().await {
        Ok(Some(bytes)) if bytes.len() == expected => Ok(bytes),
        Ok(Some(bytes)) => Err(mismatch(peer, bytes.len(), expected)),
        Ok(None) => Err(Failure::Closed { peer }),
        Err(error) => Err(Failure::Peer {
            peer,
            cause: error.to_string(),
        }),
    }
}

/// The same bytes to every other rank, each written from `bytes` itself.
async fn send_to_every_other(
    to: &mut [Option<Sender<Vec<u8>>>],
    ctx: Ctx,
    bytes: &[u8],
) -> Flow<()> {
    for peer in others(ctx) {
        sender(to, peer)?
            .send_slice(bytes)
            .await
            .map_err(|e| Failure::Peer {
                peer,
                cause: e.to_string(),
            })?;
    }
    Ok(())
}

fn others(ctx: Ctx) -> impl Iterator<Item = usize> {
    (0..ctx.world).filter(move |p| *p != ctx.rank)
}

/// The ring over `buf`: the phases asked for, in pieces, sending and receiving at once.
///
/// A piece is sent from the buffer itself (`send_slice`: one copy, into the channel's
/// shared ring or the socket) and combined from where the received message lies
/// (`recv_with`: in the shared ring itself between processes of one node), so each byte
/// is copied once per hop.
async fn ring<T: Element>(
    links: &mut Links,
    ctx: Ctx,
    buf: &mut [T],
    op: ReduceOp,
    phases: Phases,
) -> Flow<()> {
    let n = ctx.world;
    if n < 2 {
        return Ok(());
    }
    let (right, left) = ((ctx.rank + 1) % n, (ctx.rank + n - 1) % n);
    let len = buf.len();
    let width = std::mem::size_of::<T>();
    let steps = ring_steps(ctx.rank, n, phases);
    let pieces = piece_count(len, n, (ctx.piece_bytes / width).max(1));
    // The last reduce step completes this rank's own shard: a mean divides it there.
    let last_reduce = steps.iter().rposition(|s| s.reduce);
    let Links { to, from } = links;
    let tx = sender(to, right)?;
    let rx = receiver(from, left)?;
    // The buffer cut into its (shard, piece) parts, each behind its own lock: the sending
    // half holds a part across its send's awaits while the receiving half writes another,
    // in one task.
    let parts = split_into_parts(buf, n, pieces);
    let received = AtomicUsize::new(0);
    let progressed = Notify::new();
    let sending = async {
        for (s, step) in steps.iter().enumerate() {
            for p in 0..pieces {
                if s > 0 {
                    // This piece is the one received at the step before.
                    let needed = (s - 1) * pieces + p;
                    while received.load(Ordering::Acquire) <= needed {
                        progressed.notified().await;
                    }
                }
                let part = parts[step.send * pieces + p].lock().await;
                tx.send_slice(bytemuck::cast_slice::<T, u8>(&part))
                    .await
                    .map_err(|e| Failure::Peer {
                        peer: right,
                        cause: e.to_string(),
                    })?;
            }
        }
        Ok(())
    };
    let receiving = async {
        for (s, step) in steps.iter().enumerate() {
            for p in 0..pieces {
                let part = &parts[step.recv * pieces + p];
                let apply = |target: &mut [T], incoming: &[u8]| {
                    if step.reduce {
                        combine_bytes(op, target, incoming);
                        if op == ReduceOp::Mean && Some(s) == last_reduce {
                            T::divide(target, n);
                        }
                    } else {
                        copy_bytes(target, incoming);
                    }
                };
                let expected =
                    piece_range(&shard_range(len, n, step.recv), pieces, p).len() * width;
                // The part is locked only once the message is here: the all-gather
                // overwrites the parts that the reduce-scatter sent, and the message for
                // one depends on that send's bytes having left. When the send has not
                // returned yet (it is flushing), the bytes wait in a copy.
                let applied = rx
                    .recv_with(|incoming: &[u8]| {
                        if incoming.len() != expected {
                            return Err(incoming.len());
                        }
                        Ok(match part.try_lock() {
                            Ok(mut target) => {
                                apply(&mut target, incoming);
                                None
                            }
                            Err(_) => Some(incoming.to_vec()),
                        })
                    })
                    .await;
                match applied {
                    Ok(Some(Ok(None))) => {}
                    Ok(Some(Ok(Some(copy)))) => apply(*part.lock().await, &copy),
                    Ok(Some(Err(got))) => return Err(mismatch(left, got, expected)),
                    Ok(None) => return Err(Failure::Closed { peer: left }),
                    Err(error) => {
                        return Err(Failure::Peer {
                            peer: left,
                            cause: error.to_string(),
                        })
                    }
                }
                received.fetch_add(1, Ordering::Release);
                progressed.notify_one();
            }
        }
        Ok(())
    };
    tokio::try_join!(sending, receiving).map(|_| ())
}

/// `buf` as its (shard, piece) parts in order: part `shard * pieces + piece`.
fn split_into_parts<T>(
    buf: &mut [T],
    ranks: usize,
    pieces: usize,
) -> Vec<tokio::sync::Mutex<&mut [T]>> {
    let len = buf.len();
    let mut parts = Vec::with_capacity(ranks * pieces);
    let mut rest = buf;
    for shard in 0..ranks {
        let range = shard_range(len, ranks, shard);
        for p in 0..pieces {
            let piece = piece_range(&range, pieces, p);
            let (part, tail) = std::mem::take(&mut rest).split_at_mut(piece.len());
            parts.push(tokio::sync::Mutex::new(part));
            rest = tail;
        }
    }
    parts
}

fn mismatch(peer: usize, got: usize, expected: usize) -> Failure {
    Failure::Mismatch(format!(
        "rank {peer} sent {got} bytes where {expected} were expected (the ranks passed buffers of different lengths or element types, or called different operations)"
    ))
}

/// Every rank sends its buffer to every other; each combines all of them in rank order
/// (so every rank ends with the same bits).
async fn direct_all_reduce<T: Element>(
    links: &mut Links,
    ctx: Ctx,
    buf: &mut [T],
    op: ReduceOp,
) -> Flow<()> {
    let mine: Vec<u8> = bytemuck::cast_slice::<T, u8>(buf).to_vec();
    let expected = mine.len();
    let Links { to, from } = links;
    let sending = async { send_to_every_other(to, ctx, &mine).await };
    let receiving = async {
        let mut got: Vec<Option<Vec<u8>>> = (0..ctx.world).map(|_| None).collect();
        for peer in others(ctx) {
            got[peer] = Some(recv_exact(receiver(from, peer)?, peer, expected).await?);
        }
        Ok(got)
    };
    let ((), got) = tokio::try_join!(sending, receiving)?;
    let bytes_of = |rank: usize| -> &[u8] {
        if rank == ctx.rank {
            &mine
        } else {
            got[rank].as_deref().unwrap_or(&[])
        }
    };
    copy_bytes(buf, bytes_of(0));
    for rank in 1..ctx.world {
        combine_bytes(op, buf, bytes_of(rank));
    }
    if op == ReduceOp::Mean {
        T::divide(buf, ctx.world);
    }
    Ok(())
}

async fn broadcast<T: Element>(
    links: &mut Links,
    ctx: Ctx,
    buf: &mut [T],
    root: usize,
) -> Flow<()> {
    let n = ctx.world;
    if n < 2 {
        return Ok(());
    }
    let width = std::mem::size_of::<T>();
    let total = std::mem::size_of_val(buf);
    let Links { to, from } = links;
    if total <= ctx.small_bytes || n == 2 {
        if ctx.rank == root {
            send_to_every_other(to, ctx, bytemuck::cast_slice::<T, u8>(buf)).await?;
        } else {
            let bytes = recv_exact(receiver(from, root)?, root, total).await?;
            copy_bytes(buf, &bytes);
        }
        return Ok(());
    }
    // A chain around the ring from the root, piece by piece: each rank passes a piece on
    // as soon as it has it.
    let position = (ctx.rank + n - root) % n;
    let (right, left) = ((ctx.rank + 1) % n, (ctx.rank + n - 1) % n);
    let whole = 0..buf.len();
    let pieces = piece_count(buf.len(), 1, (ctx.piece_bytes / width).max(1));
    for p in 0..pieces {
        let range = piece_range(&whole, pieces, p);
        if position == 0 {
            let bytes = bytemuck::cast_slice::<T, u8>(&buf[range]).to_vec();
            send_to(sender(to, right)?, right, bytes).await?;
        } else {
            let expected = range.len() * width;
            let bytes = recv_exact(receiver(from, left)?, left, expected).await?;
            copy_bytes(&mut buf[range], &bytes);
            if position < n - 1 {
                send_to(sender(to, right)?, right, bytes).await?;
            }
        }
    }
    Ok(())
}

async fn gather_shards<T: Element>(
    links: &mut Links,
    ctx: Ctx,
    buf: &mut [T],
    root: usize,
) -> Flow<()> {
    let len = buf.len();
    let width = std::mem::size_of::<T>();
    let Links { to, from } = links;
    if ctx.rank == root {
        for peer in others(ctx) {
            let range = shard_range(len, ctx.world, peer);
            let bytes = recv_exact(receiver(from, peer)?, peer, range.len() * width).await?;
            copy_bytes(&mut buf[range], &bytes);
        }
    } else {
        let range = shard_range(len, ctx.world, ctx.rank);
        let bytes = bytemuck::cast_slice::<T, u8>(&buf[range]).to_vec();
        send_to(sender(to, root)?, root, bytes).await?;
    }
    Ok(())
}

async fn barrier(links: &mut Links, ctx: Ctx) -> Flow<()> {
    let Links { to, from } = links;
    let sending = async {
        for peer in others(ctx) {
            send_to(sender(to, peer)?, peer, Vec::new()).await?;
        }
        Ok(())
    };
    let receiving = async {
        for peer in others(ctx) {
            recv_exact(receiver(from, peer)?, peer, 0).await?;
        }
        Ok(())
    };
    tokio::try_join!(sending, receiving).map(|_| ())
}

impl Group {
    fn ctx(&self) -> Ctx {
        Ctx {
            rank: self.rank,
            world: self.world,
            piece_bytes: self.options.piece_bytes.max(1),
            small_bytes: self.options.small_bytes,
        }
    }

    fn usable(&self) -> Result<()> {
        match &self.broken {
            Some(cause) => Err(CollectiveError::Broken {
                group: self.name.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn check_peer(&self, peer: usize, what: &str) -> Result<()> {
        if peer >= self.world || (peer == self.rank && what != "root") {
            return Err(CollectiveError::InvalidArgument {
                group: self.name.clone(),
                reason: format!(
                    "{what} {peer} is not another rank of this group of {} (rank {})",
                    self.world, self.rank
                ),
            });
        }
        Ok(())
    }

    /// Turns an algorithm's outcome into the operation's result; a failure breaks the group
    /// on every rank (see `group`).
    async fn settle<R>(
        &mut self,
        op: &'static str,
        outcome: std::result::Result<Flow<R>, tokio::time::error::Elapsed>,
        waiting_for: Vec<usize>,
    ) -> Result<R> {
        let failure = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(failure)) => Some(failure),
            Err(_) => None,
        };
        let timeout = self.options.op_timeout;
        let own = match &failure {
            Some(Failure::Peer { peer, cause }) => Abort {
                lost_rank: Some(*peer),
                detected_by: self.rank,
                cause: cause.clone(),
            },
            Some(Failure::Closed { peer }) => Abort {
                lost_rank: Some(*peer),
                detected_by: self.rank,
                cause: "it closed its channels without saying why".into(),
            },
            Some(Failure::Mismatch(reason)) => Abort {
                lost_rank: None,
                detected_by: self.rank,
                cause: format!("{op} on rank {}: {reason}", self.rank),
            },
            None => Abort {
                lost_rank: None,
                detected_by: self.rank,
                cause: format!(
                    "{op} on rank {} heard nothing from rank(s) {waiting_for:?} in {timeout:?}",
                    self.rank
                ),
            },
        };
        // A rank that breaks the group writes its cause before it drops its channels, and
        // KV reads see every acknowledged write: a peer's failure seen here is either its
        // death or already explained in the KV. Only a peer whose own write failed (the
        // GCS unreachable) closes without one; a moment's patience covers a slow commit.
        let patience = match failure {
            Some(Failure::Closed { .. }) => Duration::from_millis(200),
            _ => Duration::ZERO,
        };
        let abort = self.settle_cause(own, patience).await;
        // Dropping the channels is what tells the neighbours.
        self.links.to.iter_mut().for_each(|t| *t = None);
        self.links.from.iter_mut().for_each(|f| *f = None);
        let group = self.name.clone();
        let error = match (&failure, abort.lost_rank) {
            (_, Some(rank)) => CollectiveError::RankLost {
                group,
                rank,
                detected_by: abort.detected_by,
                cause: abort.cause.clone(),
            },
            (Some(Failure::Mismatch(reason)), None) if abort.detected_by == self.rank => {
                CollectiveError::Mismatch {
                    group,
                    op,
                    rank: self.rank,
                    reason: reason.clone(),
                }
            }
            (None, None) if abort.detected_by == self.rank => CollectiveError::Timeout {
                group,
                op,
                rank: self.rank,
                waiting_for,
                after: timeout,
            },
            _ => CollectiveError::Broken {
                group,
                cause: abort.cause.clone(),
            },
        };
        self.broken = Some(error.to_string());
        tracing::warn!(group = %self.name, rank = self.rank, round = self.round, %error, "collective operation failed");
        Err(error)
    }

    /// The round's cause of failure: the one already written, else this rank's own (the
    /// first writer wins). Waits up to `patience` for another rank's.
    async fn settle_cause(&self, own: Abort, patience: std::time::Duration) -> Abort {
        let key = abort_key(&self.name, self.round);
        let started = std::time::Instant::now();
        loop {
            if let Ok(Some(entry)) = fleet::kv::get(NAMESPACE, &key).await {
                if let Ok(abort) = serde_json::from_slice::<Abort>(&entry.value) {
                    return abort;
                }
            }
            if started.elapsed() >= patience {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Ok(value) = serde_json::to_vec(&own) else {
            return own;
        };
        match fleet::kv::compare_and_set(NAMESPACE, &key, &value, 0).await {
            Ok(true) | Err(_) => own,
            Ok(false) => match fleet::kv::get(NAMESPACE, &key).await {
                Ok(Some(entry)) => serde_json::from_slice(&entry.value).unwrap_or(own),
                _ => own,
            },
        }
    }

    /// Combines every rank's `buf` element-wise with `op`; every rank ends with the result
    /// (the same bits on every rank).
    pub async fn all_reduce<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        self.usable()?;
        let ctx = self.ctx();
        let small = std::mem::size_of_val(buf) <= ctx.small_bytes;
        let outcome = tokio::time::timeout(self.options.op_timeout, async {
            if small {
                direct_all_reduce(&mut self.links, ctx, buf, op).await
            } else {
                ring(&mut self.links, ctx, buf, op, Phases::Both).await
            }
        })
        .await;
        let waiting = if small {
            others(ctx).collect()
        } else {
            vec![(ctx.rank + ctx.world - 1) % ctx.world]
        };
        self.settle("all_reduce", outcome, waiting).await
    }

    /// Combines every rank's `buf` with `op` and leaves each rank its own shard of the
    /// result (`shard_range(buf.len())`, returned) in place; the rest of `buf` holds
    /// partial results afterwards.
    pub async fn reduce_scatter<T: Element>(
        &mut self,
        buf: &mut [T],
        op: ReduceOp,
    ) -> Result<Range<usize>> {
        self.usable()?;
        let ctx = self.ctx();
        let outcome = tokio::time::timeout(
            self.options.op_timeout,
            ring(&mut self.links, ctx, buf, op, Phases::ReduceScatter),
        )
        .await;
        let left = (ctx.rank + ctx.world - 1) % ctx.world;
        self.settle("reduce_scatter", outcome, vec![left]).await?;
        Ok(self.shard_range(buf.len()))
    }

    /// Gathers every rank's shard: on entry each rank's own shard of `buf`
    /// (`shard_range(buf.len())`) holds its part; on return every rank has all of them.
    pub async fn all_gather<T: Element>(&mut self, buf: &mut [T]) -> Result<()> {
        self.usable()?;
        let ctx = self.ctx();
        let outcome = tokio::time::timeout(
            self.options.op_timeout,
            ring(&mut self.links, ctx, buf, ReduceOp::Sum, Phases::AllGather),
        )
        .await;
        let left = (ctx.rank + ctx.world - 1) % ctx.world;
        self.settle("all_gather", outcome, vec![left]).await
    }

    /// Copies `root`'s `buf` into every other rank's.
    pub async fn broadcast<T: Element>(&mut self, buf: &mut [T], root: usize) -> Result<()> {
        self.usable()?;
        self.check_peer(root, "root")?;
        let ctx = self.ctx();
        let outcome = tokio::time::timeout(
            self.options.op_timeout,
            broadcast(&mut self.links, ctx, buf, root),
        )
        .await;
        self.settle("broadcast", outcome, vec![root]).await
    }

    /// Combines every rank's `buf` with `op` into `root`'s; the other ranks' buffers hold
    /// partial results afterwards.
    pub async fn reduce<T: Element>(
        &mut self,
        buf: &mut [T],
        op: ReduceOp,
        root: usize,
    ) -> Result<()> {
        self.usable()?;
        self.check_peer(root, "root")?;
        let ctx = self.ctx();
        let outcome = tokio::time::timeout(self.options.op_timeout, async {
            ring(&mut self.links, ctx, buf, op, Phases::ReduceScatter).await?;
            gather_shards(&mut self.links, ctx, buf, root).await
        })
        .await;
        self.settle("reduce", outcome, others(ctx).collect()).await
    }

    /// Returns once every rank has called it.
    pub async fn barrier(&mut self) -> Result<()> {
        self.usable()?;
        let ctx = self.ctx();
        let outcome =
            tokio::time::timeout(self.options.op_timeout, barrier(&mut self.links, ctx)).await;
        self.settle("barrier", outcome, others(ctx).collect()).await
    }

    /// Sends `buf` to rank `to`, which takes it with `recv` (messages between two ranks
    /// arrive in order).
    pub async fn send<T: Element>(&mut self, buf: &[T], to: usize) -> Result<()> {
        self.usable()?;
        self.check_peer(to, "destination rank")?;
        let bytes = bytemuck::cast_slice::<T, u8>(buf).to_vec();
        let links = &mut self.links;
        let outcome = tokio::time::timeout(self.options.op_timeout, async {
            send_to(sender(&mut links.to, to)?, to, bytes).await
        })
        .await;
        self.settle("send", outcome, vec![to]).await
    }

    /// Receives into `buf` what rank `from` sent with `send` (it must be `buf`'s length).
    pub async fn recv<T: Element>(&mut self, buf: &mut [T], from: usize) -> Result<()> {
        self.usable()?;
        self.check_peer(from, "source rank")?;
        let expected = std::mem::size_of_val(buf);
        let links = &mut self.links;
        let outcome = tokio::time::timeout(self.options.op_timeout, async {
            let bytes = recv_exact(receiver(&mut links.from, from)?, from, expected).await?;
            copy_bytes(buf, &bytes);
            Ok(())
        })
        .await;
        self.settle("recv", outcome, vec![from]).await
    }

    /// This rank's shard of a buffer of `len` elements (what `reduce_scatter` leaves it and
    /// `all_gather` takes from it).
    pub fn shard_range(&self, len: usize) -> Range<usize> {
        shard_range(len, self.world, self.rank)
    }
}
