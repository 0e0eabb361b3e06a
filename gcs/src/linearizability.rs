//! A linearizability checker for histories of read/write registers (a key-value store is one
//! register per key; linearizability is compositional, so keys are checked separately).
//!
//! The search is Wing & Gong's, with Lowe's memoization of (linearized set, register value):
//! repeatedly pick an operation that may take effect next (no un-linearized operation
//! returned before it was invoked), check it against the register, recurse, backtrack.
//! Operations whose outcome the client never learned (a timed-out write) may take effect at
//! any point after their call, or never; reads without an answer carry no information and
//! are dropped.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind<V> {
    /// Wrote the value.
    Write(V),
    /// Read this value (`None`: the register was empty).
    Read(Option<V>),
}

/// One client operation in a history.
#[derive(Clone, Debug)]
pub struct Operation<V> {
    /// Which client issued it (for messages).
    pub client: usize,
    /// When it was invoked (any monotonic unit).
    pub call: u64,
    /// When its answer arrived; `None` if it never did (the outcome is unknown).
    pub ret: Option<u64>,
    /// The operation and its result.
    pub kind: OpKind<V>,
}

/// Why a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key whose sub-history failed.
    pub key: String,
    /// A human-readable account.
    pub explanation: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key {}: {}", self.key, self.explanation)
    }
}

/// Checks one register's history.
pub fn check_register<V: Clone + Eq + Hash + Debug>(
    initial: Option<V>,
    history: &[Operation<V>],
) -> Result<(), String> {
    let ops: Vec<&Operation<V>> = history
        .iter()
        .filter(|op| !(op.ret.is_none() && matches!(op.kind, OpKind::Read(_))))
        .collect();
    if ops.len() > 4096 {
        return Err(format!(
            "history of {} operations is too long to check; split it",
            ops.len()
        ));
    }
    let mut search = Search {
        ops: &ops,
        done: vec![false; ops.len()],
        seen: HashSet::new(),
        completed_left: ops.iter().filter(|op| op.ret.is_some()).count(),
        best: 0,
        best_value: initial.clone(),
    };
    if search.dfs(initial, 0) {
        Ok(())
    } else {
        let stuck: Vec<String> = ops
            .iter()
            .enumerate()
            .filter(|(i, op)| op.ret.is_some() && !search.done_at_best(*i))
            .take(5)
            .map(|(_, op)| {
                format!(
                    "client {} {:?} [{}, {:?}]",
                    op.client, op.kind, op.call, op.ret
                )
            })
            .collect();
        Err(format!(
            "no linearization: at most {} of {} operations could be ordered (register then held {:?}); \
             first operations that could not: {}",
            search.best,
            ops.len(),
            search.best_value,
            stuck.join("; ")
        ))
    }
}

struct Search<'a, V> {
    ops: &'a [&'a Operation<V>],
    done: Vec<bool>,
    seen: HashSet<(Vec<u64>, Option<V>)>,
    completed_left: usize,
    best: usize,
    best_value: Option<V>,
}

