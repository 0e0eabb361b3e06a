//! A stage's erased body — its typed pipe plus the tail that ends it (an exchange that
//! partitions records by key group over the next stage's instances, or a sink) — and the
//! frames stages exchange over `fleet::channel`s.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;

use crate::pipe::{encode_batch, instance_of_group, key_group, Batch, OperatorState, Pipe};
use crate::sink::{SinkReport, SinkWriter};
use crate::source::SourceStatus;

/// Records per data frame: an exchange sends a target's buffer once it holds this many
/// (and flushes every buffer at barriers, watermarks and the end).
pub const FRAME_RECORDS: usize = 1024;

/// One message on a channel between stages.
#[derive(Debug, PartialEq)]
pub(crate) enum Frame {
    /// Encoded records.
    Data(Vec<u8>),
    /// The sender's watermark advanced.
    Watermark(i64),
    /// Checkpoint barrier.
    Barrier(u64),
    /// The sender has nothing more.
    End,
}

const TAG_DATA: u8 = 0;
const TAG_WATERMARK: u8 = 1;
const TAG_BARRIER: u8 = 2;
const TAG_END: u8 = 3;

impl Frame {
    pub fn encode(self) -> Vec<u8> {
        match self {
            Frame::Data(mut payload) => {
                // The tag goes last: no shift of the payload.
                payload.push(TAG_DATA);
                payload
            }
            Frame::Watermark(w) => {
                let mut bytes = w.to_le_bytes().to_vec();
                bytes.push(TAG_WATERMARK);
                bytes
            }
            Frame::Barrier(c) => {
                let mut bytes = c.to_le_bytes().to_vec();
                bytes.push(TAG_BARRIER);
                bytes
            }
            Frame::End => vec![TAG_END],
        }
    }

    pub fn decode(mut bytes: Vec<u8>) -> Result<Frame, String> {
        let Some(tag) = bytes.pop() else {
            return Err("an empty frame arrived".into());
        };
        let word = |bytes: &[u8]| -> Result<[u8; 8], String> {
            bytes.try_into().map_err(|_| {
                format!(
                    "a control frame of {} bytes arrived (8 expected)",
                    bytes.len()
                )
            })
        };
        match tag {
            TAG_DATA => Ok(Frame::Data(bytes)),
            TAG_WATERMARK => Ok(Frame::Watermark(i64::from_le_bytes(word(&bytes)?))),
            TAG_BARRIER => Ok(Frame::Barrier(u64::from_le_bytes(word(&bytes)?))),
            TAG_END if bytes.is_empty() => Ok(Frame::End),
            other => Err(format!("a frame with unknown tag {other} arrived")),
        }
    }
}

/// What the task loop drives: one operator instance's whole stage.
pub(crate) trait StageBody: Send {
    fn input(&mut self, port: usize, payload: &[u8]) -> Result<(), String>;
    fn poll(&mut self, max: usize) -> Result<SourceStatus, String>;
    /// The input watermark advanced; returns the output watermark.
    fn on_watermark(&mut self, watermark: i64) -> Result<i64, String>;
    /// A watermark generated inside the stage after the last batch.
    fn generated_watermark(&mut self) -> Result<Option<i64>, String>;
    /// Encoded frames ready for outputs, as (output index, payload); `all` flushes partial
    /// buffers too.
    fn drain_frames(&mut self, all: bool, into: &mut Vec<(usize, Vec<u8>)>);
    /// Every operator's state for checkpoint `checkpoint` (a sink pre-commits here).
    fn snapshot(&mut self, checkpoint: u64) -> Result<Vec<OperatorState>, String>;
    /// Restores from a checkpoint (`None`: a fresh start).
    fn restore(&mut self, restored: Option<(u64, Vec<OperatorState>)>) -> Result<(), String>;
    /// Checkpoint `checkpoint` completed (a sink commits).
    fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), String>;
    fn late_records(&self) -> u64;
    fn sink_report(&self) -> Option<SinkReport>;
}

/// A stage that ends in an exchange partitioned by key.
pub(crate) struct ExchangeTail<T> {
    pub pipe: Box<dyn Pipe<T>>,
    pub route: Arc<dyn Fn(&T) -> u64 + Send + Sync>,
    pub targets: usize,
    pub out: Batch<T>,
    pub buffers: Vec<Batch<T>>,
}

impl<T: Serialize + Send> ExchangeTail<T> {
    pub fn new(
        pipe: Box<dyn Pipe<T>>,
        route: Arc<dyn Fn(&T) -> u64 + Send + Sync>,
        targets: usize,
    ) -> Self {
        ExchangeTail {
            pipe,
            route,
            targets,
            out: Vec::new(),
            buffers: (0..targets).map(|_| Vec::new()).collect(),
        }
    }

    fn partition(&mut self) {
        for (ts, record) in self.out.drain(..) {
            let target = instance_of_group(key_group((self.route)(&record)), self.targets);
            self.buffers[target].push((ts, record));
        }
    }
}

