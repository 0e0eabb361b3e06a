//! Shared actor hosts: thousands of actors in a few processes keep their per-caller order,
//! their restarts and their checkpoints; SIGKILL one host and every actor in it comes back
//! (checkpointed ones with their state) while the others never notice; a kill stops one
//! actor and leaves its neighbours.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use fleet::Error;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

#[fleet::actor(checkpoint)]
#[derive(Default, Serialize, Deserialize)]
pub struct Resident {
    id: u32,
    calls: Vec<u32>,
}

/// What an actor says about itself: its id, the calls it saw in order, its process and
/// how many times it was restarted.
pub type Report = (u32, Vec<u32>, u32, u32);

#[fleet::actor]
impl Resident {
    pub fn new(id: u32) -> Self {
        Resident {
            id,
            calls: Vec::new(),
        }
    }

    pub fn record(&mut self, call: u32) -> usize {
        self.calls.push(call);
        self.calls.len()
    }

    pub fn report(&self) -> Report {
        let restarts = fleet::context().map_or(u32::MAX, |c| c.actor_restarts);
        (self.id, self.calls.clone(), std::process::id(), restarts)
    }
}

const PLAIN: u32 = 2_000;
const CHECKPOINTED: u32 = 40;
const CALLS: u32 = 5;

async fn spawn_all(dir: &Path) -> Result<Vec<ResidentHandle>> {
    let dir = dir.to_path_buf();
    let actors: Vec<ResidentHandle> = stream::iter(0..PLAIN + CHECKPOINTED)
        .map(|id| {
            let dir = dir.clone();
            async move {
                // A restart may cut a call off: reports are read-only, so retrying is safe.
                let builder = Resident::remote(id).max_restarts(1).max_task_retries(2);
                let builder = if id >= PLAIN {
                    builder.checkpoint_every(1).checkpoint_dir(&dir)
                } else {
                    builder
                };
                builder.spawn().await
            }
        })
        .buffer_unordered(256)
        .try_collect()
        .await?;
    Ok(actors)
}

async fn reports(actors: &[ResidentHandle]) -> Result<BTreeMap<u32, Report>> {
    let refs: Vec<_> = actors.iter().map(|a| a.report()).collect();
    let reports = fleet::get_all(&refs).await?;
    Ok(reports.into_iter().map(|r| (r.0, r)).collect())
}

pub async fn a_sigkilled_host_brings_back_each_of_its_actors(scratch: &Path) -> Result<()> {
    let dir = scratch.join("hosted-checkpoints");
    let started = std::time::Instant::now();
    let actors = spawn_all(&dir).await?;
    let created = started.elapsed();
    // Every actor gets its calls pipelined, all actors at once: each sees them in order.
    for call in 0..CALLS {
        for actor in &actors {
            actor.record(call);
        }
    }
    let before = reports(&actors).await?;
    let in_order: Vec<u32> = (0..CALLS).collect();
    for (id, (_, calls, _, restarts)) in &before {
        ensure!(calls == &in_order, "actor {id} saw {calls:?}");
        ensure!(*restarts == 0, "actor {id} restarted {restarts} times");
    }
    let mut by_pid: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (id, (_, _, pid, _)) in &before {
        by_pid.entry(*pid).or_default().push(*id);
    }
    // The test cluster offers 4 CPUs: at most 4 hosts for the job, never one per actor.
    ensure!(
        (2..=4).contains(&by_pid.len()),
        "{} actors in {} processes: {:?}",
        actors.len(),
        by_pid.len(),
        by_pid
            .iter()
            .map(|(p, ids)| (p, ids.len()))
            .collect::<Vec<_>>()
    );
    let victim = before
        .get(&PLAIN)
        .map(|r| r.2)
        .context("the first checkpointed actor's report")?;
    let doomed: BTreeSet<u32> = by_pid
        .get(&victim)
        .map(|ids| ids.iter().copied().collect())
        .unwrap_or_default();
    super::sigkill(victim)?;
    let after = reports(&actors).await?;
    let mut restored = 0;
    for (id, (_, calls, pid, restarts)) in &after {
        if doomed.contains(id) {
            ensure!(
                *pid != victim && *restarts == 1,
                "actor {id} of the killed host: pid {pid}, {restarts} restarts"
            );
            if *id >= PLAIN {
                ensure!(
                    calls == &in_order,
                    "checkpointed actor {id} came back with {calls:?}"
                );
                restored += 1;
            } else {
                ensure!(
                    calls.is_empty(),
                    "plain actor {id} came back with {calls:?}"
                );
            }
        } else {
            let old_pid = before.get(id).map(|r| r.2);
            ensure!(
                calls == &in_order && *restarts == 0 && Some(*pid) == old_pid,
                "actor {id} of another host was disturbed: {calls:?}, {restarts} restarts"
            );
        }
    }
    ensure!(restored > 0, "no checkpointed actor was in the killed host");
    // A kill stops one actor; its neighbour in the same host goes on.
    let (first, second) = doomed
        .iter()
        .copied()
        .collect::<Vec<_>>()
        .windows(2)
        .next()
        .map(|w| (w[0], w[1]))
        .context("two actors in one host")?;
    let (first, second) = (&actors[first as usize], &actors[second as usize]);
    fleet::kill(first.raw()).await?;
    match first.report().await {
        Err(Error::ActorDied { .. }) => {}
        other => anyhow::bail!("a call to a killed actor: {other:?}"),
    }
    let had = second.report().await?.1.len();
    ensure!(
        second.record(CALLS).await? == had + 1,
        "the killed actor's neighbour goes on"
    );
    println!(
        "  {} actors created in {:.2} s into {} hosts; SIGKILL of one host brought back its {} actors ({restored} from checkpoints)",
        actors.len(),
        created.as_secs_f64(),
        by_pid.len(),
        doomed.len()
    );
    stream::iter(actors.iter())
        .map(|a| fleet::kill(a.raw()))
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
