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
    let data = SparseLogReg {
        features: 20_000,
        examples: 8_000,
        active: 10,
        scale: 1.0,
        informative: 200,
        seed: 11,
    };
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
