//! The parameter server across real actor processes on an embedded cluster: vectorized
//! pulls and pushes over several shards, the consistency models holding fast workers back
//! (and naming the missing one when it never comes), bad input refused by name, and
//! workers in remote tasks training sparse logistic regression close to its known optimum
//! with every acknowledged push applied once.
//!
//! A plain program (`harness = false`): `fleet::init` first (a worker re-executing this
//! binary turns into a worker there), then every scenario in turn.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use fleet::ObjectRef;
use fleet_ps::data::SparseLogReg;
use fleet_ps::logreg::{held_out_log_loss, logreg_worker, WorkerReport};
use fleet_ps::{Consistency, KeySpace, Optimizer, ParameterServer};

fn dense(keys: u64, width: usize, shards: usize) -> fleet_ps::Builder {
    ParameterServer::builder()
        .key_space(KeySpace::Dense { keys })
        .width(width)
        .shards(shards)
        .optimizer(Optimizer::Sgd { lr: 1.0 })
}

async fn pulls_and_pushes_are_vectorized_across_shards() -> Result<()> {
    let ps = dense(100, 2, 3)
        .consistency(Consistency::Asp)
        .build()
        .await?;
    let mut worker = ps.worker(0)?;
    // Key 5 twice: its gradients add up. Keys on all three shards.
    let keys = [5, 50, 99, 5];
    let grads = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5, 0.25];
    let ts = worker.push(&keys, &grads).await?;
    ensure!(ts == 0 && worker.clock() == 1, "clock {}", worker.clock());
    let values = worker.pull(&[99, 5, 50, 7]).await?;
    ensure!(
        values == [-5.0, -6.0, -1.5, -2.25, -3.0, -4.0, 0.0, 0.0],
        "pulled {values:?}"
    );
    ensure!(ps.read(&[5]).await? == [-1.5, -2.25], "read back");
    // Every shard saw the push (an empty one where no key of it was), once.
    for (shard, (clocks, applied)) in ps.clocks().await?.into_iter().enumerate() {
        ensure!(
            clocks == [1] && applied == [1],
            "shard {shard}: clocks {clocks:?} applied {applied:?}"
        );
    }
    // push_async/wait: two pushes in flight, then waited for together.
    let first = worker.push_async(&[1], &[1.0, 1.0])?;
    let second = worker.push_async(&[1], &[1.0, 1.0])?;
    worker.wait(second).await?;
    ensure!(first + 1 == second, "clocks {first} {second}");
    ensure!(ps.read(&[1]).await? == [-2.0, -2.0], "two async pushes");
    // A push and the next pull in one message per shard: the pull sees the push.
    let fresh = worker.push_then_pull(&[2], &[1.0, 1.0], &[2, 5]).await?;
    ensure!(
        fresh == [-1.0, -1.0, -1.5, -2.25],
        "push_then_pull read {fresh:?}"
    );
    ensure!(worker.clock() == 4, "clock {}", worker.clock());
    ps.shutdown().await?;
    Ok(())
}

