//! Raft's durable state: the log, hard state, conf state and the latest snapshot.
//!
//! [`LogStore`] implements raft-rs's [`raft::Storage`] over an in-memory copy of the
//! state, and writes every change through a [`RaftDisk`] before the driver lets Raft act on
//! it. Two disks: [`SledDisk`] (production: sled on a data directory, fsynced) and
//! [`MemDisk`] (simulation: survives a simulated crash because the test holds it).

mod mem_disk;
mod sled_disk;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

pub use mem_disk::MemDisk;
pub use sled_disk::SledDisk;

use crate::error::{Error, Result};

/// Who a data directory belongs to; checked at every start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The replica's Raft id.
    pub replica_id: u64,
    /// The cluster's name.
    pub cluster_name: String,
}

/// Everything a disk holds, as loaded at start.
#[derive(Clone, Debug, Default)]
pub struct DiskState {
    /// `None` for a fresh disk.
    pub identity: Option<Identity>,
    /// Raft's term, vote and commit.
    pub hard_state: HardState,
    /// The membership as of the last applied configuration change.
    pub conf_state: ConfState,
    /// The latest snapshot (metadata and state-machine data).
    pub snapshot: Snapshot,
    /// Log entries after the snapshot, in index order.
    pub entries: Vec<Entry>,
    /// The replica started on an empty disk into a cluster that already existed and has not
    /// yet caught up with a leader: it must not vote or campaign (it may have acknowledged
    /// entries before its disk was lost that it no longer holds).
    pub catching_up: bool,
}

/// One atomic, durable change to a disk.
#[derive(Default, Debug)]
pub struct DiskBatch {
    /// Record who the disk belongs to.
    pub identity: Option<Identity>,
    /// Remove these entries (overwritten by a new leader, or compacted).
    pub remove_entries: Vec<u64>,
    /// Add (or overwrite) these entries.
    pub entries: Vec<Entry>,
    /// Replace the hard state.
    pub hard_state: Option<HardState>,
    /// Replace the conf state.
    pub conf_state: Option<ConfState>,
    /// Replace the snapshot.
    pub snapshot: Option<Snapshot>,
    /// Set or clear the catching-up mark (see [`DiskState::catching_up`]).
    pub catching_up: Option<bool>,
}

/// Durable storage for Raft state. `write` must be atomic and, when the disk was opened
/// with fsync, durable before it returns.
pub trait RaftDisk: Send + 'static {
    /// Reads everything back (at start).
    fn load(&self) -> Result<DiskState>;
    /// Applies one batch atomically.
    fn write(&mut self, batch: DiskBatch) -> Result<()>;
}

pub(crate) fn encode_pb<M: protobuf::Message>(message: &M) -> Result<Vec<u8>> {
    message.write_to_bytes().map_err(|e| Error::StorageWrite {
        path: Default::default(),
        reason: format!("encoding raft state: {e}"),
    })
}

pub(crate) fn decode_pb<M: protobuf::Message>(bytes: &[u8], what: &str) -> Result<M, String> {
    M::parse_from_bytes(bytes).map_err(|e| format!("undecodable {what}: {e}"))
}

/// raft-rs storage over an in-memory copy, written through to a [`RaftDisk`].
pub struct LogStore {
    disk: Box<dyn RaftDisk>,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// entries[i].index == snapshot index + 1 + i
    entries: Vec<Entry>,
    catching_up: bool,
}

impl LogStore {
    /// Opens `disk`, checking it belongs to `identity` (recording it on a fresh disk).
    pub fn open(mut disk: Box<dyn RaftDisk>, identity: &Identity) -> Result<(Self, bool)> {
        let state = disk.load()?;
        let fresh = state.identity.is_none();
        match &state.identity {
            Some(found) if found != identity => {
                return Err(Error::DataDirMismatch {
                    path: Default::default(),
                    found_id: found.replica_id,
                    found_cluster: found.cluster_name.clone(),
                    expected_id: identity.replica_id,
                    expected_cluster: identity.cluster_name.clone(),
                })
            }
            Some(_) => {}
            None => disk.write(DiskBatch {
                identity: Some(identity.clone()),
                ..DiskBatch::default()
            })?,
        }
        let mut hard_state = state.hard_state;
        let mut conf_state = state.conf_state;
        let mut entries = state.entries;
        let snapshot_meta = state.snapshot.get_metadata();
        if hard_state.commit < snapshot_meta.index {
            // The snapshot was written but the write that drops the log it covers was not
            // (a crash in between): the snapshot is the newer truth.
            hard_state.commit = snapshot_meta.index;
            hard_state.term = hard_state.term.max(snapshot_meta.term);
            conf_state = snapshot_meta.get_conf_state().clone();
        }
        entries.retain(|e| e.index > snapshot_meta.index);
        let store = LogStore {
            disk,
            hard_state,
            conf_state,
            snapshot: state.snapshot,
            entries,
            catching_up: state.catching_up,
        };
        store.check_contiguous()?;
        Ok((store, fresh))
    }

