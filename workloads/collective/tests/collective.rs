//! Collective groups of real actor processes on an embedded cluster: every operation's
//! results against a local computation, every element type, the small and the ring
//! algorithms, driver-declared groups, mismatches, a missing rank, and a rank SIGKILLed in
//! the middle of all-reduces (the others fail naming it; the group forms again and works).
//!
//! Runs as a plain program (`harness = false`): `fleet::init` first (a worker re-executing
//! this binary turns into a worker there), then every scenario in turn.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use fleet::ObjectRef;
use fleet_collective::{bf16, declare_group, Group, GroupOptions, ReduceOp};

/// One rank: holds its group membership between calls.
#[fleet::actor]
pub struct Rank {
    name: String,
    world: usize,
    rank: usize,
    group: Option<Group>,
}

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

#[fleet::actor]
impl Rank {
    pub fn new(name: String, world: usize, rank: usize) -> Self {
        Rank {
            name,
            world,
            rank,
            group: None,
        }
    }

    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Forms (or re-forms) the group; returns the round. Small pieces and a small "small"
    /// threshold so that modest buffers exercise the ring's pipelining.
    pub async fn form(&mut self, small_bytes: usize, rendezvous_ms: u64) -> Result<u64, String> {
        self.group = None;
        let options = GroupOptions {
            small_bytes,
            piece_bytes: 16 << 10,
            rendezvous_timeout: Duration::from_millis(rendezvous_ms),
            ..GroupOptions::default()
        };
        let group = Group::init_with(&self.name, self.world, self.rank, options)
            .await
            .map_err(text)?;
        let round = group.round();
        self.group = Some(group);
        Ok(round)
    }

    /// Joins the group a driver declared; returns the rank it got.
    pub async fn join(&mut self) -> Result<usize, String> {
        let group = Group::join_declared(&self.name, GroupOptions::default())
            .await
            .map_err(text)?;
        let rank = group.rank();
        self.group = Some(group);
        Ok(rank)
    }

    fn group(&mut self) -> Result<&mut Group, String> {
        self.group
            .as_mut()
            .ok_or_else(|| "no group formed".to_string())
    }

    pub async fn all_reduce_f32(
        &mut self,
        mut data: Vec<f32>,
        op: ReduceOp,
    ) -> Result<Vec<f32>, String> {
        self.group()?
            .all_reduce(&mut data, op)
            .await
            .map_err(text)?;
        Ok(data)
    }

    pub async fn all_reduce_f64(
        &mut self,
        mut data: Vec<f64>,
        op: ReduceOp,
    ) -> Result<Vec<f64>, String> {
        self.group()?
            .all_reduce(&mut data, op)
            .await
            .map_err(text)?;
        Ok(data)
    }

    pub async fn all_reduce_i64(
        &mut self,
        mut data: Vec<i64>,
        op: ReduceOp,
    ) -> Result<Vec<i64>, String> {
        self.group()?
            .all_reduce(&mut data, op)
            .await
            .map_err(text)?;
        Ok(data)
    }

    /// bf16 all-reduce of values given (and returned) as f32.
    pub async fn all_reduce_bf16(
        &mut self,
        data: Vec<f32>,
        op: ReduceOp,
    ) -> Result<Vec<f32>, String> {
        let mut halves: Vec<bf16> = data.iter().map(|v| bf16::from_f32(*v)).collect();
        self.group()?
            .all_reduce(&mut halves, op)
            .await
            .map_err(text)?;
        Ok(halves.iter().map(|v| v.to_f32()).collect())
    }

    /// Returns this rank's shard of the reduced buffer.
    pub async fn reduce_scatter_i64(&mut self, mut data: Vec<i64>) -> Result<Vec<i64>, String> {
        let range = self
            .group()?
            .reduce_scatter(&mut data, ReduceOp::Sum)
            .await
            .map_err(text)?;
        Ok(data[range].to_vec())
    }

    /// `shard` is this rank's part; returns the gathered buffer of `len` elements.
    pub async fn all_gather_i64(
        &mut self,
        shard: Vec<i64>,
        len: usize,
    ) -> Result<Vec<i64>, String> {
        let group = self.group()?;
        let mut data = vec![0i64; len];
        let range = group.shard_range(len);
        if range.len() != shard.len() {
            return Err(format!("shard of {} for range {range:?}", shard.len()));
        }
        data[range].copy_from_slice(&shard);
        group.all_gather(&mut data).await.map_err(text)?;
        Ok(data)
    }

    pub async fn broadcast_f32(
        &mut self,
        mut data: Vec<f32>,
        root: usize,
    ) -> Result<Vec<f32>, String> {
        self.group()?
            .broadcast(&mut data, root)
            .await
            .map_err(text)?;
        Ok(data)
    }

