//! Replayable sources: each parallel instance reads one split from an offset that is
//! checkpointed, so a restored job reads again exactly what followed its last checkpoint.
//! - [`NexmarkSource`]: the Nexmark generator (the `nexmark` crate), deterministic for a
//!   fixed base time, split by offset and step over the instances, optionally paced to an
//!   input rate;
//! - [`SequenceSource`]: items `f(0) .. f(n-1)`, split round-robin (tests, examples).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexmark::config::NexmarkConfig;
use nexmark::event::Event;
use nexmark::EventGenerator;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::operators::{decode, encode};
use crate::pipe::{Batch, NO_TIMESTAMP};

/// What a poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceStatus {
    /// Records may follow at once.
    More,
    /// Nothing now (a paced source ahead of its schedule); poll again soon.
    Idle,
    /// The split is read to its end.
    Exhausted,
}

/// A source of records, split over the parallel instances of its stage.
pub trait Source: Send + Sync + 'static {
    /// Its records.
    type Item: Serialize + DeserializeOwned + Send + 'static;

    /// A reader of split `split` of `splits`, positioned at its start.
    fn reader(
        &self,
        split: usize,
        splits: usize,
    ) -> Result<Box<dyn SourceReader<Self::Item>>, String>;
}

/// One instance's reader: polled for batches, its position checkpointed.
pub trait SourceReader<T>: Send {
    /// Appends up to `max` records to `out`.
    fn poll(&mut self, max: usize, out: &mut Batch<T>) -> Result<SourceStatus, String>;
    /// The position to resume from (what a checkpoint records).
    fn offset(&self) -> Result<Vec<u8>, String>;
    /// Moves to a position `offset` returned.
    fn seek(&mut self, offset: &[u8]) -> Result<(), String>;
}

/// The Nexmark event generator as a source. Events carry their `date_time` as event time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NexmarkSource {
    /// Events in all (over every split).
    pub events: u64,
    /// The event time of the first event (ms since the epoch): fixed, so runs repeat.
    pub base_time: u64,
    /// The generator's event rate in event time (events per second): sets how far apart
    /// the events' timestamps are.
    pub event_rate: u64,
    /// Wall-clock pacing of the whole source (events per second over all splits); `None`:
    /// as fast as it can.
    pub paced_rate: Option<u64>,
}

impl NexmarkSource {
    /// `events` events from the fixed base time 2026-01-01, 10,000 events per second of
    /// event time (the Nexmark default), unpaced.
    pub fn new(events: u64) -> NexmarkSource {
        NexmarkSource {
            events,
            base_time: 1_767_225_600_000,
            event_rate: 10_000,
            paced_rate: None,
        }
    }

    /// Paces the source to `rate` events/s of wall-clock time from `base_time` (event `n`
    /// is emitted once `base_time + n / rate` has come): with `base_time` set to the start
    /// and `event_rate == rate`, an event's timestamp is the wall-clock time it comes due
    /// (end-to-end latency is then measurable at the sink).
    ///
    /// Sets `base_time` to now: build the source once and share it (a reference answer
    /// computed from a clone sees the same events).
    pub fn paced(mut self, rate: u64) -> NexmarkSource {
        self.paced_rate = Some(rate.max(1));
        self.base_time = crate::now_ms().max(0) as u64;
        self
    }

    /// The generator's configuration.
    pub fn config(&self) -> NexmarkConfig {
        NexmarkConfig {
            base_time: self.base_time,
            first_rate: self.event_rate.max(1) as usize,
            next_rate: self.event_rate.max(1) as usize,
            ..NexmarkConfig::default()
        }
    }

    /// Every event of the source in order (the reference the tests compute answers from).
    pub fn all_events(&self) -> impl Iterator<Item = Event> {
        EventGenerator::new(self.config()).take(self.events as usize)
    }
}

struct NexmarkReader {
    generator: EventGenerator,
    split: u64,
    splits: u64,
    events: u64,
    /// Paced: (the wall-clock ms the first event is due, events/s over all splits).
    pace: Option<(u64, u64)>,
}

impl Source for NexmarkSource {
    type Item = Event;

    fn reader(&self, split: usize, splits: usize) -> Result<Box<dyn SourceReader<Event>>, String> {
        let splits = splits.max(1) as u64;
        Ok(Box::new(NexmarkReader {
            generator: EventGenerator::new(self.config())
                .with_offset(split as u64)
                .with_step(splits),
            split: split as u64,
            splits,
            events: self.events,
            pace: self.paced_rate.map(|rate| (self.base_time, rate)),
        }))
    }
}

