//! Narrow operators (map, filter, flat_map, filter_map, timestamp assignment) and the keyed
//! process function with per-key state and event-time timers.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::pipe::{key_group, Batch, Operator, OperatorState};

pub(crate) struct MapOp<F>(pub std::sync::Arc<F>);

impl<I, O, F> Operator<I, O> for MapOp<F>
where
    F: Fn(I) -> O + Send + Sync,
{
    fn process(&mut self, input: Batch<I>, out: &mut Batch<O>) {
        out.extend(input.into_iter().map(|(ts, v)| (ts, (*self.0)(v))));
    }
}

pub(crate) struct FilterOp<F>(pub std::sync::Arc<F>);

impl<T, F> Operator<T, T> for FilterOp<F>
where
    F: Fn(&T) -> bool + Send + Sync,
{
    fn process(&mut self, input: Batch<T>, out: &mut Batch<T>) {
        out.extend(input.into_iter().filter(|(_, v)| (*self.0)(v)));
    }
}

pub(crate) struct FilterMapOp<F>(pub std::sync::Arc<F>);

impl<I, O, F> Operator<I, O> for FilterMapOp<F>
where
    F: Fn(I) -> Option<O> + Send + Sync,
{
    fn process(&mut self, input: Batch<I>, out: &mut Batch<O>) {
        out.extend(
            input
                .into_iter()
                .filter_map(|(ts, v)| (*self.0)(v).map(|o| (ts, o))),
        );
    }
}

pub(crate) struct FlatMapOp<F>(pub std::sync::Arc<F>);

impl<I, O, F, It> Operator<I, O> for FlatMapOp<F>
where
    F: Fn(I) -> It + Send + Sync,
    It: IntoIterator<Item = O>,
{
    fn process(&mut self, input: Batch<I>, out: &mut Batch<O>) {
        for (ts, v) in input {
            out.extend((*self.0)(v).into_iter().map(|o| (ts, o)));
        }
    }
}

/// How far behind the largest timestamp seen the watermark stays: records at most this
/// much out of order are on time.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct BoundedOutOfOrder(pub Duration);

/// Sets each record's event time and generates watermarks (bounded out-of-orderness).
pub(crate) struct AssignTimestampsOp<F> {
    pub timestamp: std::sync::Arc<F>,
    pub bound_ms: i64,
    pub max_seen: i64,
    pub emitted: i64,
}

