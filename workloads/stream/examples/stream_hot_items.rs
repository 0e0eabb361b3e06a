//! Hot items: for every 10 s window of Nexmark bids, the auctions with the most bids,
//! estimated with count-min sketches, on the embedded cluster with checkpoints every
//! second and exactly-once output.
//!
//! ```text
//! cargo run --release -p fleet-stream --example stream_hot_items -- [--events 1000000] [--top 3] [--out DIR]
//! ```
//!
//! The dataflow: bids are partitioned by auction over the window instances; each keeps a
//! count-min sketch (heavy hitters) per window and partition; a second keyed step merges
//! the partitions' candidates per window and keeps the top `k`. Results are committed to
//! `DIR` as JSON lines when the checkpoint that covers them completes. At the end the
//! program recounts every window exactly and checks each estimate against its bound.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use fleet_stream::nexmark::Event;
use fleet_stream::{
    BoundedOutOfOrder, FileSink, KeyedProcessFunction, NexmarkSource, ProcessContext, StreamEnv,
    StreamExecution, StreamJob, TopK, Tumbling, WindowResult,
};
use serde::{Deserialize, Serialize};

/// The job's configuration (what every operator instance rebuilds the graph from).
#[derive(Clone, Serialize, Deserialize)]
struct HotItems {
    events: u64,
    top: usize,
    out: PathBuf,
}

/// One window's hot items.
#[derive(Serialize, Deserialize)]
struct WindowTop {
    window_start: i64,
    window_end: i64,
    /// (auction, estimated bids), most first.
    items: Vec<(usize, u64)>,
}

/// Partitions of the auction space the sketches are kept per.
const PARTITIONS: usize = 16;
/// Relative error of the count-min sketches (of the window's bid count) and the chance
/// that an estimate is off by more.
const EPSILON: f64 = 0.002;
const DELTA: f64 = 0.01;

impl StreamJob for HotItems {
    fn build(&self, env: &mut StreamEnv) {
        let k = self.top;
        env.source(NexmarkSource::new(self.events))
            .filter_map(|event| match event {
                Event::Bid(bid) => Some((bid.auction, bid.date_time)),
                _ => None,
            })
            .assign_timestamps(
                |(_, time)| *time as i64,
                BoundedOutOfOrder(Duration::from_secs(1)),
            )
            .key_by(|(auction, _): &(usize, u64)| auction % PARTITIONS)
            .window(Tumbling::of(Duration::from_secs(10)))
            .aggregate(TopK {
                field: |(auction, _): &(usize, u64)| *auction,
                k: k * 2,
                epsilon: EPSILON,
                delta: DELTA,
            })
            .key_by(|partial: &WindowResult<usize, Vec<(usize, u64)>>| partial.end)
            .process(MergeWindow { k })
            .sink(FileSink::transactional(self.out.clone()));
    }
}
fleet_stream::register_stream_job!(HotItems);

/// Per window: the partitions' candidates merged (an auction lives in one partition, so
/// its estimate comes from one sketch), the top `k` emitted when the window is complete.
struct MergeWindow {
    k: usize,
}

#[derive(Default, Serialize, Deserialize)]
struct Candidates {
    start: i64,
    items: Vec<(usize, u64)>,
    partitions: u64,
}

impl KeyedProcessFunction<i64, WindowResult<usize, Vec<(usize, u64)>>, WindowTop> for MergeWindow {
    type State = Candidates;

    fn process(
        &self,
        end: &i64,
        partial: WindowResult<usize, Vec<(usize, u64)>>,
        state: &mut Candidates,
        ctx: &mut ProcessContext<WindowTop>,
    ) {
        state.start = partial.start;
        state.items.extend(partial.value);
        state.partitions += 1;
        ctx.register_event_timer(end - 1);
    }

