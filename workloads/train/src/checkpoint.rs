//! Checkpoints of a data-parallel run: the model (saved by rank 0, safetensors) and every
//! rank's optimizer shard, in a directory per step, committed in the GCS (`fleet::kv`).
//!
//! - A checkpoint counts only once it is committed: every rank writes its part (to a
//!   temporary file, synced, then renamed), the ranks agree that all parts were written (an
//!   all-reduce of a flag), and only then does rank 0 record the step in the KV. A run that
//!   dies in the middle of a save leaves a directory that no restore reads.
//! - A restore reads the committed step and takes up the model and the optimizer state
//!   saved by however many ranks there were then: the shards are of the flat parameter
//!   vector, so a group of another size takes its own ranges of them.
//! - The directory must be one every rank can read and write (one node's disk for ranks on
//!   one node; a shared file system across nodes).

use std::path::{Path, PathBuf};

use fleet_collective::ReduceOp;
use serde::{Deserialize, Serialize};

use crate::ddp::{Ddp, Result, TrainError};
use crate::sharded::{ShardState, ShardedAdamW};

/// The KV namespace of committed checkpoints.
pub const NAMESPACE: &str = "fleet-train";

/// A committed checkpoint, as recorded in the KV.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The step it was taken after.
    pub step: u64,
    /// Its directory.
    pub path: PathBuf,
    /// How many ranks saved it (one optimizer shard each).
    pub world: usize,
}

/// The checkpoints of one run (`run` names it in the KV).
#[derive(Clone, Debug)]
pub struct Checkpoints {
    run: String,
    dir: PathBuf,
}

fn invalid(what: impl Into<String>) -> TrainError {
    TrainError::Invalid(what.into())
}

fn io(path: &Path, action: &str, error: std::io::Error) -> TrainError {
    invalid(format!("cannot {action} {}: {error}", path.display()))
}

/// Writes `bytes` to `path` so that a reader sees all of it or nothing.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("partial");
    let mut file = std::fs::File::create(&temporary).map_err(|e| io(&temporary, "create", e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io(&temporary, "write", e))?;
    std::fs::rename(&temporary, path).map_err(|e| io(path, "rename into", e))
}

impl Checkpoints {
    /// Checkpoints of run `run` under `dir`.
    pub fn new(run: &str, dir: impl Into<PathBuf>) -> Self {
        Checkpoints {
            run: run.to_string(),
            dir: dir.into(),
        }
    }

    fn key(&self) -> String {
        format!("{}/latest", self.run)
    }

    /// The last committed checkpoint, if any.
    pub async fn latest(&self) -> Result<Option<Committed>> {
        let entry = fleet::kv::get(NAMESPACE, &self.key())
            .await
            .map_err(|e| invalid(format!("reading run {}'s checkpoint record: {e}", self.run)))?;
        entry
            .map(|e| {
                serde_json::from_slice(&e.value).map_err(|error| {
                    invalid(format!(
                        "run {}'s checkpoint record is unreadable ({error}); delete it with fleet kv to start over",
                        self.run
                    ))
                })
            })
            .transpose()
    }

    /// Saves the state after `step` and commits it (every rank calls it at the same step).
    pub async fn save(
        &self,
        ddp: &mut Ddp,
        optimizer: &ShardedAdamW,
        step: u64,
    ) -> Result<Committed> {
        let (rank, world) = (ddp.group().rank(), ddp.group().world_size());
        let path = self.dir.join(format!("step-{step:09}"));
        let written = (|| -> Result<()> {
            std::fs::create_dir_all(&path).map_err(|e| io(&path, "create", e))?;
            if rank == 0 {
                let file = path.join("model.safetensors");
                candle_core::safetensors::save(&ddp.named_parameters(), &file)?;
            }
            let state = bincode::serialize(&optimizer.state()?)
                .map_err(|e| invalid(format!("cannot encode the optimizer shard: {e}")))?;
            write_whole(&path.join(format!("optimizer-{rank}.bin")), &state)
        })();
        // Every rank's part written, or none of it counts.
        let mut all_written = vec![i64::from(written.is_ok())];
        ddp.group()
            .all_reduce(&mut all_written, ReduceOp::Min)
            .await?;
        written?;
        if all_written[0] == 0 {
            return Err(invalid(format!(
                "the checkpoint of step {step} was not committed: another rank could not write its part under {}",
                path.display()
            )));
        }
        let committed = Committed { step, path, world };
        if rank == 0 {
            let value = serde_json::to_vec(&committed)
                .map_err(|e| invalid(format!("cannot encode the checkpoint record: {e}")))?;
            fleet::kv::put(NAMESPACE, &self.key(), &value)
                .await
                .map_err(|e| invalid(format!("committing the checkpoint of step {step}: {e}")))?;
        }
        // Nobody goes on before the commit, so a restore after any later failure finds it.
        ddp.group().barrier().await?;
        Ok(committed)
    }

    /// Takes up the last committed checkpoint in the model and `optimizer`; returns its
    /// step (`None`: nothing committed yet, start from the beginning).
    pub async fn restore(&self, ddp: &Ddp, optimizer: &mut ShardedAdamW) -> Result<Option<u64>> {
        let Some(committed) = self.latest().await? else {
            return Ok(None);
        };
        let model = committed.path.join("model.safetensors");
        let values = candle_core::safetensors::load(&model, &candle_core::Device::Cpu)
            .map_err(|e| invalid(format!("cannot read {}: {e}", model.display())))?;
        ddp.set_named_parameters(&values)?;
        let mut shards = Vec::with_capacity(committed.world);
        for rank in 0..committed.world {
            let file = committed.path.join(format!("optimizer-{rank}.bin"));
            let bytes = std::fs::read(&file).map_err(|e| io(&file, "read", e))?;
            let shard: ShardState = bincode::deserialize(&bytes)
                .map_err(|e| invalid(format!("{} is corrupt: {e}", file.display())))?;
            shards.push(shard);
        }
        optimizer.restore(&shards, ddp.parameter_count())?;
        Ok(Some(committed.step))
    }

    /// Removes the run's record (its directories stay).
    pub async fn forget(&self) -> Result<()> {
        fleet::kv::delete(NAMESPACE, &self.key())
            .await
            .map_err(|e| {
                invalid(format!(
                    "removing run {}'s checkpoint record: {e}",
                    self.run
                ))
            })
    }
}
