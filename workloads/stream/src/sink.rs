//! Sinks and their part in exactly-once: a sink writer *pre-commits* at each checkpoint
//! barrier (its output up to the barrier made durable but invisible, its pending work
//! recorded in the checkpoint) and *commits* when the coordinator reports the checkpoint
//! complete (two-phase commit, as Flink's `TwoPhaseCommitSinkFunction`). On a restore it
//! commits what the restored checkpoint pre-committed and discards everything after.
//! - [`FileSink::transactional`]: JSON lines, one file per instance per checkpoint;
//! - [`DiscardSink`]: counts records and measures their latency (benchmarks).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::operators::{decode, encode};
use crate::pipe::{Batch, NO_TIMESTAMP};

/// Where a sink instance runs.
#[derive(Clone, Debug)]
pub struct SinkContext {
    /// The job's name.
    pub job: String,
    /// The sink's stage in the job graph.
    pub stage: usize,
    /// This instance.
    pub instance: usize,
    /// Instances of the stage.
    pub parallelism: usize,
}

/// What a sink instance reports when the job ends.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SinkReport {
    /// Records written (in this attempt).
    pub records: u64,
    /// A sample of end-to-end latencies in ms (wall-clock now minus the record's event
    /// time), when the sink measures them.
    pub latencies_ms: Vec<f64>,
}

/// A sink: makes a writer per parallel instance.
pub trait Sink<T>: Send + Sync + 'static {
    /// The writer of one instance.
    fn writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter<T>>, String>;
}

/// One instance's writer.
pub trait SinkWriter<T>: Send {
    /// Writes records (not yet visible to readers of the output, for a transactional sink).
    fn write(&mut self, records: Batch<T>) -> Result<(), String>;
    /// Makes everything written so far durable for checkpoint `checkpoint`; returns the
    /// state the checkpoint records (what `commit` and `restore` need).
    fn pre_commit(&mut self, checkpoint: u64) -> Result<Vec<u8>, String>;
    /// Checkpoint `checkpoint` is complete: publish everything pre-committed up to it.
    fn commit(&mut self, checkpoint: u64) -> Result<(), String>;
    /// The job restarts from checkpoint `checkpoint` (with this instance's pre-commit
    /// state), or from the start (`None`): publish what that checkpoint covered, discard
    /// the rest.
    fn restore(&mut self, restored: Option<(u64, &[u8])>) -> Result<(), String>;
    /// What to report at the end.
    fn report(&self) -> SinkReport {
        SinkReport::default()
    }
}

/// A transactional file sink: each instance writes JSON lines to a hidden in-progress
/// file; at a checkpoint barrier the file is synced and renamed to a pending name that
/// carries the checkpoint's id; when the checkpoint completes, pending files are renamed
/// into the directory. Readers see only committed files (`part-<stage>-<instance>-<id>.jsonl`),
/// each exactly once, whatever fails in between.
#[derive(Clone, Debug)]
pub struct FileSink {
    dir: PathBuf,
}

impl FileSink {
    /// A transactional sink writing into `dir` (created if missing).
    pub fn transactional(dir: impl Into<PathBuf>) -> FileSink {
        FileSink { dir: dir.into() }
    }

    /// Every committed line under `dir`, in file order (what a reader of the output sees).
    pub fn read_committed(dir: &Path) -> Result<Vec<String>, String> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("part-") && n.ends_with(".jsonl"))
            })
            .collect();
        files.sort();
        let mut lines = Vec::new();
        for file in files {
            let text = fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            lines.extend(text.lines().map(str::to_string));
        }
        Ok(lines)
    }
}

struct FileSinkWriter {
    dir: PathBuf,
    pending_dir: PathBuf,
    prefix: String,
    open: Option<std::io::BufWriter<fs::File>>,
    /// Checkpoints pre-committed and not yet committed.
    pending: Vec<u64>,
    records: u64,
}

impl FileSinkWriter {
    fn open_path(&self) -> PathBuf {
        self.pending_dir.join(format!("{}-open.jsonl", self.prefix))
    }

    fn pending_path(&self, checkpoint: u64) -> PathBuf {
        self.pending_dir
            .join(format!("{}-{checkpoint:010}.jsonl", self.prefix))
    }

    fn committed_path(&self, checkpoint: u64) -> PathBuf {
        self.dir
            .join(format!("{}-{checkpoint:010}.jsonl", self.prefix))
    }

    /// Publishes pending files up to `checkpoint` (idempotent: a file already published
    /// is not there any more).
    fn publish_up_to(&mut self, checkpoint: u64) -> Result<(), String> {
        let mut kept = Vec::new();
        for &pending in &self.pending {
            if pending > checkpoint {
                kept.push(pending);
                continue;
            }
            let from = self.pending_path(pending);
            if from.exists() {
                fs::rename(&from, self.committed_path(pending))
                    .map_err(|e| format!("cannot commit {}: {e}", from.display()))?;
            }
        }
        self.pending = kept;
        sync_dir(&self.dir);
        Ok(())
    }
}

