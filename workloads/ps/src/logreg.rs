//! Sparse logistic regression on a parameter server: the worker loop (a remote task) and
//! the held-out evaluation. What the example, the tests and the benchmark run.

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::client::{ParameterServer, PsWorker};
use crate::data::{log_loss, sigmoid, SparseLogReg};
use crate::Result;

/// What a worker did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// The worker.
    pub worker: usize,
    /// Pushes acknowledged by every shard (by this attempt of the task).
    pub pushes: u64,
    /// The clock this attempt started from (0, or where a lost attempt left off).
    pub resumed_at: u64,
    /// Keys pulled plus keys pushed.
    pub keys: u64,
    /// Seconds in pulls and pushes.
    pub communication: f64,
    /// Seconds in all.
    pub seconds: f64,
}

/// One worker's training: `iterations` mini-batches of `batch` examples taken in turn from
/// `examples` (wrapping), each a pull of its features' weights and a push of their
/// log-loss gradients, summed over the batch (as per-example updates would add up: the
/// per-coordinate optimizers, FTRL and Adagrad, scale each coordinate's steps themselves).
///
/// Mini-batch `t` is a function of the clock, so a retried task (its node lost) resumes at
/// the clock the shards have and trains on the same examples the lost one would have.
#[fleet::remote]
pub async fn logreg_worker(
    mut ps: PsWorker,
    data: SparseLogReg,
    examples: (u64, u64),
    iterations: u64,
    batch: u64,
) -> std::result::Result<WorkerReport, String> {
    let (first, end) = examples;
    if end <= first || batch == 0 {
        return Err(format!(
            "worker {}: an empty example range {first}..{end} or batch {batch}",
            ps.id()
        ));
    }
    let started = Instant::now();
    let mut report = WorkerReport {
        worker: ps.id(),
        ..WorkerReport::default()
    };
    let resumed = ps.resume().await.map_err(|e| e.to_string())?;
    report.resumed_at = resumed;
    let mut next = first + (resumed * batch) % (end - first);
    let mut previous: Option<(Vec<u64>, Vec<f32>)> = None;
    for _ in resumed..iterations {
        let mut rows = Vec::with_capacity(batch as usize);
        let mut index: HashMap<u64, usize> = HashMap::new();
        let mut keys = Vec::new();
        for _ in 0..batch {
            let (ids, label) = data.example(next);
            next = if next + 1 >= end { first } else { next + 1 };
            for id in &ids {
                index.entry(*id).or_insert_with(|| {
                    keys.push(*id);
                    keys.len() - 1
                });
            }
            rows.push((ids, label));
        }
        // The previous batch's push and this batch's pull travel together: one message
        // per shard per batch.
        let talking = Instant::now();
        let weights = match previous.take() {
            None => ps.pull(&keys).await,
            Some((keys_before, grads_before)) => {
                let weights = ps.push_then_pull(&keys_before, &grads_before, &keys).await;
                report.pushes += 1;
                weights
            }
        }
        .map_err(|e| e.to_string())?;
        report.communication += talking.elapsed().as_secs_f64();
        let mut grads = vec![0.0f32; keys.len()];
        for (ids, label) in &rows {
            let p = sigmoid(ids.iter().map(|f| weights[index[f]]).sum());
            for f in ids {
                grads[index[f]] += p - label;
            }
        }
        report.keys += 2 * keys.len() as u64;
        previous = Some((keys, grads));
    }
    if let Some((keys, grads)) = previous {
        ps.push(&keys, &grads).await.map_err(|e| e.to_string())?;
        report.pushes += 1;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The held-out examples, generated once, and the distinct feature ids they use.
pub struct HeldOut {
    rows: Vec<(Vec<u64>, f32)>,
    keys: Vec<u64>,
}

impl HeldOut {
    /// `data`'s held-out examples.
    pub fn new(data: &SparseLogReg) -> Self {
        let rows: Vec<(Vec<u64>, f32)> = data.held_out().map(|i| data.example(i)).collect();
        let mut keys: Vec<u64> = rows
            .iter()
            .flat_map(|(ids, _)| ids.iter().copied())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        HeldOut { rows, keys }
    }

    /// The model's mean log-loss on them (weights read without waiting).
    pub async fn log_loss(&self, ps: &ParameterServer) -> Result<f64> {
        let weights = ps.read(&self.keys).await?;
        let weight = |f: &u64| self.keys.binary_search(f).map_or(0.0, |i| weights[i]);
        Ok(self
            .rows
            .iter()
            .map(|(ids, y)| log_loss(sigmoid(ids.iter().map(weight).sum()), *y))
            .sum::<f64>()
            / self.rows.len().max(1) as f64)
    }
}

/// The model's mean log-loss on the held-out examples (weights read without waiting).
pub async fn held_out_log_loss(ps: &ParameterServer, data: &SparseLogReg) -> Result<f64> {
    HeldOut::new(data).log_loss(ps).await
}