async fn bsp_and_ssp_hold_a_fast_worker_until_the_slow_one_pushes() -> Result<()> {
    for (consistency, ahead) in [(Consistency::Bsp, 1u64), (Consistency::Ssp(2), 3)] {
        let ps = dense(10, 1, 2)
            .consistency(consistency)
            .workers(2)
            .build()
            .await?;
        let (mut fast, mut slow) = (ps.worker(0)?, ps.worker(1)?);
        // The fast worker may run `ahead` clocks past the slow one's 0 without waiting.
        for _ in 0..ahead {
            fast.pull(&[3]).await?;
            fast.push(&[3], &[1.0]).await?;
        }
        let blocked = tokio::spawn(async move {
            let started = Instant::now();
            let values = fast.pull(&[3]).await;
            (values, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        ensure!(
            !blocked.is_finished(),
            "{consistency:?}: the pull {ahead} clocks ahead did not wait"
        );
        slow.push(&[3], &[10.0]).await?;
        let (values, waited) = blocked.await?;
        let values = values?;
        // It read after the slow worker's push.
        let expected = -(ahead as f32) - 10.0;
        ensure!(
            values == [expected],
            "{consistency:?}: read {values:?}, expected [{expected}]"
        );
        println!("  {consistency:?}: a pull {ahead} clock(s) ahead waited {waited:?}, until the slow worker pushed");
        ps.shutdown().await?;
    }
    Ok(())
}

async fn a_pull_waiting_for_a_worker_that_never_pushes_names_it() -> Result<()> {
    let ps = dense(10, 1, 1)
        .workers(3)
        .wait_timeout(Duration::from_millis(400))
        .build()
        .await?;
    let (mut w0, mut w2) = (ps.worker(0)?, ps.worker(2)?);
    w0.push(&[1], &[1.0]).await?;
    w2.push(&[1], &[1.0]).await?;
    let error = w0
        .pull(&[1])
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(
        error.contains("worker(s) [1]") && error.contains("clock 1"),
        "{error:?}"
    );
    ps.shutdown().await?;
    Ok(())
}

async fn bad_input_is_refused_by_name() -> Result<()> {
    let ps = dense(10, 2, 2)
        .consistency(Consistency::Asp)
        .build()
        .await?;
    let mut worker = ps.worker(0)?;
    let message = |r: fleet_ps::Result<_>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let out_of_range = message(worker.pull(&[3, 12]).await.map(|_| ()));
    ensure!(
        out_of_range.contains("key 12") && out_of_range.contains("0..10"),
        "{out_of_range}"
    );
    let width = message(worker.push(&[3], &[1.0]).await.map(|_| ()));
    ensure!(width.contains("expected 2"), "{width}");
    ensure!(worker.clock() == 0, "a refused push moved the clock");
    let not_finite = message(worker.push(&[3], &[1.0, f32::INFINITY]).await.map(|_| ()));
    ensure!(not_finite.contains("inf"), "{not_finite}");
    ensure!(
        ps.read(&[3]).await? == [0.0, 0.0],
        "a refused push changed a weight"
    );
    let no_worker = message(ps.worker(1).map(|_| ()));
    ensure!(no_worker.contains("workers 0..1"), "{no_worker}");
    let config = message(dense(10, 0, 2).build().await.map(|_| ()));
    ensure!(config.contains("width"), "{config}");
    ps.shutdown().await?;
    Ok(())
}

async fn workers_in_tasks_train_logistic_regression_near_its_optimum() -> Result<()> {
    let data = small_data();
    let workers = 4u64;
    let ps = ParameterServer::builder()
        .key_space(KeySpace::Hashed { buckets: 1 << 16 })
        .shards(2)
        .workers(workers as usize)
        .optimizer(Optimizer::Adagrad { lr: 0.1, eps: 1e-6 })
        .consistency(Consistency::Ssp(2))
        .build()
        .await?;
    let optimum = data.optimal_log_loss();
    let before = held_out_log_loss(&ps, &data).await?;
    let per_worker = data.examples / workers;
    let iterations = 50;
    let runs: Vec<ObjectRef<WorkerReport>> = (0..workers)
        .map(|w| {
            Ok(logreg_worker::remote(
                ps.worker(w as usize)?,
                data,
                (w * per_worker, (w + 1) * per_worker),
                iterations,
                100u64,
            ))
        })
        .collect::<Result<_>>()?;
    let reports = fleet::get_all(&runs).await?;
    let after = held_out_log_loss(&ps, &data).await?;
    ensure!(
        after < before - 0.5 * (before - optimum),
        "held-out log-loss {before:.4} -> {after:.4} (optimum {optimum:.4}): did not close half the gap"
    );
    // Every acknowledged push was applied exactly once on every shard.
    for (shard, (clocks, applied)) in ps.clocks().await?.into_iter().enumerate() {
        for report in &reports {
            ensure!(
                applied[report.worker] == report.pushes && clocks[report.worker] == iterations,
                "shard {shard}: worker {} acknowledged {} pushes, the shard applied {} (clock {})",
                report.worker,
                report.pushes,
                applied[report.worker],
                clocks[report.worker]
            );
        }
    }
    let keys: u64 = reports.iter().map(|r| r.keys).sum();
    let seconds = reports.iter().map(|r| r.seconds).fold(0.0, f64::max);
    println!(
        "  4 workers x {iterations} batches of 100, 2 shards, SSP(2), Adagrad: held-out log-loss {before:.4} -> {after:.4} (optimum {optimum:.4}, gap {:.1}%), {:.0} keys/s (debug build)",
        100.0 * (after - optimum) / optimum,
        keys as f64 / seconds
    );
    ps.shutdown().await?;
    Ok(())
}

/// A checkpoint directory of this test run's own.
fn checkpoint_dir(test: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("fleet-ps-{test}-{}", std::process::id()))
}

fn sigkill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

fn small_data() -> SparseLogReg {
    SparseLogReg {
        features: 20_000,
        examples: 8_000,
        active: 10,
        scale: 1.0,
        informative: 200,
        seed: 11,
    }
}

/// Every shard's primary and backup applied each worker's `iterations` pushes exactly
/// once, in the same order (same sequence, same digest).
async fn every_push_applied_once_on_both_replicas(
    ps: &ParameterServer,
    workers: usize,
    iterations: u64,
) -> Result<()> {
    for (shard, (primary, backup)) in ps.replicas().await?.into_iter().enumerate() {
        for replica in [&primary, &backup] {
            ensure!(
                replica.applied == vec![iterations; workers]
                    && replica.pushed == vec![iterations; workers],
                "shard {shard} {:?}: applied {:?}, clocks {:?}; every worker pushed {iterations} times",
                replica.role,
                replica.applied,
                replica.pushed
            );
        }
        ensure!(
            primary.seq == backup.seq && primary.digest == backup.digest,
            "shard {shard}: primary at update {} ({:016x}), backup at {} ({:016x})",
            primary.seq,
            primary.digest,
            backup.seq,
            backup.digest
        );
    }
    Ok(())
}

async fn sigkilled_replicas_lose_no_acknowledged_push() -> Result<()> {
    let data = small_data();
    let (workers, iterations) = (2u64, 400u64);
    let dir = checkpoint_dir("replicas");
    let ps = ParameterServer::builder()
        .key_space(KeySpace::Hashed { buckets: 1 << 16 })
        .shards(2)
        .workers(workers as usize)
        .optimizer(Optimizer::Adagrad { lr: 0.1, eps: 1e-6 })
        .consistency(Consistency::Ssp(2))
        .checkpoints(&dir, Duration::from_millis(300))
        .build()
        .await?;
    let optimum = data.optimal_log_loss();
    let before = held_out_log_loss(&ps, &data).await?;
    let per_worker = data.examples / workers;
    let runs: Vec<ObjectRef<WorkerReport>> = (0..workers)
        .map(|w| {
            Ok(logreg_worker::remote(
                ps.worker(w as usize)?,
                data,
                (w * per_worker, (w + 1) * per_worker),
                iterations,
                50u64,
            ))
        })
        .collect::<Result<_>>()?;
    // Mid-run, with pushes in flight: SIGKILL shard 0's primary, then shard 1's backup.
    let mut killed = Vec::new();
    for (shard, primary) in [(0usize, true), (1, false)] {
        let waiting = Instant::now();
        loop {
            let seq = ps.replicas().await?[shard].0.seq;
            if seq >= 40 * (killed.len() as u64 + 1) {
                break;
            }
            if waiting.elapsed() > Duration::from_secs(60) {
                let outcome =
                    tokio::time::timeout(Duration::from_secs(5), fleet::get_all(&runs)).await;
                anyhow::bail!("the workers stopped pushing at update {seq} of shard {shard} after {killed:?}: {outcome:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (p, b) = ps.replicas().await?.swap_remove(shard);
        let victim = if primary { p } else { b };
        sigkill(victim.pid);
        killed.push((shard, victim.role, victim.seq));
    }
    let reports = fleet::get_all(&runs).await?;
    ensure!(
        reports.iter().all(|r| r.pushes == iterations),
        "pushes acknowledged: {:?}",
        reports.iter().map(|r| r.pushes).collect::<Vec<_>>()
    );
    every_push_applied_once_on_both_replicas(&ps, workers as usize, iterations).await?;
    let replicas = ps.replicas().await?;
    ensure!(
        replicas[0].0.restarts >= 1 && replicas[1].1.restarts >= 1,
        "the killed replicas were not restarted: {replicas:?}"
    );
    let after = held_out_log_loss(&ps, &data).await?;
    ensure!(
        after < before - 0.5 * (before - optimum),
        "held-out log-loss {before:.4} -> {after:.4} (optimum {optimum:.4})"
    );
    let recoveries = ps.recoveries();
    ensure!(
        recoveries.len() >= 2,
        "the watch saw {} recoveries: {recoveries:?}",
        recoveries.len()
    );
    println!(
        "  killed {killed:?}; every push applied once on both replicas; recoveries: {}; log-loss {before:.4} -> {after:.4}",
        recoveries
            .iter()
            .map(|r| format!("{} back in {:.2} s", r.replica, r.seconds))
            .collect::<Vec<_>>()
            .join(", ")
    );
    ps.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn a_shard_losing_both_replicas_comes_back_from_its_checkpoint() -> Result<()> {
    let dir = checkpoint_dir("both-lost");
    let ps = dense(4, 1, 1)
        .consistency(Consistency::Asp)
        .checkpoints(&dir, Duration::from_secs(600))
        .build()
        .await?;
    let mut worker = ps.worker(0)?;
    for _ in 0..5 {
        worker.push(&[0], &[1.0]).await?;
    }
    ps.checkpoint().await?;
    for _ in 0..3 {
        worker.push(&[0], &[1.0]).await?;
    }
    ensure!(ps.read(&[0]).await? == [-8.0], "before the loss");
    let (primary, backup) = ps.replicas().await?.swap_remove(0);
    sigkill(primary.pid);
    sigkill(backup.pid);
    // The checkpoint is all there is: clocks 5..8 are gone, and resume says so.
    let resumed = worker.resume().await?;
    ensure!(
        resumed == 5,
        "resumed at clock {resumed}, the checkpoint has 5"
    );
    ensure!(
        ps.read(&[0]).await? == [-5.0],
        "not the checkpoint's weights"
    );
    worker.push(&[0], &[1.0]).await?;
    let (primary, backup) = ps.replicas().await?.swap_remove(0);
    ensure!(
        primary.applied == [6]
            && backup.applied == [6]
            && primary.digest == backup.digest
            && primary.epoch == backup.epoch
            && primary.epoch % 2 == 1,
        "after the loss: primary {primary:?}, backup {backup:?}"
    );
    println!(
        "  both replicas SIGKILLed: back from the checkpoint at clock 5 (3 pushes lost, as documented), epoch {}, the backup following",
        primary.epoch
    );
    ps.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn a_push_whose_backup_is_gone_for_good_fails_by_name_not_a_hang() -> Result<()> {
    let ps = dense(4, 1, 1)
        .consistency(Consistency::Asp)
        .wait_timeout(Duration::from_millis(800))
        .build()
        .await?;
    let mut worker = ps.worker(0)?;
    worker.push(&[0], &[1.0]).await?;
    // Killed (not crashed): the backup will not come back.
    let backup = fleet::get_actor::<fleet_ps::shard::PsShard>(&fleet_ps::shard::replica_name(
        ps.name(),
        0,
        fleet_ps::shard::Role::Backup,
    ))
    .await?;
    fleet::kill(backup.raw()).await?;
    let started = Instant::now();
    let error = worker
        .push(&[0], &[1.0])
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let waited = started.elapsed();
    ensure!(
        error.contains("shard 0") && error.contains("not replicated to the backup"),
        "{error:?}"
    );
    ensure!(
        waited < Duration::from_secs(10),
        "the push waited {waited:?}, past its 800 ms timeout"
    );
    println!("  the push failed after {waited:?}: {error}");
    ps.shutdown().await?;
    Ok(())
}

/// A logistic-regression worker that SIGKILLs its own process at clock `die_at` on its
/// first attempt; the retried task resumes from the shards' clock.
#[fleet::remote]
async fn worker_dying_at(
    mut ps: fleet_ps::PsWorker,
    data: SparseLogReg,
    examples: (u64, u64),
    iterations: u64,
    die_at: u64,
) -> std::result::Result<WorkerReport, String> {
    let clock = ps.resume().await.map_err(|e| e.to_string())?;
    if clock == 0 {
        logreg_worker(ps, data, examples, die_at, 50).await?;
        sigkill(std::process::id());
        return Err("still alive after SIGKILL".into());
    }
    logreg_worker(ps, data, examples, iterations, 50).await
}

async fn a_worker_lost_mid_run_is_replaced_and_resumes_where_the_shards_have_it() -> Result<()> {
    let data = small_data();
    let (workers, iterations, die_at) = (3u64, 60u64, 25u64);
    let dir = checkpoint_dir("worker-loss");
    // BSP: the others wait at the barrier for the replacement.
    let ps = ParameterServer::builder()
        .key_space(KeySpace::Hashed { buckets: 1 << 16 })
        .shards(2)
        .workers(workers as usize)
        .optimizer(Optimizer::Adagrad { lr: 0.1, eps: 1e-6 })
        .consistency(Consistency::Bsp)
        .checkpoints(&dir, Duration::from_secs(2))
        .build()
        .await?;
    let per_worker = data.examples / workers;
    let range = |w: u64| (w * per_worker, (w + 1) * per_worker);
    let mut runs: Vec<ObjectRef<WorkerReport>> = (0..workers - 1)
        .map(|w| {
            Ok(logreg_worker::options().num_cpus(1.0).remote(
                ps.worker(w as usize)?,
                data,
                range(w),
                iterations,
                50u64,
            ))
        })
        .collect::<Result<_>>()?;
    let dying = workers - 1;
    runs.push(worker_dying_at::options().num_cpus(1.0).remote(
        ps.worker(dying as usize)?,
        data,
        range(dying),
        iterations,
        die_at,
    ));
    let reports = fleet::get_all(&runs).await?;
    let replaced = &reports[dying as usize];
    ensure!(
        replaced.resumed_at == die_at && replaced.pushes == iterations - die_at,
        "the replacement resumed at clock {} and pushed {} times (expected {die_at} and {})",
        replaced.resumed_at,
        replaced.pushes,
        iterations - die_at
    );
    every_push_applied_once_on_both_replicas(&ps, workers as usize, iterations).await?;
    println!(
        "  worker {dying} SIGKILLed at clock {die_at}: its task was retried, resumed at clock {}, the others waited at the BSP barrier; every push applied once",
        replaced.resumed_at
    );
    ps.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
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
        if let Err(error) = fleet::init_with(fleet::InitOptions {
            num_cpus: Some(4.0),
            ..Default::default()
        })
        .await
        {
            eprintln!("fleet::init failed: {error}");
            return std::process::ExitCode::FAILURE;
        }
        let scenarios: Vec<(&str, Scenario)> = vec![
            ("pulls_and_pushes_are_vectorized_across_shards", || {
                Box::pin(pulls_and_pushes_are_vectorized_across_shards())
            }),
            (
                "bsp_and_ssp_hold_a_fast_worker_until_the_slow_one_pushes",
                || Box::pin(bsp_and_ssp_hold_a_fast_worker_until_the_slow_one_pushes()),
            ),
            (
                "a_pull_waiting_for_a_worker_that_never_pushes_names_it",
                || Box::pin(a_pull_waiting_for_a_worker_that_never_pushes_names_it()),
            ),
            ("bad_input_is_refused_by_name", || {
                Box::pin(bad_input_is_refused_by_name())
            }),
            (
                "workers_in_tasks_train_logistic_regression_near_its_optimum",
                || Box::pin(workers_in_tasks_train_logistic_regression_near_its_optimum()),
            ),
            ("sigkilled_replicas_lose_no_acknowledged_push", || {
                Box::pin(sigkilled_replicas_lose_no_acknowledged_push())
            }),
            (
                "a_push_whose_backup_is_gone_for_good_fails_by_name_not_a_hang",
                || Box::pin(a_push_whose_backup_is_gone_for_good_fails_by_name_not_a_hang()),
            ),
            (
                "a_shard_losing_both_replicas_comes_back_from_its_checkpoint",
                || Box::pin(a_shard_losing_both_replicas_comes_back_from_its_checkpoint()),
            ),
            (
                "a_worker_lost_mid_run_is_replaced_and_resumes_where_the_shards_have_it",
                || {
                    Box::pin(
                        a_worker_lost_mid_run_is_replaced_and_resumes_where_the_shards_have_it(),
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