    fn check_contiguous(&self) -> Result<()> {
        for (expected, entry) in (self.snapshot_index() + 1..).zip(self.entries.iter()) {
            if entry.index != expected {
                return Err(Error::CorruptDataDir {
                    path: Default::default(),
                    reason: format!(
                        "raft log has a gap: expected entry {expected}, found {}",
                        entry.index
                    ),
                });
            }
        }
        Ok(())
    }

    /// Writes the initial membership as a snapshot at index 1, term 1 (so that a replica
    /// added later always starts from a snapshot, never from an unknown membership).
    pub fn bootstrap(&mut self, conf_state: ConfState, data: Vec<u8>) -> Result<()> {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 1;
        snapshot.mut_metadata().term = 1;
        snapshot.mut_metadata().set_conf_state(conf_state);
        snapshot.data = data.into();
        let hard_state = HardState {
            term: 1,
            commit: 1,
            ..HardState::default()
        };
        self.apply_snapshot(snapshot)?;
        self.set_hard_state(hard_state)
    }

    /// Whether this store holds any state (a bootstrapped or joined replica).
    pub fn is_initialized(&self) -> bool {
        self.snapshot_index() > 0 || !self.entries.is_empty() || !self.conf_state.voters.is_empty()
    }

    /// Whether the replica is still catching up after starting on an empty disk (durable:
    /// a crash while catching up does not make it a full voter again).
    pub fn is_catching_up(&self) -> bool {
        self.catching_up
    }

    /// Marks (durably) that the replica is catching up, or that it has caught up.
    pub fn set_catching_up(&mut self, catching_up: bool) -> Result<()> {
        self.disk.write(DiskBatch {
            catching_up: Some(catching_up),
            ..DiskBatch::default()
        })?;
        self.catching_up = catching_up;
        Ok(())
    }

    /// The index of the latest snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// The latest snapshot.
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The last log index (the snapshot's when the log is empty).
    pub fn last_log_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    /// The current conf state.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Appends entries from a Ready (truncating any conflicting suffix) and the hard state,
    /// in one durable write.
    pub fn persist(&mut self, entries: Vec<Entry>, hard_state: Option<HardState>) -> Result<()> {
        let mut batch = DiskBatch {
            hard_state: hard_state.clone(),
            ..DiskBatch::default()
        };
        let mut keep = self.entries.len();
        if let Some(first) = entries.first() {
            if first.index <= self.snapshot_index() {
                return Err(Error::StorageWrite {
                    path: Default::default(),
                    reason: format!(
                        "raft asked to overwrite compacted entry {} (snapshot at {})",
                        first.index,
                        self.snapshot_index()
                    ),
                });
            }
            keep = (first.index - self.snapshot_index() - 1) as usize;
            if keep > self.entries.len() {
                return Err(Error::StorageWrite {
                    path: Default::default(),
                    reason: format!(
                        "raft log would have a gap: last {}, appending {}",
                        self.last_log_index(),
                        first.index
                    ),
                });
            }
            batch.remove_entries = self.entries[keep..].iter().map(|e| e.index).collect();
            batch.entries = entries.clone();
        }
        self.disk.write(batch)?;
        self.entries.truncate(keep);
        self.entries.extend(entries);
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state;
        }
        Ok(())
    }

    /// Persists a new hard state.
    pub fn set_hard_state(&mut self, hard_state: HardState) -> Result<()> {
        self.persist(Vec::new(), Some(hard_state))
    }

    /// Notes the commit index (from a LightReady). It reaches disk with the next write: a
    /// commit index read back stale after a crash only means re-applying entries into the
    /// state machine rebuilt from the snapshot, which is what a restart does anyway.
    pub fn note_commit(&mut self, commit: u64) {
        self.hard_state.commit = self.hard_state.commit.max(commit);
    }

    /// Persists a conf state after a configuration change was applied.
    pub fn set_conf_state(&mut self, conf_state: ConfState) -> Result<()> {
        self.disk.write(DiskBatch {
            conf_state: Some(conf_state.clone()),
            ..DiskBatch::default()
        })?;
        self.conf_state = conf_state;
        Ok(())
    }

