//! Event-time windows: assigners (tumbling, sliding, session) and the keyed window
//! operator that aggregates records into them incrementally and fires each window once the
//! watermark passes its end (plus the allowed lateness).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::aggregate::AggregateFunction;
use crate::operators::{decode, encode, key_hash};
use crate::pipe::{key_group, Batch, Operator, OperatorState};

/// Which windows a record belongs to.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum Windows {
    /// Fixed, non-overlapping windows of `size` ms, aligned to the epoch.
    Tumbling { size: i64 },
    /// Windows of `size` ms starting every `slide` ms.
    Sliding { size: i64, slide: i64 },
    /// Per key, records closer than `gap` ms share a window (windows merge).
    Session { gap: i64 },
}

/// Tumbling windows.
pub struct Tumbling;

impl Tumbling {
    /// Windows of `size`.
    pub fn of(size: Duration) -> Windows {
        Windows::Tumbling {
            size: (size.as_millis() as i64).max(1),
        }
    }
}

/// Sliding windows.
pub struct Sliding {
    size: i64,
}

impl Sliding {
    /// Windows of `size`, starting every `every(..)`.
    pub fn of(size: Duration) -> Sliding {
        Sliding {
            size: (size.as_millis() as i64).max(1),
        }
    }

    /// How often a window starts.
    pub fn every(self, slide: Duration) -> Windows {
        Windows::Sliding {
            size: self.size,
            slide: (slide.as_millis() as i64).clamp(1, self.size),
        }
    }
}

/// Session windows.
pub struct Session;

impl Session {
    /// Sessions closed by `gap` without records.
    pub fn with_gap(gap: Duration) -> Windows {
        Windows::Session {
            gap: (gap.as_millis() as i64).max(1),
        }
    }
}

impl Windows {
    /// The (start, end) of each window containing `ts` (end exclusive).
    pub fn assign(&self, ts: i64, into: &mut Vec<(i64, i64)>) {
        match *self {
            Windows::Tumbling { size } => {
                let start = ts - ts.rem_euclid(size);
                into.push((start, start + size));
            }
            Windows::Sliding { size, slide } => {
                let last_start = ts - ts.rem_euclid(slide);
                let mut start = last_start;
                while start > ts - size {
                    into.push((start, start + size));
                    start -= slide;
                }
            }
            Windows::Session { gap } => into.push((ts, ts + gap)),
        }
    }
}

/// One window's result for one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowResult<K, R> {
    /// The key.
    pub key: K,
    /// The window's first millisecond.
    pub start: i64,
    /// The window's end (exclusive); the result's event time is `end - 1`.
    pub end: i64,
    /// The aggregate.
    pub value: R,
}

/// The keyed window operator: one accumulator per (key, window).
pub(crate) struct WindowOp<K, T, A: AggregateFunction<T>, KF> {
    pub windows: Windows,
    pub aggregate: A,
    pub key: KF,
    pub allowed_lateness: i64,
    /// Open windows by end: key → (start, accumulator).
    pub open: BTreeMap<i64, HashMap<K, (i64, A::Acc)>>,
    pub watermark: i64,
    pub late: u64,
    pub scratch: Vec<(i64, i64)>,
    pub _records: std::marker::PhantomData<fn(T)>,
}

impl<K, T, A: AggregateFunction<T>, KF> WindowOp<K, T, A, KF> {
    pub fn new(windows: Windows, aggregate: A, key: KF, allowed_lateness: i64) -> Self {
        WindowOp {
            windows,
            aggregate,
            key,
            allowed_lateness,
            open: BTreeMap::new(),
            watermark: i64::MIN,
            late: 0,
            scratch: Vec::new(),
            _records: std::marker::PhantomData,
        }
    }
}

impl<K, T, A, KF> WindowOp<K, T, A, KF>
where
    K: Hash + Eq + Clone,
    A: AggregateFunction<T>,
{
    /// Session windows: the session of `key` that overlaps [start, end), merged with every
    /// other one it now bridges.
    fn merge_session(&mut self, key: &K, mut start: i64, mut end: i64) -> (i64, i64, A::Acc) {
        let mut acc = self.aggregate.create();
        let overlapping: Vec<i64> = self
            .open
            .range(start..)
            .filter(|(_, keys)| keys.get(key).is_some_and(|(s, _)| *s <= end))
            .map(|(e, _)| *e)
            .collect();
        for window_end in overlapping {
            if let Some(keys) = self.open.get_mut(&window_end) {
                if let Some((s, other)) = keys.remove(key) {
                    start = start.min(s);
                    end = end.max(window_end);
                    acc = self.aggregate.merge(acc, other);
                }
                if keys.is_empty() {
                    self.open.remove(&window_end);
                }
            }
        }
        (start, end, acc)
    }
}