    fn on_timer(
        &self,
        end: &i64,
        _time: i64,
        state: &mut Candidates,
        ctx: &mut ProcessContext<WindowTop>,
    ) {
        state
            .items
            .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        state.items.truncate(self.k);
        ctx.emit(WindowTop {
            window_start: state.start,
            window_end: *end,
            items: std::mem::take(&mut state.items),
        });
        ctx.clear_state();
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[fleet::main]
async fn main() -> anyhow::Result<()> {
    let events: u64 = arg("--events")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let top: usize = arg("--top").map(|v| v.parse()).transpose()?.unwrap_or(3);
    let scratch = tempfile::tempdir()?;
    let out = arg("--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| scratch.path().join("hot-items"));
    let job = HotItems {
        events,
        top,
        out: out.clone(),
    };
    println!("hot items over {events} Nexmark events, top {top} per 10 s window, 2 instances per operator");
    let report = StreamExecution::new("hot-items", job)
        .parallelism(2)
        .checkpoint_every(Duration::from_secs(1))
        .on_progress(|progress| {
            if let Some(checkpoint) = progress.last_checkpoint {
                println!(
                    "  {:>5.1} s  checkpoint {checkpoint} complete ({} so far)",
                    progress.elapsed.as_secs_f64(),
                    progress.checkpoints
                );
            } else {
                println!(
                    "  {:>5.1} s  {} operator instances running",
                    progress.elapsed.as_secs_f64(),
                    progress.instances.len()
                );
            }
        })
        .run()
        .await?;

    // The exact counts, recomputed from the same events, to check every estimate.
    let mut exact: BTreeMap<i64, HashMap<usize, u64>> = BTreeMap::new();
    for event in NexmarkSource::new(events).all_events() {
        if let Event::Bid(bid) = event {
            let ts = bid.date_time as i64;
            *exact
                .entry(ts - ts.rem_euclid(10_000) + 10_000)
                .or_default()
                .entry(bid.auction)
                .or_default() += 1;
        }
    }
    let lines = FileSink::read_committed(&out).map_err(anyhow::Error::msg)?;
    let mut windows: Vec<WindowTop> = lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    windows.sort_by_key(|w| w.window_end);
    anyhow::ensure!(
        windows.len() == exact.len(),
        "{} windows committed, {} expected",
        windows.len(),
        exact.len()
    );
    let mut worst = 0.0f64;
    for window in &windows {
        let counts = exact.get(&window.window_end).cloned().unwrap_or_default();
        let total: u64 = counts.values().sum();
        // Each partition's sketch saw about 1/PARTITIONS of the window's bids.
        let bound = std::f64::consts::E / (std::f64::consts::E / EPSILON).ceil() * total as f64;
        let shown: Vec<String> = window
            .items
            .iter()
            .map(|(auction, estimate)| {
                let truth = counts.get(auction).copied().unwrap_or(0);
                worst = worst.max((*estimate as f64 - truth as f64) / bound.max(1.0));
                format!("auction {auction}: ~{estimate} bids (exactly {truth})")
            })
            .collect();
        println!(
            "window [{}, {}): {total} bids; {}",
            window.window_start,
            window.window_end,
            shown.join(", ")
        );
        let mut truth: Vec<(usize, u64)> = counts.into_iter().collect();
        truth.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        anyhow::ensure!(
            window.items.first().map(|i| i.0) == truth.first().map(|t| t.0)
                || window.items.first().map(|i| i.1) == truth.first().map(|t| t.1),
            "window ending {}: the hottest item is {:?}, exactly {:?}",
            window.window_end,
            window.items.first(),
            truth.first()
        );
    }
    println!(
        "{} windows in {:.1} s; {} checkpoints (median {:?}); worst estimate error {:.0}% of the sketch's bound; output committed in {}",
        windows.len(),
        report.elapsed.as_secs_f64(),
        report.checkpoints,
        {
            let mut d = report.checkpoint_durations.clone();
            d.sort();
            d.get(d.len() / 2).copied().unwrap_or_default()
        },
        worst * 100.0,
        out.display()
    );
    println!("hot_items_windows_verified {}", windows.len());
    Ok(())
}
