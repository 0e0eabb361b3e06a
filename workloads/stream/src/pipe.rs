//! The typed inside of one stage: a head (a source, or the decoder of one or two input
//! ports) followed by a chain of operators, all composed at graph-building time into one
//! `Box<dyn Pipe<T>>` per operator instance (operator chaining: records pass between fused
//! operators as plain vectors, never serialized).

use std::collections::VecDeque;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::source::{SourceReader, SourceStatus};

/// Records with their event time (milliseconds; [`NO_TIMESTAMP`] before one is assigned).
pub type Batch<T> = Vec<(i64, T)>;

/// The event time of a record nobody has assigned one to.
pub const NO_TIMESTAMP: i64 = i64::MIN;

/// The number of key groups: the unit keyed state is stored and redistributed in (a job
/// can be restored at any parallelism up to this).
pub const KEY_GROUPS: u32 = 128;

/// The key group of a key's hash.
pub fn key_group(hash: u64) -> u32 {
    // A mix of the hash first: user hashes of small integers are themselves small.
    let mixed = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed >> 32) % KEY_GROUPS as u64) as u32
}

/// The operator instance (of `parallelism`) that owns key group `group` (contiguous
/// ranges, as Flink assigns them, so a rescale moves whole groups).
pub fn instance_of_group(group: u32, parallelism: usize) -> usize {
    (group as usize * parallelism) / KEY_GROUPS as usize
}

/// The state one operator of a chain hands to a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OperatorState {
    /// Keyed state, per key group (redistributable to another parallelism).
    pub keyed: Vec<(u32, Vec<u8>)>,
    /// State of the instance itself (a source's offset, a sink's pending files): restored
    /// only at the same parallelism.
    pub instance: Vec<u8>,
}

impl OperatorState {
    /// Whether this operator holds nothing.
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty() && self.instance.is_empty()
    }
}

/// An operator: records in, records out, with event-time hooks and checkpointed state.
pub trait Operator<I, O>: Send {
    /// Processes a batch of records in order, appending what it emits to `out`.
    fn process(&mut self, input: Batch<I>, out: &mut Batch<O>);

    /// The input watermark advanced to `watermark`: emit what became due; returns the
    /// output watermark (an operator that holds records back returns less).
    fn on_watermark(&mut self, watermark: i64, _out: &mut Batch<O>) -> i64 {
        watermark
    }

    /// A watermark this operator generates itself (a timestamp assigner), if it advanced.
    fn generated_watermark(&mut self) -> Option<i64> {
        None
    }

    /// Records dropped because they arrived behind the watermark (late data).
    fn late_records(&self) -> u64 {
        0
    }

    /// The operator's state for a checkpoint.
    fn snapshot(&mut self) -> Result<OperatorState, String> {
        Ok(OperatorState::default())
    }

    /// Restores state taken by `snapshot` (keyed groups possibly from several instances).
    fn restore(&mut self, _state: OperatorState) -> Result<(), String> {
        Ok(())
    }
}

/// A stage's typed pipeline up to some operator.
pub(crate) trait Pipe<T>: Send {
    /// Decodes one data frame of input `port` and runs it through the chain.
    fn input(&mut self, port: usize, payload: &[u8], out: &mut Batch<T>) -> Result<(), String>;
    /// Reads up to `max` records from the head source and runs them through the chain.
    fn poll(&mut self, max: usize, out: &mut Batch<T>) -> Result<SourceStatus, String>;
    /// The input watermark advanced; returns the output watermark.
    fn on_watermark(&mut self, watermark: i64, out: &mut Batch<T>) -> i64;
    /// A watermark generated inside the chain (after a batch), run through the rest of it.
    fn generated_watermark(&mut self, out: &mut Batch<T>) -> Option<i64>;
    /// Late records dropped so far by the chain's operators.
    fn late_records(&self) -> u64;
    /// Appends each operator's state, head first.
    fn snapshot(&mut self, into: &mut Vec<OperatorState>) -> Result<(), String>;
    /// Restores each operator's state, head first.
    fn restore(&mut self, states: &mut VecDeque<OperatorState>) -> Result<(), String>;
}

impl<T> Pipe<T> for Box<dyn Pipe<T>> {
    fn input(&mut self, port: usize, payload: &[u8], out: &mut Batch<T>) -> Result<(), String> {
        (**self).input(port, payload, out)
    }
    fn poll(&mut self, max: usize, out: &mut Batch<T>) -> Result<SourceStatus, String> {
        (**self).poll(max, out)
    }
    fn on_watermark(&mut self, watermark: i64, out: &mut Batch<T>) -> i64 {
        (**self).on_watermark(watermark, out)
    }
    fn generated_watermark(&mut self, out: &mut Batch<T>) -> Option<i64> {
        (**self).generated_watermark(out)
    }
    fn late_records(&self) -> u64 {
        (**self).late_records()
    }
    fn snapshot(&mut self, into: &mut Vec<OperatorState>) -> Result<(), String> {
        (**self).snapshot(into)
    }
    fn restore(&mut self, states: &mut VecDeque<OperatorState>) -> Result<(), String> {
        (**self).restore(states)
    }
}