impl<V: Clone + Eq + Hash + Debug> Search<'_, V> {
    fn done_at_best(&self, i: usize) -> bool {
        self.done[i]
    }

    fn key(&self, value: &Option<V>) -> (Vec<u64>, Option<V>) {
        let mut bits = vec![0u64; self.done.len().div_ceil(64)];
        for (i, done) in self.done.iter().enumerate() {
            if *done {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        (bits, value.clone())
    }

    fn dfs(&mut self, value: Option<V>, depth: usize) -> bool {
        if self.completed_left == 0 {
            return true;
        }
        if depth > self.best {
            self.best = depth;
            self.best_value = value.clone();
        }
        if !self.seen.insert(self.key(&value)) {
            return false;
        }
        // An operation can go next only if it was invoked before every pending completed
        // operation returned.
        let horizon = self
            .ops
            .iter()
            .enumerate()
            .filter(|(i, op)| !self.done[*i] && op.ret.is_some())
            .filter_map(|(_, op)| op.ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            if self.done[i] || self.ops[i].call > horizon {
                continue;
            }
            let next = match &self.ops[i].kind {
                OpKind::Write(v) => Some(v.clone()),
                OpKind::Read(seen) => {
                    if *seen != value {
                        continue;
                    }
                    value.clone()
                }
            };
            let completed = self.ops[i].ret.is_some();
            self.done[i] = true;
            if completed {
                self.completed_left -= 1;
            }
            if self.dfs(next, depth + 1) {
                return true;
            }
            self.done[i] = false;
            if completed {
                self.completed_left += 1;
            }
        }
        false
    }
}

/// Checks a key-value history: each key is a register that starts empty.
pub fn check_kv<K: Clone + Ord + Debug, V: Clone + Eq + Hash + Debug>(
    history: &[(K, Operation<V>)],
) -> Result<(), Violation> {
    let mut by_key: BTreeMap<K, Vec<Operation<V>>> = BTreeMap::new();
    for (key, op) in history {
        by_key.entry(key.clone()).or_default().push(op.clone());
    }
    for (key, ops) in by_key {
        check_register(None, &ops).map_err(|explanation| Violation {
            key: format!("{key:?}"),
            explanation,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: usize, call: u64, ret: Option<u64>, v: u32) -> Operation<u32> {
        Operation {
            client,
            call,
            ret,
            kind: OpKind::Write(v),
        }
    }
    fn r(client: usize, call: u64, ret: u64, v: Option<u32>) -> Operation<u32> {
        Operation {
            client,
            call,
            ret: Some(ret),
            kind: OpKind::Read(v),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            w(0, 0, Some(1), 1),
            r(1, 2, 3, Some(1)),
            w(0, 4, Some(5), 2),
            r(1, 6, 7, Some(2)),
        ];
        assert!(check_register(None, &h).is_ok());
    }

    #[test]
    fn concurrent_reads_may_see_either_value() {
        // The write overlaps both reads: old then new is fine.
        let h = [w(0, 0, Some(10), 1), r(1, 1, 2, None), r(2, 3, 4, Some(1))];
        assert!(check_register(None, &h).is_ok());
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_caught() {
        let h = [
            w(0, 0, Some(1), 1),
            w(0, 2, Some(3), 2),
            r(1, 4, 5, Some(1)),
        ];
        let err = check_register(None, &h).expect_err("stale read");
        assert!(err.contains("no linearization"), "{err}");
    }

    #[test]
    fn new_then_old_across_reads_is_caught() {
        // Write of 2 overlaps both reads, but a read saw 2 and a later read saw 1.
        let h = [
            w(0, 0, Some(1), 1),
            w(0, 2, Some(20), 2),
            r(1, 3, 4, Some(2)),
            r(2, 5, 6, Some(1)),
        ];
        assert!(check_register(None, &h).is_err());
    }

    #[test]
    fn unknown_outcome_write_may_or_may_not_apply() {
        let lost = [w(0, 0, Some(1), 1), w(0, 2, None, 2), r(1, 10, 11, Some(1))];
        assert!(check_register(None, &lost).is_ok());
        let applied = [w(0, 0, Some(1), 1), w(0, 2, None, 2), r(1, 10, 11, Some(2))];
        assert!(check_register(None, &applied).is_ok());
        // But it cannot apply before it was invoked.
        let early = [w(0, 0, Some(1), 1), r(1, 2, 3, Some(2)), w(0, 5, None, 2)];
        assert!(check_register(None, &early).is_err());
    }

    #[test]
    fn kv_checks_each_key() {
        let h = vec![
            ("a", w(0, 0, Some(1), 1)),
            ("b", w(1, 0, Some(1), 7)),
            ("a", r(2, 2, 3, Some(1))),
            ("b", r(2, 4, 5, None)),
        ];
        let err = check_kv(&h).expect_err("b lost its write");
        assert!(err.key.contains('b'), "{err}");
    }
}