    pub async fn reduce_i64(
        &mut self,
        mut data: Vec<i64>,
        root: usize,
    ) -> Result<Vec<i64>, String> {
        self.group()?
            .reduce(&mut data, ReduceOp::Sum, root)
            .await
            .map_err(text)?;
        Ok(data)
    }

    pub async fn barrier(&mut self) -> Result<(), String> {
        self.group()?.barrier().await.map_err(text)
    }

    /// Rank `first` sends `data` to `second`, which adds 1 to each and sends it back.
    pub async fn ping_pong(
        &mut self,
        first: usize,
        second: usize,
        mut data: Vec<f64>,
    ) -> Result<Vec<f64>, String> {
        let group = self.group()?;
        if group.rank() == first {
            group.send(&data, second).await.map_err(text)?;
            group.recv(&mut data, second).await.map_err(text)?;
        } else {
            group.recv(&mut data, first).await.map_err(text)?;
            data.iter_mut().for_each(|v| *v += 1.0);
            group.send(&data, first).await.map_err(text)?;
        }
        Ok(data)
    }

    /// All-reduces a buffer of `len` floats over and over until one fails; returns the
    /// failure and how many succeeded.
    pub async fn all_reduce_until_failure(
        &mut self,
        len: usize,
        limit: u32,
    ) -> Result<(String, u32), String> {
        let group = self.group()?;
        let mut data = vec![1.0f32; len];
        for done in 0..limit {
            if let Err(error) = group.all_reduce(&mut data, ReduceOp::Mean).await {
                return Ok((error.to_string(), done));
            }
        }
        Err(format!("{limit} all-reduces and no failure"))
    }
}

/// Value of element `i` on rank `r`: small integers, so that float sums are exact.
fn value(rank: usize, i: usize) -> f64 {
    ((rank + 1) * (i % 7 + 1)) as f64
}

async fn spawn_group(name: &str, world: usize, small_bytes: usize) -> Result<Vec<RankHandle>> {
    let mut ranks = Vec::new();
    for rank in 0..world {
        ranks.push(
            Rank::remote(name.to_string(), world, rank)
                .max_restarts(1)
                // A process each: the chaos scenario SIGKILLs one rank, not its neighbours.
                .isolate()
                .spawn()
                .await?,
        );
    }
    let forming: Vec<ObjectRef<u64>> = ranks.iter().map(|r| r.form(small_bytes, 60_000)).collect();
    let rounds = fleet::get_all(&forming).await?;
    ensure!(
        rounds.iter().all(|r| *r == rounds[0]),
        "ranks formed different rounds: {rounds:?}"
    );
    Ok(ranks)
}

fn expected(world: usize, len: usize, op: ReduceOp) -> Vec<f64> {
    (0..len)
        .map(|i| {
            let values = (0..world).map(|r| value(r, i));
            match op {
                ReduceOp::Sum => values.sum(),
                ReduceOp::Mean => values.sum::<f64>() / world as f64,
                ReduceOp::Product => values.product(),
                ReduceOp::Max => values.fold(f64::MIN, f64::max),
                ReduceOp::Min => values.fold(f64::MAX, f64::min),
            }
        })
        .collect()
}