/// A pipe followed by one more operator.
pub(crate) struct Chained<I, P, O> {
    pub inner: P,
    pub op: O,
    scratch: Batch<I>,
}

impl<I, P, O> Chained<I, P, O> {
    pub fn new(inner: P, op: O) -> Self {
        Chained {
            inner,
            op,
            scratch: Vec::new(),
        }
    }
}

impl<I, T, P, O> Pipe<T> for Chained<I, P, O>
where
    I: Send,
    P: Pipe<I>,
    O: Operator<I, T>,
{
    fn input(&mut self, port: usize, payload: &[u8], out: &mut Batch<T>) -> Result<(), String> {
        let mut mid = std::mem::take(&mut self.scratch);
        self.inner.input(port, payload, &mut mid)?;
        self.op.process(std::mem::take(&mut mid), out);
        self.scratch = mid;
        Ok(())
    }

    fn poll(&mut self, max: usize, out: &mut Batch<T>) -> Result<SourceStatus, String> {
        let mut mid = std::mem::take(&mut self.scratch);
        let status = self.inner.poll(max, &mut mid)?;
        self.op.process(std::mem::take(&mut mid), out);
        self.scratch = mid;
        Ok(status)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Batch<T>) -> i64 {
        let mut mid = Vec::new();
        let inner = self.inner.on_watermark(watermark, &mut mid);
        if !mid.is_empty() {
            self.op.process(mid, out);
        }
        self.op.on_watermark(inner, out)
    }

    fn generated_watermark(&mut self, out: &mut Batch<T>) -> Option<i64> {
        let mut mid = Vec::new();
        match self.inner.generated_watermark(&mut mid) {
            Some(watermark) => {
                if !mid.is_empty() {
                    self.op.process(mid, out);
                }
                Some(self.op.on_watermark(watermark, out))
            }
            None => self.op.generated_watermark(),
        }
    }

    fn late_records(&self) -> u64 {
        self.inner.late_records() + self.op.late_records()
    }

    fn snapshot(&mut self, into: &mut Vec<OperatorState>) -> Result<(), String> {
        self.inner.snapshot(into)?;
        into.push(self.op.snapshot()?);
        Ok(())
    }

    fn restore(&mut self, states: &mut VecDeque<OperatorState>) -> Result<(), String> {
        self.inner.restore(states)?;
        let state = states
            .pop_front()
            .ok_or("the checkpoint holds fewer operators than this job's stage has")?;
        self.op.restore(state)
    }
}

/// The head of a source stage.
pub(crate) struct SourceHead<T> {
    pub reader: Box<dyn SourceReader<T>>,
}

impl<T: Send> Pipe<T> for SourceHead<T> {
    fn input(&mut self, port: usize, _payload: &[u8], _out: &mut Batch<T>) -> Result<(), String> {
        Err(format!("a source stage has no input port {port}"))
    }

    fn poll(&mut self, max: usize, out: &mut Batch<T>) -> Result<SourceStatus, String> {
        self.reader.poll(max, out)
    }

    fn on_watermark(&mut self, watermark: i64, _out: &mut Batch<T>) -> i64 {
        watermark
    }

    fn generated_watermark(&mut self, _out: &mut Batch<T>) -> Option<i64> {
        None
    }

    fn late_records(&self) -> u64 {
        0
    }

    fn snapshot(&mut self, into: &mut Vec<OperatorState>) -> Result<(), String> {
        into.push(OperatorState {
            keyed: Vec::new(),
            instance: self.reader.offset()?,
        });
        Ok(())
    }

    fn restore(&mut self, states: &mut VecDeque<OperatorState>) -> Result<(), String> {
        let state = states
            .pop_front()
            .ok_or("the checkpoint holds no source offset")?;
        self.reader.seek(&state.instance)
    }
}

/// The head of a stage fed by one exchange: decodes batches of `T`.
pub(crate) struct InputHead<T> {
    _records: std::marker::PhantomData<fn() -> T>,
}

impl<T> InputHead<T> {
    pub fn new() -> Self {
        InputHead {
            _records: std::marker::PhantomData,
        }
    }
}

