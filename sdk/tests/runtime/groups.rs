//! Actor concurrency groups: each group's calls run up to its limit, independently of the
//! other groups (a saturated group never holds back another's calls).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{ensure, Result};

/// Counts calls in flight now and the most ever, per group.
#[derive(Default)]
struct Gauge {
    now: AtomicU32,
    peak: AtomicU32,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[fleet::actor]
pub struct Grouped {
    io: Gauge,
    compute: Gauge,
    all: Gauge,
}

#[fleet::actor(concurrency_groups(io = 2, compute = 1))]
impl Grouped {
    pub fn new() -> Self {
        Grouped {
            io: Gauge::default(),
            compute: Gauge::default(),
            all: Gauge::default(),
        }
    }

    #[group(io)]
    pub async fn fetch(&self, ms: u64) -> u64 {
        self.io.enter();
        self.all.enter();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.all.leave();
        self.io.leave();
        ms
    }

    #[group(compute)]
    pub async fn crunch(&self, ms: u64) -> u64 {
        self.compute.enter();
        self.all.enter();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.all.leave();
        self.compute.leave();
        ms
    }

    /// (io, compute, all) peaks.
    pub fn peaks(&self) -> (u32, u32, u32) {
        (
            self.io.peak.load(Ordering::SeqCst),
            self.compute.peak.load(Ordering::SeqCst),
            self.all.peak.load(Ordering::SeqCst),
        )
    }
}

pub async fn concurrency_groups_bound_each_group_on_its_own() -> Result<()> {
    let actor = Grouped::remote().spawn().await?;
    // Compute first: with one queue, its full group would hold the io calls back.
    let mut calls = Vec::new();
    for _ in 0..3 {
        calls.push(actor.crunch(300u64));
    }
    for _ in 0..6 {
        calls.push(actor.fetch(300u64));
    }
    let results = fleet::get_all(&calls).await?;
    ensure!(results.iter().all(|ms| *ms == 300));
    let (io, compute, all) = actor.peaks().get().await?;
    ensure!(io == 2, "io ran {io} at once (limit 2)");
    ensure!(compute == 1, "compute ran {compute} at once (limit 1)");
    ensure!(
        all == 3,
        "the groups did not run side by side: at most {all} calls at once"
    );
    println!("  peaks: io {io}/2, compute {compute}/1, together {all}");
    actor.raw().kill().await?;
    Ok(())
}