async fn all_reduce_matches_a_local_reduction_on_every_rank() -> Result<()> {
    for world in [2usize, 3, 4] {
        let ranks = spawn_group(&format!("allreduce-{world}"), world, 4 << 10).await?;
        // 1 and 100 elements take the direct path, the others the ring (unequal shards,
        // several pieces per shard).
        for len in [1usize, 100, 5_003, 40_001] {
            for op in [
                ReduceOp::Sum,
                ReduceOp::Mean,
                ReduceOp::Max,
                ReduceOp::Min,
                ReduceOp::Product,
            ] {
                let want = expected(world, len, op);
                let f32s: Vec<ObjectRef<Vec<f32>>> = (0..world)
                    .map(|r| {
                        ranks[r].all_reduce_f32(
                            (0..len).map(|i| value(r, i) as f32).collect::<Vec<_>>(),
                            op,
                        )
                    })
                    .collect();
                let want32: Vec<f32> = want.iter().map(|v| *v as f32).collect();
                for (r, got) in fleet::get_all(&f32s).await?.into_iter().enumerate() {
                    ensure!(
                        got == want32,
                        "f32 {op:?} world {world} len {len}: rank {r} differs"
                    );
                }
            }
            let f64s: Vec<ObjectRef<Vec<f64>>> = (0..world)
                .map(|r| {
                    ranks[r].all_reduce_f64(
                        (0..len).map(|i| value(r, i)).collect::<Vec<_>>(),
                        ReduceOp::Sum,
                    )
                })
                .collect();
            let want = expected(world, len, ReduceOp::Sum);
            for (r, got) in fleet::get_all(&f64s).await?.into_iter().enumerate() {
                ensure!(
                    got == want,
                    "f64 sum world {world} len {len}: rank {r} differs"
                );
            }
            let i64s: Vec<ObjectRef<Vec<i64>>> = (0..world)
                .map(|r| {
                    ranks[r].all_reduce_i64(
                        (0..len).map(|i| value(r, i) as i64).collect::<Vec<_>>(),
                        ReduceOp::Mean,
                    )
                })
                .collect();
            let want: Vec<i64> = (0..len)
                .map(|i| (0..world).map(|r| value(r, i) as i64).sum::<i64>() / world as i64)
                .collect();
            for (r, got) in fleet::get_all(&i64s).await?.into_iter().enumerate() {
                ensure!(
                    got == want,
                    "i64 mean world {world} len {len}: rank {r} differs"
                );
            }
            let halves: Vec<ObjectRef<Vec<f32>>> = (0..world)
                .map(|r| {
                    ranks[r].all_reduce_bf16(
                        (0..len).map(|i| value(r, i) as f32).collect::<Vec<_>>(),
                        ReduceOp::Sum,
                    )
                })
                .collect();
            let results = fleet::get_all(&halves).await?;
            let want = expected(world, len, ReduceOp::Sum);
            for (r, got) in results.iter().enumerate() {
                ensure!(got == &results[0], "bf16: rank {r} differs from rank 0");
                ensure!(
                    got.iter()
                        .zip(&want)
                        .all(|(g, w)| (*g as f64 - w).abs() <= w.abs() / 64.0),
                    "bf16 sum world {world} len {len}: beyond bf16's precision"
                );
            }
        }
    }
    Ok(())
}

async fn scatter_gather_broadcast_reduce_barrier_and_point_to_point() -> Result<()> {
    let world = 3;
    let ranks = spawn_group("ops", world, 4 << 10).await?;
    let len = 20_000usize;
    let inputs: Vec<Vec<i64>> = (0..world)
        .map(|r| (0..len).map(|i| value(r, i) as i64).collect::<Vec<_>>())
        .collect();
    let total: Vec<i64> = (0..len)
        .map(|i| inputs.iter().map(|v| v[i]).sum())
        .collect();
    // Reduce-scatter: each rank its own shard of the sum.
    let shards: Vec<ObjectRef<Vec<i64>>> = (0..world)
        .map(|r| ranks[r].reduce_scatter_i64(inputs[r].clone()))
        .collect();
    let shards = fleet::get_all(&shards).await?;
    for (r, shard) in shards.iter().enumerate() {
        let range = fleet_collective::schedule::shard_range(len, world, r);
        ensure!(
            shard[..] == total[range],
            "reduce_scatter: rank {r}'s shard"
        );
    }
    // All-gather of those shards gives every rank the whole sum.
    let gathered: Vec<ObjectRef<Vec<i64>>> = (0..world)
        .map(|r| ranks[r].all_gather_i64(shards[r].clone(), len))
        .collect();
    for (r, got) in fleet::get_all(&gathered).await?.into_iter().enumerate() {
        ensure!(got == total, "all_gather: rank {r}");
    }
    // Broadcast, small (direct) and large (the chain), from a rank that is not 0.
    for n in [10usize, 50_000] {
        let from_root: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let refs: Vec<ObjectRef<Vec<f32>>> = (0..world)
            .map(|r| {
                let data = if r == 1 {
                    from_root.clone()
                } else {
                    vec![0.0; n]
                };
                ranks[r].broadcast_f32(data, 1)
            })
            .collect();
        for (r, got) in fleet::get_all(&refs).await?.into_iter().enumerate() {
            ensure!(got == from_root, "broadcast of {n}: rank {r}");
        }
    }
    // Reduce to rank 2.
    let refs: Vec<ObjectRef<Vec<i64>>> = (0..world)
        .map(|r| ranks[r].reduce_i64(inputs[r].clone(), 2))
        .collect();
    let reduced = fleet::get_all(&refs).await?;
    ensure!(reduced[2] == total, "reduce: the root's buffer");
    // Barrier, then send/recv between ranks 0 and 2 (rank 1 takes no part).
    let refs: Vec<ObjectRef<()>> = ranks.iter().map(|r| r.barrier()).collect();
    fleet::get_all(&refs).await?;
    let data = vec![1.5f64; 3000];
    let (a, b) = (
        ranks[0].ping_pong(0, 2, data.clone()),
        ranks[2].ping_pong(0, 2, data),
    );
    let (a, b) = (a.await?, b.await?);
    ensure!(
        a.iter().all(|v| *v == 2.5) && a == b,
        "ping-pong came back as {:?}",
        &a[..3]
    );
    Ok(())
}