impl<K, T, A, KF> Operator<T, WindowResult<K, A::Out>> for WindowOp<K, T, A, KF>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + 'static,
    T: Send,
    A: AggregateFunction<T>,
    KF: Fn(&T) -> K + Send,
{
    fn process(&mut self, input: Batch<T>, _out: &mut Batch<WindowResult<K, A::Out>>) {
        let mut windows = std::mem::take(&mut self.scratch);
        for (ts, value) in input {
            windows.clear();
            self.windows.assign(ts, &mut windows);
            let key = (self.key)(&value);
            let mut assigned = false;
            for &(start, end) in windows.iter() {
                if end - 1 + self.allowed_lateness <= self.watermark {
                    continue;
                }
                assigned = true;
                if let Windows::Session { .. } = self.windows {
                    let (start, end, mut acc) = self.merge_session(&key, start, end);
                    self.aggregate.add(&mut acc, &value);
                    self.open
                        .entry(end)
                        .or_default()
                        .insert(key.clone(), (start, acc));
                    continue;
                }
                let slot = self
                    .open
                    .entry(end)
                    .or_default()
                    .entry(key.clone())
                    .or_insert_with(|| (start, self.aggregate.create()));
                self.aggregate.add(&mut slot.1, &value);
            }
            if !assigned {
                self.late += 1;
            }
        }
        self.scratch = windows;
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Batch<WindowResult<K, A::Out>>) -> i64 {
        // Never backwards (a restored operator sees its inputs' watermarks start again).
        let watermark = watermark.max(self.watermark);
        self.watermark = watermark;
        while let Some((&end, _)) = self.open.first_key_value() {
            if end - 1 + self.allowed_lateness > watermark {
                break;
            }
            let Some((end, keys)) = self.open.pop_first() else {
                break;
            };
            for (key, (start, acc)) in keys {
                out.push((
                    end - 1,
                    WindowResult {
                        key,
                        start,
                        end,
                        value: self.aggregate.result(acc),
                    },
                ));
            }
        }
        // Results carry `end - 1`: the output watermark is what is still open, not more.
        match self.open.first_key_value() {
            Some((&end, _)) => watermark.min(end - 2),
            None => watermark,
        }
    }

    fn late_records(&self) -> u64 {
        self.late
    }

    fn snapshot(&mut self) -> Result<OperatorState, String> {
        type Entry<'a, K, Acc> = (i64, &'a K, i64, &'a Acc);
        let mut groups: HashMap<u32, Vec<Entry<K, A::Acc>>> = HashMap::new();
        for (end, keys) in &self.open {
            for (key, (start, acc)) in keys {
                groups
                    .entry(key_group(key_hash(key)))
                    .or_default()
                    .push((*end, key, *start, acc));
            }
        }
        let mut keyed = Vec::with_capacity(groups.len());
        for (group, entries) in groups {
            keyed.push((group, encode(&entries)?));
        }
        Ok(OperatorState {
            keyed,
            instance: encode(&(self.watermark, self.late))?,
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<(), String> {
        for (_, bytes) in state.keyed {
            let entries: Vec<(i64, K, i64, A::Acc)> = decode(&bytes, "a window operator")?;
            for (end, key, start, acc) in entries {
                self.open.entry(end).or_default().insert(key, (start, acc));
            }
        }
        if !state.instance.is_empty() {
            (self.watermark, self.late) = decode(&state.instance, "a window operator")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Count;

    #[test]
    fn sliding_windows_cover_a_timestamp_size_over_slide_times() {
        let windows = Sliding::of(Duration::from_secs(10)).every(Duration::from_secs(2));
        let mut into = Vec::new();
        windows.assign(12_345, &mut into);
        assert_eq!(into.len(), 5);
        assert!(into
            .iter()
            .all(|(s, e)| *s <= 12_345 && 12_345 < *e && e - s == 10_000));
        into.clear();
        Tumbling::of(Duration::from_secs(10)).assign(-1, &mut into);
        assert_eq!(into, vec![(-10_000, 0)]);
    }

    #[test]
    fn windows_fire_at_the_watermark_and_late_records_are_counted() {
        let mut op = WindowOp::new(
            Tumbling::of(Duration::from_millis(10)),
            Count,
            |v: &u32| *v,
            0,
        );
        let mut out = Vec::new();
        op.process(vec![(1, 7), (5, 7), (12, 7), (3, 8)], &mut out);
        assert!(out.is_empty());
        assert_eq!(op.on_watermark(9, &mut out), 9);
        out.sort_by_key(|(_, r)| r.key);
        let fired: Vec<(i64, u32, u64)> = out.iter().map(|(t, r)| (*t, r.key, r.value)).collect();
        assert_eq!(fired, vec![(9, 7, 2), (9, 8, 1)]);
        op.process(vec![(4, 7)], &mut out);
        assert_eq!(op.late_records(), 1);
    }

    #[test]
    fn sessions_merge_when_a_record_bridges_them() {
        let mut op = WindowOp::new(
            Session::with_gap(Duration::from_millis(10)),
            Count,
            |v: &u8| *v,
            0,
        );
        let mut out = Vec::new();
        op.process(vec![(0, 1), (30, 1), (15, 1)], &mut out);
        op.on_watermark(i64::MAX, &mut out);
        let sessions: Vec<(i64, i64, u64)> =
            out.iter().map(|(_, r)| (r.start, r.end, r.value)).collect();
        // 0 and 15 are 15 apart (> gap) but 15's session [15, 25) touches neither 0's
        // [0, 10) nor 30's [30, 40): three sessions.
        assert_eq!(sessions, vec![(0, 10, 1), (15, 25, 1), (30, 40, 1)]);
        let mut op = WindowOp::new(
            Session::with_gap(Duration::from_millis(10)),
            Count,
            |v: &u8| *v,
            0,
        );
        let mut out = Vec::new();
        op.process(vec![(0, 1), (16, 1), (8, 1)], &mut out);
        op.on_watermark(i64::MAX, &mut out);
        let sessions: Vec<(i64, i64, u64)> =
            out.iter().map(|(_, r)| (r.start, r.end, r.value)).collect();
        assert_eq!(sessions, vec![(0, 26, 3)]);
    }
}