impl SourceReader<Event> for NexmarkReader {
    fn poll(&mut self, max: usize, out: &mut Batch<Event>) -> Result<SourceStatus, String> {
        let mut budget = max as u64;
        if let Some((start_ms, rate)) = self.pace {
            // Global events due by now (event n is due at start + n / rate), and this
            // split's share of them: each event is emitted when it comes due, whenever the
            // reader started or was restored (a late start catches up, as a backlog would).
            let elapsed_ms = (crate::now_ms().max(0) as u64).saturating_sub(start_ms);
            let due = elapsed_ms.saturating_mul(rate) / 1000;
            let offset = self.generator.offset();
            let due_here = due.saturating_sub(self.split).div_ceil(self.splits);
            let emitted_here = offset.saturating_sub(self.split) / self.splits;
            budget = budget.min(due_here.saturating_sub(emitted_here));
            if budget == 0 {
                return Ok(SourceStatus::Idle);
            }
        }
        for _ in 0..budget {
            if self.generator.offset() >= self.events {
                return Ok(SourceStatus::Exhausted);
            }
            let Some(event) = self.generator.next() else {
                return Ok(SourceStatus::Exhausted);
            };
            out.push((event.timestamp() as i64, event));
        }
        Ok(if self.generator.offset() >= self.events {
            SourceStatus::Exhausted
        } else {
            SourceStatus::More
        })
    }

    fn offset(&self) -> Result<Vec<u8>, String> {
        encode(&(self.generator.offset(), self.splits))
    }

    fn seek(&mut self, offset: &[u8]) -> Result<(), String> {
        let (position, splits): (u64, u64) = decode(offset, "a Nexmark source")?;
        if splits != self.splits || position % splits != self.split {
            return Err(format!(
                "the checkpoint's Nexmark source had {splits} splits; this run has {}: a source's parallelism cannot change across a restore",
                self.splits
            ));
        }
        self.generator = self.generator.clone().with_offset(position);
        Ok(())
    }
}

/// Items `make(0) .. make(count - 1)`, split round-robin; each item's event time is unset
/// (assign one with `assign_timestamps`).
pub struct SequenceSource<T> {
    count: u64,
    make: Arc<dyn Fn(u64) -> T + Send + Sync>,
    pause: Option<Duration>,
}

impl<T> SequenceSource<T> {
    /// `count` items made by `make`.
    pub fn new(count: u64, make: impl Fn(u64) -> T + Send + Sync + 'static) -> Self {
        SequenceSource {
            count,
            make: Arc::new(make),
            pause: None,
        }
    }

    /// Sleeps `pause` after every batch (a slow source, for tests of running jobs).
    pub fn pause_between_batches(mut self, pause: Duration) -> Self {
        self.pause = Some(pause);
        self
    }
}

struct SequenceReader<T> {
    next: u64,
    step: u64,
    count: u64,
    make: Arc<dyn Fn(u64) -> T + Send + Sync>,
    pause: Option<Duration>,
    resume_at: Option<Instant>,
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Source for SequenceSource<T> {
    type Item = T;

    fn reader(&self, split: usize, splits: usize) -> Result<Box<dyn SourceReader<T>>, String> {
        Ok(Box::new(SequenceReader {
            next: split as u64,
            step: splits.max(1) as u64,
            count: self.count,
            make: self.make.clone(),
            pause: self.pause,
            resume_at: None,
        }))
    }
}

impl<T: Send> SourceReader<T> for SequenceReader<T> {
    fn poll(&mut self, max: usize, out: &mut Batch<T>) -> Result<SourceStatus, String> {
        if self.resume_at.is_some_and(|at| Instant::now() < at) {
            return Ok(SourceStatus::Idle);
        }
        for _ in 0..max {
            if self.next >= self.count {
                break;
            }
            out.push((NO_TIMESTAMP, (self.make)(self.next)));
            self.next += self.step;
        }
        self.resume_at = self.pause.map(|pause| Instant::now() + pause);
        Ok(if self.next >= self.count {
            SourceStatus::Exhausted
        } else {
            SourceStatus::More
        })
    }

    fn offset(&self) -> Result<Vec<u8>, String> {
        encode(&(self.next, self.step))
    }

    fn seek(&mut self, offset: &[u8]) -> Result<(), String> {
        let (next, step): (u64, u64) = decode(offset, "a sequence source")?;
        if step != self.step {
            return Err(format!(
                "the checkpoint's source had {step} splits; this run has {}: a source's parallelism cannot change across a restore",
                self.step
            ));
        }
        self.next = next;
        Ok(())
    }
}