    /// Replaces everything with a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        let meta = snapshot.get_metadata().clone();
        let mut hard_state = self.hard_state.clone();
        hard_state.term = hard_state.term.max(meta.term);
        hard_state.commit = meta.index;
        self.disk.write(DiskBatch {
            remove_entries: self.entries.iter().map(|e| e.index).collect(),
            hard_state: Some(hard_state.clone()),
            conf_state: Some(meta.get_conf_state().clone()),
            snapshot: Some(snapshot.clone()),
            ..DiskBatch::default()
        })?;
        self.entries.clear();
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state = hard_state;
        self.snapshot = snapshot;
        Ok(())
    }

    /// Records a snapshot of the state machine taken at `index` (applied locally) and drops
    /// the log up to it.
    pub fn compact(&mut self, index: u64, conf_state: ConfState, data: Vec<u8>) -> Result<()> {
        if index <= self.snapshot_index() || index > self.last_log_index() {
            return Ok(());
        }
        let term = raft::Storage::term(self, index)?;
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = index;
        snapshot.mut_metadata().term = term;
        snapshot.mut_metadata().set_conf_state(conf_state);
        snapshot.data = data.into();
        let drop = (index - self.snapshot_index()) as usize;
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = hard_state.commit.max(index);
        self.disk.write(DiskBatch {
            remove_entries: self.entries[..drop].iter().map(|e| e.index).collect(),
            snapshot: Some(snapshot.clone()),
            hard_state: Some(hard_state.clone()),
            ..DiskBatch::default()
        })?;
        self.hard_state = hard_state;
        self.entries.drain(..drop);
        self.snapshot = snapshot;
        Ok(())
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.snapshot_index() + 1;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_log_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - first) as usize;
        let hi = (high - first) as usize;
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut size = 0u64;
        let mut out = Vec::with_capacity(hi - lo);
        for entry in &self.entries[lo..hi] {
            size += u64::from(entry.compute_size());
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snapshot_index = self.snapshot_index();
        if idx == snapshot_index {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((idx - snapshot_index - 1) as usize) {
            Some(entry) => Ok(entry.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_log_index())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The stored snapshot always covers everything compacted away, which is what a
        // lagging follower needs; it then catches up from the log.
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Entry::default()
        }
    }

    fn identity() -> Identity {
        Identity {
            replica_id: 1,
            cluster_name: "t".into(),
        }
    }

    fn exercise(disk: Box<dyn RaftDisk>, reopen: impl Fn() -> Box<dyn RaftDisk>) {
        let (mut store, fresh) = LogStore::open(disk, &identity()).expect("open");
        assert!(fresh);
        assert!(!store.is_catching_up());
        store.set_catching_up(true).expect("mark");
        store
            .bootstrap(ConfState::from((vec![1, 2, 3], vec![])), b"init".to_vec())
            .expect("bootstrap");
        store
            .persist((2..=6).map(|i| entry(i, 1)).collect(), None)
            .expect("append");
        // A new leader overwrites the suffix from 5.
        store
            .persist(vec![entry(5, 2), entry(6, 2), entry(7, 2)], None)
            .expect("overwrite");
        assert_eq!(store.term(6).expect("term"), 2);
        store
            .compact(4, store.conf_state().clone(), b"s4".to_vec())
            .expect("compact");
        assert_eq!(store.first_index().expect("first"), 5);
        assert!(matches!(
            store.entries(3, 6, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        drop(store);

        let (mut store, fresh) = LogStore::open(reopen(), &identity()).expect("reopen");
        assert!(!fresh);
        assert!(
            store.is_catching_up(),
            "the catching-up mark survives a restart"
        );
        store.set_catching_up(false).expect("clear");
        assert_eq!(store.snapshot_index(), 4);
        assert_eq!(store.latest_snapshot().data.as_ref(), b"s4");
        let entries = store
            .entries(5, 8, None, GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(
            entries
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<Vec<_>>(),
            vec![(5, 2), (6, 2), (7, 2)]
        );
        assert_eq!(store.conf_state().voters, vec![1, 2, 3]);
        drop(store);
        let (store, _) = LogStore::open(reopen(), &identity()).expect("reopen");
        assert!(!store.is_catching_up(), "a cleared mark stays cleared");

        let other = Identity {
            replica_id: 2,
            cluster_name: "t".into(),
        };
        drop(store);
        let err = LogStore::open(reopen(), &other).err().expect("mismatch");
        assert!(err.to_string().contains("replica 1"), "{err}");
    }

    #[test]
    fn mem_disk_round_trip() {
        let disk = MemDisk::default();
        let again = disk.clone();
        exercise(Box::new(disk), move || Box::new(again.clone()));
    }

    #[test]
    fn sled_disk_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gcs");
        let first = SledDisk::open(&path, true).expect("open");
        let reopen_path = path.clone();
        exercise(Box::new(first), move || {
            Box::new(SledDisk::open(&reopen_path, true).expect("reopen"))
        });
    }

    proptest::proptest! {
        /// The records a data dir holds, damaged: each decodes or fails with a reason.
        #[test]
        fn damaged_raft_records_decode_or_fail_cleanly(
            bytes in fleet_proto::fuzz::wire_input(vec![
                encode_pb(&entry(5, 2)).expect("entry"),
                encode_pb(&HardState { term: 3, vote: 1, commit: 9, ..HardState::default() })
                    .expect("hard state"),
                encode_pb(&ConfState::from((vec![1, 2, 3], vec![4]))).expect("conf state"),
            ])
        ) {
            let _ = decode_pb::<Entry>(&bytes, "log entry");
            let _ = decode_pb::<HardState>(&bytes, "hard state");
            let _ = decode_pb::<ConfState>(&bytes, "conf state");
            let _ = decode_pb::<Snapshot>(&bytes, "snapshot");
        }
    }
}
