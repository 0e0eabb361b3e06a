//! What `fleet bench ps` runs: the keys/s worker (sparse pulls and pushes of random keys,
//! a fixed number per call) and the time-to-target run (sparse logistic regression until
//! the held-out log-loss is within a relative gap of the known optimum), and the data set's
//! export for the Ray peer (`bench/ray_ps.py`), so both train on the very same examples.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use fleet::ObjectRef;
use serde::{Deserialize, Serialize};

use crate::client::{ParameterServer, PsWorker};
use crate::config::mix;
use crate::data::SparseLogReg;
use crate::logreg::{logreg_worker, HeldOut, WorkerReport};
use crate::{PsError, Result};

/// One keys/s worker's figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeysReport {
    /// Keys pulled plus keys pushed.
    pub keys: u64,
    /// Seconds the calls took (the first, warm-up call not counted).
    pub seconds: f64,
}

/// `calls` rounds of a pull of `keys_per_call` random feature ids (uniform over 2²⁴, from
/// `seed`) and a push of gradients for them: the parameter server's raw rate, without a
/// model's computation in between. Each round's push travels with the next round's pull
/// ([`PsWorker::push_then_pull`]: one message per shard per round), the last push alone.
#[fleet::remote]
pub async fn keys_worker(
    mut ps: PsWorker,
    keys_per_call: usize,
    calls: u64,
    seed: u64,
) -> std::result::Result<KeysReport, String> {
    let mut report = KeysReport::default();
    let mut started = Instant::now();
    let mut previous: Option<(Vec<u64>, Vec<f32>)> = None;
    for call in 0..=calls {
        let keys: Vec<u64> = (0..keys_per_call as u64)
            .map(|k| mix(seed ^ mix(call << 32 | k)) & ((1 << 24) - 1))
            .collect();
        let weights = match previous.take() {
            None => ps.pull(&keys).await,
            Some((keys_before, grads)) => ps.push_then_pull(&keys_before, &grads, &keys).await,
        }
        .map_err(|e| e.to_string())?;
        let grads: Vec<f32> = weights.iter().map(|w| 0.01 * (w + 1.0)).collect();
        if call == 0 {
            started = Instant::now();
        } else {
            report.keys += 2 * keys.len() as u64;
        }
        previous = Some((keys, grads));
    }
    if let Some((keys, grads)) = previous {
        ps.push(&keys, &grads).await.map_err(|e| e.to_string())?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Runs `workers` keys/s workers on `ps` at once; the rate over all of them: keys per
/// second of the slowest worker's time.
pub async fn keys_per_second(
    ps: &ParameterServer,
    workers: usize,
    keys_per_call: usize,
    calls: u64,
    cpus_per_worker: f64,
) -> Result<f64> {
    let runs: Vec<ObjectRef<KeysReport>> = (0..workers)
        .map(|w| {
            Ok(keys_worker::options().num_cpus(cpus_per_worker).remote(
                ps.worker(w)?,
                keys_per_call,
                calls,
                w as u64 + 1,
            ))
        })
        .collect::<Result<_>>()?;
    let reports = fleet::get_all(&runs)
        .await
        .map_err(|e| PsError::Fleet(e.to_string()))?;
    let keys: u64 = reports.iter().map(|r| r.keys).sum();
    let seconds = reports.iter().map(|r| r.seconds).fold(0.0, f64::max);
    Ok(keys as f64 / seconds)
}

/// How a time-to-target run went.
#[derive(Clone, Debug)]
pub struct TargetRun {
    /// Seconds until the held-out log-loss was first seen within the gap (`None`: never,
    /// in `epochs` epochs).
    pub seconds: Option<f64>,
    /// The held-out log-loss at the end.
    pub final_loss: f64,
    /// The optimum.
    pub optimum: f64,
    /// (seconds, held-out log-loss) as sampled.
    pub curve: Vec<(f64, f64)>,
}

/// Trains `data` with `workers` logistic-regression workers on `ps` for `epochs` epochs in
/// batches of `batch`, sampling the held-out log-loss every `every`; the time the gap to the
/// optimum first fell to `gap` or below.
#[allow(clippy::too_many_arguments)]
pub async fn time_to_target(
    ps: &ParameterServer,
    data: &SparseLogReg,
    workers: u64,
    batch: u64,
    epochs: u64,
    gap: f64,
    every: Duration,
    cpus_per_worker: f64,
) -> Result<TargetRun> {
    let optimum = data.optimal_log_loss();
    let held_out = HeldOut::new(data);
    let per_worker = data.examples / workers;
    let iterations = epochs * per_worker / batch;
    let started = Instant::now();
    let runs: Vec<ObjectRef<WorkerReport>> = (0..workers)
        .map(|w| {
            Ok(logreg_worker::options().num_cpus(cpus_per_worker).remote(
                ps.worker(w as usize)?,
                *data,
                (w * per_worker, (w + 1) * per_worker),
                iterations,
                batch,
            ))
        })
        .collect::<Result<_>>()?;
    let finished = fleet::get_all(&runs);
    tokio::pin!(finished);
    let mut run = TargetRun {
        seconds: None,
        final_loss: f64::NAN,
        optimum,
        curve: Vec::new(),
    };
    let mut next = Instant::now() + every;
    loop {
        tokio::select! {
            reports = &mut finished => {
                reports.map_err(|e| PsError::Fleet(e.to_string()))?;
                break;
            }
            _ = tokio::time::sleep_until(next.into()) => {
                let at = started.elapsed().as_secs_f64();
                let loss = held_out.log_loss(ps).await?;
                run.curve.push((at, loss));
                if run.seconds.is_none() && (loss - optimum) / optimum <= gap {
                    run.seconds = Some(at);
                }
                next = Instant::now() + every;
            }
        }
    }
    run.final_loss = held_out.log_loss(ps).await?;
    if run.seconds.is_none() && (run.final_loss - optimum) / optimum <= gap {
        run.seconds = Some(started.elapsed().as_secs_f64());
    }
    Ok(run)
}

/// Writes `data`'s training and held-out examples for the Ray peer: `features.u64`
/// (`active` little-endian ids per example, training examples first), `labels.f32`, and
/// `shape.txt` (`examples held_out active optimum`).
pub fn export(data: &SparseLogReg, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let held_out = data.held_out();
    let total = held_out.end;
    let mut features = std::io::BufWriter::new(std::fs::File::create(dir.join("features.u64"))?);
    let mut labels = std::io::BufWriter::new(std::fs::File::create(dir.join("labels.f32"))?);
    for i in 0..total {
        let (ids, label) = data.example(i);
        if ids.len() != data.active {
            return Err(std::io::Error::other(format!(
                "example {i} has {} features, not {}: give the data set more feature ids",
                ids.len(),
                data.active
            )));
        }
        for id in ids {
            features.write_all(&id.to_le_bytes())?;
        }
        labels.write_all(&label.to_le_bytes())?;
    }
    features.flush()?;
    labels.flush()?;
    std::fs::write(
        dir.join("shape.txt"),
        format!(
            "{} {} {} {}\n",
            data.examples,
            held_out.end - held_out.start,
            data.active,
            data.optimal_log_loss()
        ),
    )
}
