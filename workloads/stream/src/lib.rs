//! `fleet-stream`: a Flink-like stateful dataflow on Fleet actors. A job is a graph of
//! operators — sources, narrow operators fused into chains, keyed windows and process
//! functions, sinks — run as parallel instances, each an actor in its own process,
//! connected by bounded `fleet::channel`s (credit-based: a slow sink slows the source).
//! Event time with watermarks; aligned barrier checkpoints stored in the GCS; exactly-once
//! output through two-phase-commit sinks; failover from the last complete checkpoint.
//!
//! ```ignore
//! #[derive(Serialize, Deserialize)]
//! struct HotItems { events: u64, out: PathBuf }
//! impl StreamJob for HotItems {
//!     fn build(&self, env: &mut StreamEnv) {
//!         env.source(NexmarkSource::new(self.events))
//!             .filter_map(|e| match e { Event::Bid(b) => Some(b), _ => None })
//!             .assign_timestamps(|b| b.date_time as i64, BoundedOutOfOrder(Duration::from_secs(2)))
//!             .key_by(|b| b.auction)
//!             .window(Sliding::of(Duration::from_secs(10)).every(Duration::from_secs(2)))
//!             .aggregate(Count)
//!             .sink(FileSink::transactional(&self.out));
//!     }
//! }
//! register_stream_job!(HotItems);
//! let report = StreamExecution::new("hot-items", job).parallelism(2).run().await?;
//! ```
//!
//! Modules: [`graph`] (the typed API and the plan it builds), [`pipe`] (a stage's fused
//! operator chain, key groups), [`operators`] (map/filter/…, timestamps, keyed process
//! functions), [`window`] (assigners and the window operator), [`aggregate`] and
//! [`sketch`] (aggregations, count-min and HyperLogLog), [`source`] and [`sink`]
//! (replayable sources, two-phase-commit sinks), [`stage`] (a stage's erased body, the
//! frames between stages), [`task`] (an instance's actor and loop: alignment, snapshots),
//! [`execute`] (the coordinator: checkpoints, failover), [`job`] (job registration),
//! [`nexmark`] (the Nexmark queries and their reference answers), [`bench`] (what
//! `fleet bench nexmark` runs).

pub mod aggregate;
pub mod bench;
pub mod execute;
pub mod graph;
pub mod job;
pub mod nexmark;
pub mod operators;
pub mod pipe;
pub mod sink;
pub mod sketch;
pub mod source;
pub mod stage;
pub mod task;
pub mod window;

pub use aggregate::{AggregateFunction, Count, CountAndSum, MaxBy, Sum};
pub use execute::{JobProgress, JobReport, StreamExecution};
pub use graph::{
    ConnectedStreams, DataStream, InstanceContext, KeyedStream, StreamEnv, WindowedStream,
};
pub use job::StreamJob;
pub use operators::{BoundedOutOfOrder, KeyedProcessFunction, ProcessContext};
pub use pipe::{Batch, Either, Operator, OperatorState, KEY_GROUPS};
pub use sink::{DiscardSink, FileSink, Sink, SinkContext, SinkReport, SinkWriter};
pub use sketch::{CountMinSketch, DistinctCount, HyperLogLog, TopK};
pub use source::{NexmarkSource, SequenceSource, Source, SourceReader, SourceStatus};
pub use window::{Session, Sliding, Tumbling, WindowResult, Windows};

/// What running a job can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The job or a setting cannot run (the message names what and the fix).
    #[error("stream job: {0}")]
    Invalid(String),
    /// The job failed and could not recover (the message names the instance and cause).
    #[error("stream job: {0}")]
    Failed(String),
    /// The runtime failed (the cluster gone, an actor not started).
    #[error("stream job: {0}")]
    Fleet(String),
}

/// `Result` with [`StreamError`].
pub type Result<T> = std::result::Result<T, StreamError>;

/// Wall-clock milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Used by [`register_stream_job!`]'s expansion; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
}