/// Decodes one data frame's records (the encoding [`encode_batch`] writes).
pub(crate) fn decode_batch<T: DeserializeOwned>(payload: &[u8]) -> Result<Batch<T>, String> {
    bincode::deserialize(payload).map_err(|e| {
        format!(
            "a data frame of {} bytes does not decode as this stage's input type ({e}); was the job changed between the checkpoint and this run?",
            payload.len()
        )
    })
}

/// Encodes records for an exchange.
pub(crate) fn encode_batch<T: Serialize>(records: &Batch<T>, into: &mut Vec<u8>) {
    // Serializing plain data into a vector cannot fail except on a type whose Serialize
    // impl itself errors (a map with non-string keys is fine for bincode).
    if let Err(e) = bincode::serialize_into(&mut *into, records) {
        tracing::error!("a record batch could not be encoded: {e}");
    }
}

impl<T: DeserializeOwned + Send> Pipe<T> for InputHead<T> {
    fn input(&mut self, port: usize, payload: &[u8], out: &mut Batch<T>) -> Result<(), String> {
        if port != 0 {
            return Err(format!("a one-input stage got data on port {port}"));
        }
        out.extend(decode_batch::<T>(payload)?);
        Ok(())
    }

    fn poll(&mut self, _max: usize, _out: &mut Batch<T>) -> Result<SourceStatus, String> {
        Err("an inner stage has no source to poll".into())
    }

    fn on_watermark(&mut self, watermark: i64, _out: &mut Batch<T>) -> i64 {
        watermark
    }

    fn generated_watermark(&mut self, _out: &mut Batch<T>) -> Option<i64> {
        None
    }

    fn late_records(&self) -> u64 {
        0
    }

    fn snapshot(&mut self, _into: &mut Vec<OperatorState>) -> Result<(), String> {
        Ok(())
    }

    fn restore(&mut self, _states: &mut VecDeque<OperatorState>) -> Result<(), String> {
        Ok(())
    }
}

/// One of two connected streams' records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Either<A, B> {
    /// A record of the first stream (port 0).
    Left(A),
    /// A record of the second stream (port 1).
    Right(B),
}

/// The head of a stage fed by two exchanges of different types.
pub(crate) struct TwoInputHead<A, B> {
    _records: std::marker::PhantomData<fn() -> (A, B)>,
}

impl<A, B> TwoInputHead<A, B> {
    pub fn new() -> Self {
        TwoInputHead {
            _records: std::marker::PhantomData,
        }
    }
}

impl<A, B> Pipe<Either<A, B>> for TwoInputHead<A, B>
where
    A: DeserializeOwned + Send,
    B: DeserializeOwned + Send,
{
    fn input(
        &mut self,
        port: usize,
        payload: &[u8],
        out: &mut Batch<Either<A, B>>,
    ) -> Result<(), String> {
        match port {
            0 => out.extend(
                decode_batch::<A>(payload)?
                    .into_iter()
                    .map(|(ts, a)| (ts, Either::Left(a))),
            ),
            1 => out.extend(
                decode_batch::<B>(payload)?
                    .into_iter()
                    .map(|(ts, b)| (ts, Either::Right(b))),
            ),
            other => return Err(format!("a two-input stage got data on port {other}")),
        }
        Ok(())
    }

    fn poll(
        &mut self,
        _max: usize,
        _out: &mut Batch<Either<A, B>>,
    ) -> Result<SourceStatus, String> {
        Err("an inner stage has no source to poll".into())
    }

    fn on_watermark(&mut self, watermark: i64, _out: &mut Batch<Either<A, B>>) -> i64 {
        watermark
    }

    fn generated_watermark(&mut self, _out: &mut Batch<Either<A, B>>) -> Option<i64> {
        None
    }

    fn late_records(&self) -> u64 {
        0
    }

    fn snapshot(&mut self, _into: &mut Vec<OperatorState>) -> Result<(), String> {
        Ok(())
    }

    fn restore(&mut self, _states: &mut VecDeque<OperatorState>) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_cover_instances_in_contiguous_ranges() {
        for parallelism in [1, 2, 3, 4, 7] {
            let owners: Vec<usize> = (0..KEY_GROUPS)
                .map(|g| instance_of_group(g, parallelism))
                .collect();
            assert!(owners.windows(2).all(|w| w[0] <= w[1]));
            assert_eq!(owners[0], 0);
            assert_eq!(*owners.last().unwrap_or(&0), parallelism - 1);
        }
        let groups: std::collections::HashSet<u32> = (0..10_000u64).map(key_group).collect();
        assert_eq!(
            groups.len(),
            KEY_GROUPS as usize,
            "small keys spread over every group"
        );
    }
}