/// A group of one (a run scaled down to a single rank): every operation is a no-op that
/// leaves the buffer as it is (a large broadcast once tried to send to itself).
async fn a_group_of_one_rank_works_alone() -> Result<()> {
    let mut group = Group::init("solo", 1, 0).await?;
    let original: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
    let mut data = original.clone();
    group.broadcast(&mut data, 0).await?;
    group.all_reduce(&mut data, ReduceOp::Mean).await?;
    group.reduce(&mut data, ReduceOp::Sum, 0).await?;
    let shard = group.reduce_scatter(&mut data, ReduceOp::Sum).await?;
    ensure!(shard == (0..100_000), "a group of one's shard is {shard:?}");
    group.all_gather(&mut data).await?;
    group.barrier().await?;
    ensure!(data == original, "a group of one changed its buffer");
    fleet_collective::remove_group("solo").await?;
    Ok(())
}

async fn a_driver_declares_the_group_and_each_actor_finds_its_rank() -> Result<()> {
    let mut ranks = Vec::new();
    for _ in 0..2 {
        // The rank passed to new() is ignored by join(): the declaration decides.
        ranks.push(Rank::remote("declared".to_string(), 2, 99).spawn().await?);
    }
    // Declared in reverse: the second actor is rank 0.
    declare_group("declared", &[ranks[1].raw(), ranks[0].raw()]).await?;
    let joins: Vec<ObjectRef<usize>> = ranks.iter().map(|r| r.join()).collect();
    let got = fleet::get_all(&joins).await?;
    ensure!(got == vec![1, 0], "declared ranks: {got:?}");
    let refs: Vec<ObjectRef<Vec<f32>>> = ranks
        .iter()
        .map(|r| r.all_reduce_f32(vec![2.0; 10], ReduceOp::Sum))
        .collect();
    for got in fleet::get_all(&refs).await? {
        ensure!(got == vec![4.0; 10], "declared group all_reduce: {got:?}");
    }
    fleet_collective::remove_group("declared").await?;
    Ok(())
}

async fn mismatched_buffers_fail_on_every_rank_and_the_group_forms_again() -> Result<()> {
    let ranks = spawn_group("mismatch", 2, 4 << 10).await?;
    let refs = [
        ranks[0].all_reduce_f32(vec![1.0; 100], ReduceOp::Sum),
        ranks[1].all_reduce_f32(vec![1.0; 150], ReduceOp::Sum),
    ];
    for (r, outcome) in refs.into_iter().enumerate() {
        let message = match outcome.await {
            Ok(_) => return Err(anyhow!("rank {r}: buffers of 100 and 150 were all-reduced")),
            Err(error) => error.to_string(),
        };
        ensure!(message.contains("bytes where"), "rank {r}: {message}");
    }
    // A broken group says so at once, until it is formed again.
    let message = ranks[0]
        .barrier()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(
        message.contains("broken"),
        "a broken group's next call: {message}"
    );
    let forming: Vec<ObjectRef<u64>> = ranks.iter().map(|r| r.form(4 << 10, 60_000)).collect();
    let rounds = fleet::get_all(&forming).await?;
    ensure!(rounds == vec![2, 2], "re-formed in round {rounds:?}");
    let refs: Vec<ObjectRef<Vec<f32>>> = ranks
        .iter()
        .map(|r| r.all_reduce_f32(vec![1.0; 100], ReduceOp::Sum))
        .collect();
    for got in fleet::get_all(&refs).await? {
        ensure!(got == vec![2.0; 100], "after re-forming: {:?}", &got[..3]);
    }
    Ok(())
}

async fn a_rank_that_never_comes_is_named() -> Result<()> {
    let lonely = Rank::remote("lonely".to_string(), 2, 0).spawn().await?;
    let started = Instant::now();
    let message = lonely
        .form(4 << 10, 1_000)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(
        message.contains("rank(s) [1] did not join"),
        "a rendezvous without rank 1: {message}"
    );
    println!("  a missing rank was named after {:?}", started.elapsed());
    fleet_collective::remove_group("lonely").await?;
    Ok(())
}