impl<T, F> Operator<T, T> for AssignTimestampsOp<F>
where
    F: Fn(&T) -> i64 + Send + Sync,
{
    fn process(&mut self, input: Batch<T>, out: &mut Batch<T>) {
        for (_, v) in input {
            let ts = (*self.timestamp)(&v);
            self.max_seen = self.max_seen.max(ts);
            out.push((ts, v));
        }
    }

    fn on_watermark(&mut self, watermark: i64, _out: &mut Batch<T>) -> i64 {
        // Upstream watermarks are replaced by this assigner's, except the end of input.
        if watermark == i64::MAX {
            i64::MAX
        } else {
            self.emitted
        }
    }

    fn generated_watermark(&mut self) -> Option<i64> {
        if self.max_seen == i64::MIN {
            return None;
        }
        let watermark = self
            .max_seen
            .saturating_sub(self.bound_ms)
            .saturating_sub(1);
        (watermark > self.emitted).then(|| {
            self.emitted = watermark;
            watermark
        })
    }

    fn snapshot(&mut self) -> Result<OperatorState, String> {
        Ok(OperatorState {
            keyed: Vec::new(),
            instance: encode(&(self.max_seen, self.emitted))?,
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<(), String> {
        if !state.instance.is_empty() {
            (self.max_seen, self.emitted) = decode(&state.instance, "a timestamp assigner")?;
        }
        Ok(())
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(value).map_err(|e| format!("state does not encode: {e}"))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    bincode::deserialize(bytes).map_err(|e| {
        format!("the checkpointed state of {what} does not decode ({e}); was the job's code changed since the checkpoint?")
    })
}

/// The hash keyed operators route and group by (stable across processes of one binary).
pub fn key_hash<K: Hash>(key: &K) -> u64 {
    use std::hash::Hasher;
    // FNV-1a over the key's Hash stream: deterministic (no random seed) in every process.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= *b as u64;
                self.0 = self.0.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    key.hash(&mut hasher);
    hasher.finish()
}

/// What a keyed process function can do while it handles a record or a timer.
pub struct ProcessContext<'a, O> {
    pub(crate) out: &'a mut Batch<O>,
    pub(crate) timers: &'a mut Vec<i64>,
    pub(crate) watermark: i64,
    pub(crate) timestamp: i64,
    pub(crate) clear: bool,
}

impl<O> ProcessContext<'_, O> {
    /// Emits a record with the event time of the record (or timer) being handled.
    pub fn emit(&mut self, value: O) {
        self.out.push((self.timestamp, value));
    }

    /// Emits a record with an explicit event time.
    pub fn emit_at(&mut self, timestamp: i64, value: O) {
        self.out.push((timestamp, value));
    }

    /// Calls `on_timer` for this key once the watermark passes `time`.
    pub fn register_event_timer(&mut self, time: i64) {
        self.timers.push(time);
    }

    /// The current watermark of this operator's input.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// The event time of the record (or timer) being handled.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// Drops this key's state after the call (its timers stay).
    pub fn clear_state(&mut self) {
        self.clear = true;
    }
}

/// Per-key logic with state and event-time timers (Flink's `KeyedProcessFunction`).
///
/// The state is one value per key, of any serializable type: a field is a `ValueState`, a
/// `HashMap` field a `MapState`, a `Vec` field a `ListState`. It is checkpointed by key
/// group, so a job restored at another parallelism finds each key's state where the key
/// now goes.
pub trait KeyedProcessFunction<K, I, O>: Send + Sync + 'static {
    /// The state kept for each key.
    type State: Default + Serialize + DeserializeOwned + Send + 'static;

    /// Handles one record of `key`.
    fn process(&self, key: &K, value: I, state: &mut Self::State, ctx: &mut ProcessContext<O>);

    /// A timer registered for `key` fired (the watermark passed `time`).
    fn on_timer(
        &self,
        _key: &K,
        _time: i64,
        _state: &mut Self::State,
        _ctx: &mut ProcessContext<O>,
    ) {
    }
}

pub(crate) struct KeyedProcessOp<K, S, F, KF> {
    pub function: std::sync::Arc<F>,
    pub key: KF,
    pub states: HashMap<K, S>,
    /// (time, key) of registered timers, in firing order.
    pub timers: BTreeSet<(i64, K)>,
    pub watermark: i64,
}

impl<K, S, F, KF> KeyedProcessOp<K, S, F, KF> {
    pub fn new(function: std::sync::Arc<F>, key: KF) -> Self {
        KeyedProcessOp {
            function,
            key,
            states: HashMap::new(),
            timers: BTreeSet::new(),
            watermark: i64::MIN,
        }
    }
}

impl<K, I, O, F, KF> Operator<I, O> for KeyedProcessOp<K, F::State, F, KF>
where
    K: Hash + Eq + Ord + Clone + Serialize + DeserializeOwned + Send + 'static,
    F: KeyedProcessFunction<K, I, O>,
    KF: Fn(&I) -> K + Send,
{
    fn process(&mut self, input: Batch<I>, out: &mut Batch<O>) {
        let mut timers = Vec::new();
        for (ts, value) in input {
            let key = (self.key)(&value);
            let state = self.states.entry(key.clone()).or_default();
            let mut ctx = ProcessContext {
                out,
                timers: &mut timers,
                watermark: self.watermark,
                timestamp: ts,
                clear: false,
            };
            self.function.process(&key, value, state, &mut ctx);
            let clear = ctx.clear;
            for time in timers.drain(..) {
                self.timers.insert((time, key.clone()));
            }
            if clear {
                self.states.remove(&key);
            }
        }
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Batch<O>) -> i64 {
        // Never backwards (a restored operator sees its inputs' watermarks start again).
        let watermark = watermark.max(self.watermark);
        self.watermark = watermark;
        let mut timers = Vec::new();
        while let Some((time, _)) = self.timers.first() {
            if *time > watermark {
                break;
            }
            let Some((time, key)) = self.timers.pop_first() else {
                break;
            };
            let state = self.states.entry(key.clone()).or_default();
            let mut ctx = ProcessContext {
                out,
                timers: &mut timers,
                watermark,
                timestamp: time,
                clear: false,
            };
            self.function.on_timer(&key, time, state, &mut ctx);
            let clear = ctx.clear;
            for later in timers.drain(..) {
                self.timers.insert((later.max(time + 1), key.clone()));
            }
            if clear {
                self.states.remove(&key);
            }
        }
        watermark
    }

    fn snapshot(&mut self) -> Result<OperatorState, String> {
        type Group<'a, K, S> = (Vec<(&'a K, &'a S)>, Vec<(i64, &'a K)>);
        let mut groups: HashMap<u32, Group<K, F::State>> = HashMap::new();
        for (key, state) in &self.states {
            groups
                .entry(key_group(key_hash(key)))
                .or_default()
                .0
                .push((key, state));
        }
        for (time, key) in &self.timers {
            groups
                .entry(key_group(key_hash(key)))
                .or_default()
                .1
                .push((*time, key));
        }
        let mut keyed = Vec::with_capacity(groups.len());
        for (group, entries) in groups {
            keyed.push((group, encode(&entries)?));
        }
        Ok(OperatorState {
            keyed,
            instance: encode(&self.watermark)?,
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<(), String> {
        for (_, bytes) in state.keyed {
            type Group<K, S> = (Vec<(K, S)>, Vec<(i64, K)>);
            let (states, timers): Group<K, F::State> = decode(&bytes, "a keyed process function")?;
            self.states.extend(states);
            self.timers.extend(timers);
        }
        if !state.instance.is_empty() {
            self.watermark = decode(&state.instance, "a keyed process function")?;
        }
        Ok(())
    }
}
