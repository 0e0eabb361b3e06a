//! The ring algorithms' arithmetic, pure: how a buffer splits into one shard per rank and
//! each shard into pieces, and which shard a rank sends and receives at each step.
//!
//! Ring all-reduce over `n` ranks is a reduce-scatter (`n-1` steps: each rank passes a shard
//! to its right neighbour, which adds its own; after them rank `r` holds shard `r` fully
//! reduced) then an all-gather (`n-1` steps passing the reduced shards on). Every rank sends
//! and receives `(n-1)/n` of the buffer per phase, the least any algorithm can (the bus
//! bandwidth `algbw · 2(n-1)/n` counts exactly this traffic). A shard travels in pieces, so
//! that a piece received is passed on while the next one is still on its way.
//!
//! Every shard is reduced once, in ring order, and then copied: all ranks end with the same
//! bits, whatever the float rounding.

use std::ops::Range;

/// Which phases of the ring run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phases {
    /// Reduce-scatter: rank `r` ends with shard `r` reduced.
    ReduceScatter,
    /// All-gather: every rank ends with every rank's shard.
    AllGather,
    /// Both: all-reduce.
    Both,
}

/// One step of the ring for one rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingStep {
    /// The shard sent to the right neighbour.
    pub send: usize,
    /// The shard received from the left neighbour.
    pub recv: usize,
    /// Whether the received shard is combined into the buffer (reduce-scatter) or copied
    /// over it (all-gather).
    pub reduce: bool,
}

/// Shard `index` of a buffer of `len` elements over `ranks` ranks: lengths differ by at most
/// one, the longer ones first.
pub fn shard_range(len: usize, ranks: usize, index: usize) -> Range<usize> {
    let ranks = ranks.max(1);
    let base = len / ranks;
    let extra = len % ranks;
    let start = index * base + index.min(extra);
    let size = base + usize::from(index < extra);
    start..start + size
}

/// How many pieces every shard is cut into, for pieces of about `piece_elems` elements
/// (the same count for every shard, so that a step's pieces line up across ranks).
pub fn piece_count(len: usize, ranks: usize, piece_elems: usize) -> usize {
    let longest = shard_range(len, ranks, 0).len();
    longest.div_ceil(piece_elems.max(1)).max(1)
}

/// Piece `index` of `pieces` of a shard (near-equal parts; empty ones when the shard is
/// shorter than the count).
pub fn piece_range(shard: &Range<usize>, pieces: usize, index: usize) -> Range<usize> {
    let inner = shard_range(shard.len(), pieces, index);
    shard.start + inner.start..shard.start + inner.end
}

/// The steps of rank `rank` in a ring of `ranks`. The shard sent at each step is the one
/// received at the step before, so a piece can go on as soon as it arrived.
pub fn ring_steps(rank: usize, ranks: usize, phases: Phases) -> Vec<RingStep> {
    let n = ranks;
    if n < 2 {
        return Vec::new();
    }
    let at = |offset: usize| (rank + n * 2 - offset % n) % n;
    let mut steps = Vec::with_capacity(2 * (n - 1));
    if matches!(phases, Phases::ReduceScatter | Phases::Both) {
        for s in 0..n - 1 {
            steps.push(RingStep {
                send: at(s + 1),
                recv: at(s + 2),
                reduce: true,
            });
        }
    }
    if matches!(phases, Phases::AllGather | Phases::Both) {
        for k in 0..n - 1 {
            steps.push(RingStep {
                send: at(k),
                recv: at(k + 1),
                reduce: false,
            });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_buffer_in_order() {
        for len in [0, 1, 5, 7, 64, 1001] {
            for ranks in 1..6 {
                let mut next = 0;
                for i in 0..ranks {
                    let r = shard_range(len, ranks, i);
                    assert_eq!(r.start, next, "len {len} ranks {ranks} shard {i}");
                    next = r.end;
                    let pieces = piece_count(len, ranks, 3);
                    let mut inner = r.start;
                    for p in 0..pieces {
                        let piece = piece_range(&r, pieces, p);
                        assert_eq!(piece.start, inner);
                        inner = piece.end;
                    }
                    assert_eq!(inner, r.end);
                }
                assert_eq!(next, len);
            }
        }
    }

    /// Runs the schedule over in-memory buffers, as the ranks would over channels.
    fn simulate(buffers: &mut [Vec<i64>], phases: Phases) {
        let n = buffers.len();
        let len = buffers[0].len();
        let schedules: Vec<Vec<RingStep>> = (0..n).map(|r| ring_steps(r, n, phases)).collect();
        for s in 0..schedules[0].len() {
            // Every rank sends before any receives, as over channels.
            let sent: Vec<Vec<i64>> = (0..n)
                .map(|r| buffers[r][shard_range(len, n, schedules[r][s].send)].to_vec())
                .collect();
            for (r, schedule) in schedules.iter().enumerate() {
                let step = schedule[s];
                let from = (r + n - 1) % n;
                let range = shard_range(len, n, step.recv);
                assert_eq!(
                    range,
                    shard_range(len, n, schedules[from][s].send),
                    "rank {r} step {s} receives what its left neighbour sends"
                );
                for (a, b) in buffers[r][range].iter_mut().zip(&sent[from]) {
                    if step.reduce {
                        *a += *b;
                    } else {
                        *a = *b;
                    }
                }
            }
        }
    }

    #[test]
    fn the_ring_all_reduces_on_every_rank() {
        for n in 2..7 {
            for len in [1, 2, n, 3 * n + 1, 50] {
                let mut buffers: Vec<Vec<i64>> = (0..n)
                    .map(|r| (0..len).map(|i| (r * 1000 + i) as i64).collect())
                    .collect();
                let expected: Vec<i64> = (0..len)
                    .map(|i| (0..n).map(|r| (r * 1000 + i) as i64).sum())
                    .collect();
                simulate(&mut buffers, Phases::Both);
                for (r, buffer) in buffers.iter().enumerate() {
                    assert_eq!(buffer, &expected, "n {n} len {len} rank {r}");
                }
            }
        }
    }

    #[test]
    fn reduce_scatter_leaves_each_rank_its_own_shard_and_all_gather_shares_them() {
        let n = 4;
        let len = 10;
        let mut buffers: Vec<Vec<i64>> = (0..n).map(|r| vec![r as i64 + 1; len]).collect();
        simulate(&mut buffers, Phases::ReduceScatter);
        for (r, buffer) in buffers.iter().enumerate() {
            assert!(
                buffer[shard_range(len, n, r)].iter().all(|v| *v == 10),
                "rank {r}: {buffer:?}"
            );
        }
        let mut gathered: Vec<Vec<i64>> = (0..n)
            .map(|r| {
                let mut b = vec![0; len];
                for i in shard_range(len, n, r) {
                    b[i] = r as i64;
                }
                b
            })
            .collect();
        simulate(&mut gathered, Phases::AllGather);
        let expected: Vec<i64> = (0..len)
            .map(|i| {
                (0..n)
                    .find(|r| shard_range(len, n, *r).contains(&i))
                    .unwrap_or(0) as i64
            })
            .collect();
        for buffer in &gathered {
            assert_eq!(buffer, &expected);
        }
    }

    #[test]
    fn each_step_sends_what_the_step_before_received() {
        for n in 2..6 {
            for r in 0..n {
                let steps = ring_steps(r, n, Phases::Both);
                assert_eq!(steps.len(), 2 * (n - 1));
                for pair in steps.windows(2) {
                    assert_eq!(pair[1].send, pair[0].recv, "n {n} rank {r}");
                }
            }
        }
    }
}