async fn a_sigkilled_rank_fails_the_others_naming_it_and_the_group_forms_again() -> Result<()> {
    let world = 3;
    let ranks = spawn_group("chaos", world, 64 << 10).await?;
    let victim = ranks[1].pid().await?;
    // 1 MiB buffers: the ring, many pieces in flight.
    let loops: Vec<ObjectRef<(String, u32)>> = ranks
        .iter()
        .map(|r| r.all_reduce_until_failure(1 << 18, 1_000_000))
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()?;
    ensure!(status.success(), "kill -9 {victim}");
    let killed = Instant::now();
    for r in [0usize, 2] {
        let (message, done) = loops[r].get().await.context("a survivor's loop")?;
        ensure!(done > 0, "rank {r} did no all-reduce before the kill");
        ensure!(
            message.contains("rank 1 was lost"),
            "rank {r}'s failure does not name rank 1: {message}"
        );
        println!(
            "  rank {r}: {done} all-reduces, then failed {:?} after the kill: {message}",
            killed.elapsed()
        );
    }
    ensure!(
        loops[1].get().await.is_err(),
        "the killed rank's call should fail"
    );
    // Rank 1 restarted (max_restarts 1, a fresh instance): all three form the group again.
    let forming: Vec<ObjectRef<u64>> = ranks.iter().map(|r| r.form(64 << 10, 60_000)).collect();
    let rounds = fleet::get_all(&forming).await?;
    ensure!(
        rounds.iter().all(|r| *r == 2),
        "re-formed in rounds {rounds:?}"
    );
    ensure!(ranks[1].pid().await? != victim, "rank 1 is a new process");
    let len = 300_000;
    let refs: Vec<ObjectRef<Vec<f32>>> = (0..world)
        .map(|r| {
            ranks[r].all_reduce_f32(
                (0..len).map(|i| value(r, i) as f32).collect::<Vec<_>>(),
                ReduceOp::Sum,
            )
        })
        .collect();
    let want: Vec<f32> = expected(world, len, ReduceOp::Sum)
        .iter()
        .map(|v| *v as f32)
        .collect();
    for (r, got) in fleet::get_all(&refs).await?.into_iter().enumerate() {
        ensure!(got == want, "after re-forming: rank {r} differs");
    }
    Ok(())
}

type Scenario = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>>>>;

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start a runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let options = fleet::InitOptions {
            num_cpus: Some(4.0),
            ..Default::default()
        };
        if let Err(error) = fleet::init_with(options).await {
            eprintln!("fleet::init failed: {error}");
            return std::process::ExitCode::FAILURE;
        }
        let scenarios: Vec<(&str, Scenario)> = vec![
            ("all_reduce_matches_a_local_reduction_on_every_rank", || {
                Box::pin(all_reduce_matches_a_local_reduction_on_every_rank())
            }),
            (
                "scatter_gather_broadcast_reduce_barrier_and_point_to_point",
                || Box::pin(scatter_gather_broadcast_reduce_barrier_and_point_to_point()),
            ),
            ("a_group_of_one_rank_works_alone", || {
                Box::pin(a_group_of_one_rank_works_alone())
            }),
            (
                "a_driver_declares_the_group_and_each_actor_finds_its_rank",
                || Box::pin(a_driver_declares_the_group_and_each_actor_finds_its_rank()),
            ),
            (
                "mismatched_buffers_fail_on_every_rank_and_the_group_forms_again",
                || Box::pin(mismatched_buffers_fail_on_every_rank_and_the_group_forms_again()),
            ),
            ("a_rank_that_never_comes_is_named", || {
                Box::pin(a_rank_that_never_comes_is_named())
            }),
            (
                "a_sigkilled_rank_fails_the_others_naming_it_and_the_group_forms_again",
                || {
                    Box::pin(
                        a_sigkilled_rank_fails_the_others_naming_it_and_the_group_forms_again(),
                    )
                },
            ),
        ];
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        let (mut passed, mut failed) = (0, 0);
        for (name, scenario) in scenarios {
            if filter.as_deref().is_some_and(|f| !name.contains(f)) {
                continue;
            }
            let started = Instant::now();
            match tokio::time::timeout(Duration::from_secs(180), scenario()).await {
                Ok(Ok(())) => {
                    passed += 1;
                    println!("test {name} ... ok ({:?})", started.elapsed());
                }
                Ok(Err(error)) => {
                    failed += 1;
                    println!("test {name} ... FAILED: {error:#}");
                }
                Err(_) => {
                    failed += 1;
                    println!("test {name} ... FAILED: timed out after 180 s");
                }
            }
        }
        fleet::shutdown().await;
        println!("{passed} passed, {failed} failed");
        if failed == 0 {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        }
    })
}