impl<T: Serialize + Send> StageBody for ExchangeTail<T> {
    fn input(&mut self, port: usize, payload: &[u8]) -> Result<(), String> {
        self.pipe.input(port, payload, &mut self.out)?;
        self.partition();
        Ok(())
    }

    fn poll(&mut self, max: usize) -> Result<SourceStatus, String> {
        let status = self.pipe.poll(max, &mut self.out)?;
        self.partition();
        Ok(status)
    }

    fn on_watermark(&mut self, watermark: i64) -> Result<i64, String> {
        let out = self.pipe.on_watermark(watermark, &mut self.out);
        self.partition();
        Ok(out)
    }

    fn generated_watermark(&mut self) -> Result<Option<i64>, String> {
        let watermark = self.pipe.generated_watermark(&mut self.out);
        self.partition();
        Ok(watermark)
    }

    fn drain_frames(&mut self, all: bool, into: &mut Vec<(usize, Vec<u8>)>) {
        for (target, buffer) in self.buffers.iter_mut().enumerate() {
            if buffer.is_empty() || (!all && buffer.len() < FRAME_RECORDS) {
                continue;
            }
            let mut payload = Vec::with_capacity(buffer.len() * 16 + 16);
            encode_batch(buffer, &mut payload);
            buffer.clear();
            into.push((target, payload));
        }
    }

    fn snapshot(&mut self, _checkpoint: u64) -> Result<Vec<OperatorState>, String> {
        let mut states = Vec::new();
        self.pipe.snapshot(&mut states)?;
        Ok(states)
    }

    fn restore(&mut self, restored: Option<(u64, Vec<OperatorState>)>) -> Result<(), String> {
        if let Some((_, states)) = restored {
            let mut states = VecDeque::from(states);
            self.pipe.restore(&mut states)?;
        }
        Ok(())
    }

    fn checkpoint_complete(&mut self, _checkpoint: u64) -> Result<(), String> {
        Ok(())
    }

    fn late_records(&self) -> u64 {
        self.pipe.late_records()
    }

    fn sink_report(&self) -> Option<SinkReport> {
        None
    }
}

/// A stage that ends in a sink.
pub(crate) struct SinkTail<T> {
    pub pipe: Box<dyn Pipe<T>>,
    pub writer: Box<dyn SinkWriter<T>>,
    pub out: Batch<T>,
}

impl<T: Send> SinkTail<T> {
    fn write(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.writer.write(std::mem::take(&mut self.out))
    }
}

impl<T: Send> StageBody for SinkTail<T> {
    fn input(&mut self, port: usize, payload: &[u8]) -> Result<(), String> {
        self.pipe.input(port, payload, &mut self.out)?;
        self.write()
    }

    fn poll(&mut self, max: usize) -> Result<SourceStatus, String> {
        let status = self.pipe.poll(max, &mut self.out)?;
        self.write()?;
        Ok(status)
    }

    fn on_watermark(&mut self, watermark: i64) -> Result<i64, String> {
        let out = self.pipe.on_watermark(watermark, &mut self.out);
        self.write()?;
        Ok(out)
    }

    fn generated_watermark(&mut self) -> Result<Option<i64>, String> {
        let watermark = self.pipe.generated_watermark(&mut self.out);
        self.write()?;
        Ok(watermark)
    }

    fn drain_frames(&mut self, _all: bool, _into: &mut Vec<(usize, Vec<u8>)>) {}

    fn snapshot(&mut self, checkpoint: u64) -> Result<Vec<OperatorState>, String> {
        let mut states = Vec::new();
        self.pipe.snapshot(&mut states)?;
        states.push(OperatorState {
            keyed: Vec::new(),
            instance: self.writer.pre_commit(checkpoint)?,
        });
        Ok(states)
    }

    fn restore(&mut self, restored: Option<(u64, Vec<OperatorState>)>) -> Result<(), String> {
        match restored {
            Some((checkpoint, states)) => {
                let mut states = VecDeque::from(states);
                self.pipe.restore(&mut states)?;
                let sink = states
                    .pop_front()
                    .ok_or("the checkpoint holds no state for this stage's sink")?;
                self.writer.restore(Some((checkpoint, &sink.instance)))
            }
            None => self.writer.restore(None),
        }
    }

    fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), String> {
        self.writer.commit(checkpoint)
    }

    fn late_records(&self) -> u64 {
        self.pipe.late_records()
    }

    fn sink_report(&self) -> Option<SinkReport> {
        Some(self.writer.report())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_corrupt_ones_are_errors() {
        for frame in [
            Frame::Data(vec![1, 2, 3]),
            Frame::Watermark(-5),
            Frame::Barrier(42),
            Frame::End,
        ] {
            let debug = format!("{frame:?}");
            assert_eq!(
                format!("{:?}", Frame::decode(frame.encode())),
                format!("Ok({debug})")
            );
        }
        assert!(Frame::decode(Vec::new()).is_err());
        assert!(Frame::decode(vec![1, 2, TAG_WATERMARK]).is_err());
        assert!(Frame::decode(vec![9]).is_err());
    }
}
