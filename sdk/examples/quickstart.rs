//! Fleet in one file: tasks, actors, objects, errors, and a checkpointed actor that survives
//! its worker process being killed. Runs on an embedded single-node cluster (nothing to start
//! first): `cargo run --release --example quickstart`.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A counter actor: its state lives in the actor, in one of the job's shared actor hosts
/// (worker processes that run many actors each; `.isolate()` gives one a process of its own).
#[fleet::actor]
pub struct Counter {
    n: i64,
}

#[fleet::actor]
impl Counter {
    pub fn new(start: i64) -> Self {
        Counter { n: start }
    }

    pub fn incr(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }

    pub fn get(&self) -> i64 {
        self.n
    }

    pub fn withdraw(&mut self, amount: i64) -> Result<i64, String> {
        if amount > self.n {
            return Err(format!("cannot withdraw {amount}: only {} left", self.n));
        }
        self.n -= amount;
        Ok(self.n)
    }
}

/// A checkpointed actor: every 10 calls its state is written to the checkpoint store and
/// committed in the control store; after a crash it comes back from the last checkpoint.
#[fleet::actor(checkpoint)]
#[derive(Default, Serialize, Deserialize)]
pub struct Ledger {
    total: u64,
    entries: u64,
}

#[fleet::actor]
impl Ledger {
    pub fn new() -> Self {
        Ledger::default()
    }

    pub fn add(&mut self, amount: u64) -> u64 {
        self.total += amount;
        self.entries += 1;
        self.total
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }
}

#[fleet::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[fleet::remote]
fn mean(values: Vec<f32>) -> f64 {
    values.iter().map(|v| f64::from(*v)).sum::<f64>() / values.len().max(1) as f64
}

#[fleet::remote]
fn explode(x: u64) -> u64 {
    if x == 7 {
        panic!("seven is not allowed");
    }
    x
}

#[fleet::main]
async fn main() -> fleet::Result<()> {
    // Tasks: 1000 calls fan out over the node's workers, results come back as ObjectRefs.
    let started = Instant::now();
    let refs: Vec<_> = (0..1000u64).map(square::remote).collect();
    let total: u64 = fleet::get_all(&refs).await?.iter().sum();
    println!("sum of 1000 squares = {total} ({:?})", started.elapsed());
    assert_eq!(total, (0..1000u64).map(|i| i * i).sum::<u64>());

    // Actors: named, typed handles, calls in order.
    let counter = Counter::remote(0)
        .name("counter")
        .max_restarts(3)
        .spawn()
        .await?;
    let five = counter.incr(5);
    assert_eq!(five.await?, 5);
    for _ in 0..10 {
        counter.incr(1);
    }
    println!("counter = {}", counter.get().await?);
    let found = fleet::get_actor::<Counter>("counter").await?;
    assert_eq!(found.get().await?, 15);

    // Errors are values: an Err from a method, a panic in a task.
    match counter.withdraw(100).await {
        Err(error) => println!("withdraw failed as expected: {error}"),
        Ok(left) => println!("unexpectedly left {left}"),
    }
    match explode::remote(7).await {
        Err(error) => println!(
            "task failed as expected: {}",
            error.to_string().lines().next().unwrap_or_default()
        ),
        Ok(v) => println!("unexpectedly got {v}"),
    }
    assert_eq!(
        counter.get().await?,
        15,
        "the actor survives an application error"
    );

    // Objects: put once, pass the reference to a task (resolved before the call).
    let big = fleet::put(&vec![1.5f32; 1 << 24])?; // 64 MiB
    println!("mean of 16M floats = {}", mean::remote(&big).await?);

    // A checkpointed actor survives SIGKILL of its worker process (its host: any actor
    // sharing it restarts too, each on its own terms).
    let ledger = Ledger::remote()
        .max_restarts(2)
        .max_task_retries(1)
        .checkpoint_every(10)
        .spawn()
        .await?;
    for i in 1..=20u64 {
        ledger.add(i);
    }
    assert_eq!(ledger.entries().await?, 20);
    let pid = ledger.pid().await?;
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    println!(
        "killed the ledger's worker (pid {pid}): {:?}",
        killed.map(|s| s.success())
    );
    let entries = ledger.entries().await;
    println!(
        "after the crash the ledger was restored with {:?} entries (checkpointed at 20)",
        entries
    );
    let restored_pid = ledger.pid().await?;
    assert_ne!(restored_pid, pid);
    assert_eq!(ledger.entries().await?, 20);
    println!("quickstart done");
    Ok(())
}