fn sync_dir(dir: &Path) {
    // A rename is durable once its directory is synced; a failure here only weakens
    // durability against power loss, not the exactly-once contract across process crashes.
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

impl<T: Serialize + Send + 'static> Sink<T> for FileSink {
    fn writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter<T>>, String> {
        let pending_dir = self.dir.join(".pending");
        fs::create_dir_all(&pending_dir).map_err(|e| {
            format!(
                "the file sink cannot create {}: {e}; give FileSink::transactional a writable directory",
                pending_dir.display()
            )
        })?;
        Ok(Box::new(FileSinkWriter {
            dir: self.dir.clone(),
            pending_dir,
            prefix: format!("part-{}-{}", context.stage, context.instance),
            open: None,
            pending: Vec::new(),
            records: 0,
        }))
    }
}

impl<T: Serialize> SinkWriter<T> for FileSinkWriter {
    fn write(&mut self, records: Batch<T>) -> Result<(), String> {
        if records.is_empty() {
            return Ok(());
        }
        if self.open.is_none() {
            let path = self.open_path();
            let file = fs::File::create(&path)
                .map_err(|e| format!("the file sink cannot create {}: {e}", path.display()))?;
            self.open = Some(std::io::BufWriter::with_capacity(256 << 10, file));
        }
        let Some(out) = self.open.as_mut() else {
            return Err("the file sink has no open file".into());
        };
        for (_, record) in &records {
            serde_json::to_writer(&mut *out, record)
                .map_err(|e| format!("a record does not encode as JSON: {e}"))?;
            out.write_all(b"\n")
                .map_err(|e| format!("the file sink cannot write: {e}"))?;
        }
        self.records += records.len() as u64;
        Ok(())
    }

    fn pre_commit(&mut self, checkpoint: u64) -> Result<Vec<u8>, String> {
        if let Some(out) = self.open.take() {
            let file = out
                .into_inner()
                .map_err(|e| format!("the file sink cannot flush: {e}"))?;
            file.sync_all()
                .map_err(|e| format!("the file sink cannot sync its file: {e}"))?;
            let (from, to) = (self.open_path(), self.pending_path(checkpoint));
            fs::rename(&from, &to)
                .map_err(|e| format!("cannot pre-commit {}: {e}", from.display()))?;
            self.pending.push(checkpoint);
            sync_dir(&self.pending_dir);
        }
        encode(&self.pending)
    }

    fn commit(&mut self, checkpoint: u64) -> Result<(), String> {
        self.publish_up_to(checkpoint)
    }

    fn restore(&mut self, restored: Option<(u64, &[u8])>) -> Result<(), String> {
        self.open = None;
        let _ = fs::remove_file(self.open_path());
        let checkpoint = match restored {
            Some((checkpoint, state)) => {
                self.pending = if state.is_empty() {
                    Vec::new()
                } else {
                    decode(state, "a file sink")?
                };
                self.publish_up_to(checkpoint)?;
                checkpoint
            }
            None => 0,
        };
        // Files pre-committed after the restored checkpoint belong to an attempt that
        // failed: their records will be written again.
        let prefix = format!("{}-", self.prefix);
        if let Ok(entries) = fs::read_dir(&self.pending_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let Some(id) = name
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(".jsonl"))
                    .and_then(|id| id.parse::<u64>().ok())
                else {
                    continue;
                };
                if id > checkpoint {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    fn report(&self) -> SinkReport {
        SinkReport {
            records: self.records,
            latencies_ms: Vec::new(),
        }
    }
}

/// Drops records, counting them and sampling their end-to-end latency (wall-clock now
/// minus event time: meaningful for a paced source whose event time is wall-clock time).
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardSink;

/// Latency samples kept per instance.
const LATENCY_SAMPLES: usize = 20_000;

struct DiscardWriter {
    records: u64,
    latencies: Vec<f64>,
    seen_with_time: u64,
    state: u64,
}

impl<T: Send + 'static> Sink<T> for DiscardSink {
    fn writer(&self, context: &SinkContext) -> Result<Box<dyn SinkWriter<T>>, String> {
        Ok(Box::new(DiscardWriter {
            records: 0,
            latencies: Vec::new(),
            seen_with_time: 0,
            state: 0x2545_f491_4f6c_dd1d ^ context.instance as u64,
        }))
    }
}

impl<T> SinkWriter<T> for DiscardWriter {
    fn write(&mut self, records: Batch<T>) -> Result<(), String> {
        self.records += records.len() as u64;
        let now = crate::now_ms() as f64;
        for (ts, _) in &records {
            if *ts == NO_TIMESTAMP {
                continue;
            }
            let latency = now - *ts as f64;
            // A result stamped in the future is a window flushed at the end of the input
            // (its end not yet reached in wall-clock time): not a latency.
            if latency < 0.0 {
                continue;
            }
            self.seen_with_time += 1;
            // Reservoir sampling: a uniform sample of every record's latency.
            if self.latencies.len() < LATENCY_SAMPLES {
                self.latencies.push(latency);
            } else {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                let slot = self.state % self.seen_with_time;
                if (slot as usize) < LATENCY_SAMPLES {
                    self.latencies[slot as usize] = latency;
                }
            }
        }
        Ok(())
    }

    fn pre_commit(&mut self, _checkpoint: u64) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }

    fn commit(&mut self, _checkpoint: u64) -> Result<(), String> {
        Ok(())
    }

    fn restore(&mut self, _restored: Option<(u64, &[u8])>) -> Result<(), String> {
        Ok(())
    }

    fn report(&self) -> SinkReport {
        SinkReport {
            records: self.records,
            latencies_ms: self.latencies.clone(),
        }
    }
}
