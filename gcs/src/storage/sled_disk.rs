//! The production [`RaftDisk`]: sled in the replica's data directory.
//!
//! The default tree holds the hot state: `e` + big-endian index → entry; `hs`, `cs`, `id` →
//! hard state, conf state, identity; `cu` marks a replica still catching up. A batch of those is one `sled::Batch` (atomic) followed
//! by `flush` (fsync) when fsync is on. The snapshot lives in a tree of its own: sled
//! rewrites a whole tree node when it consolidates the node's updates, and a multi-megabyte
//! snapshot sharing a node with the hard state would be rewritten with every few writes.
//!
//! A snapshot is written (and flushed) before the batch that drops the log it covers. A
//! crash between the two leaves a snapshot newer than the hot state; `LogStore::open` sees
//! the hard state's commit behind the snapshot and takes the snapshot's side.

use std::path::{Path, PathBuf};

use raft::prelude::{ConfState, Entry, HardState, Snapshot};

use super::{decode_pb, encode_pb, DiskBatch, DiskState, Identity, RaftDisk};
use crate::error::{Error, Result};

const KEY_HARD_STATE: &[u8] = b"hs";
const KEY_CONF_STATE: &[u8] = b"cs";
const KEY_SNAPSHOT: &[u8] = b"snap";
const SNAPSHOT_TREE: &str = "snapshot";
const KEY_IDENTITY: &[u8] = b"id";
const KEY_CATCHING_UP: &[u8] = b"cu";
const ENTRY_PREFIX: u8 = b'e';

fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [ENTRY_PREFIX; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// sled-backed Raft storage.
pub struct SledDisk {
    db: sled::Db,
    snapshots: sled::Tree,
    path: PathBuf,
    fsync: bool,
}

impl SledDisk {
    /// Opens (creating) the database in `path`.
    pub fn open(path: &Path, fsync: bool) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::StorageWrite {
            path: path.to_path_buf(),
            reason: format!("cannot create the data dir: {e}"),
        })?;
        // sled panics on some kinds of corruption instead of returning an error; a corrupt
        // data dir must become a clear error, not a crash.
        let mut attempts = 0;
        let db = loop {
            let opened = std::panic::catch_unwind(|| sled::Config::new().path(path).open());
            match opened {
                Ok(Ok(db)) => break db,
                Ok(Err(sled::Error::Io(e))) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // The lock of a Db dropped a moment ago in this process can linger while
                    // sled's flusher winds down; another live process keeps it.
                    attempts += 1;
                    if attempts >= 40 {
                        return Err(Error::InvalidConfig {
                            field: "--data-dir",
                            reason: format!(
                                "{} is in use by another process (a second replica with the same \
                                 --data-dir?); give each replica its own directory",
                                path.display()
                            ),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Ok(Err(e)) => return Err(corrupt(path, e.to_string())),
                Err(_) => return Err(corrupt(path, "sled panicked while opening it".into())),
            }
        };
        let snapshots = db
            .open_tree(SNAPSHOT_TREE)
            .map_err(|e| corrupt(path, format!("opening the snapshot tree: {e}")))?;
        Ok(SledDisk {
            db,
            snapshots,
            path: path.to_path_buf(),
            fsync,
        })
    }

    fn write_error(&self, e: impl std::fmt::Display) -> Error {
        Error::StorageWrite {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

fn corrupt(path: &Path, reason: String) -> Error {
    Error::CorruptDataDir {
        path: path.to_path_buf(),
        reason,
    }
}

impl RaftDisk for SledDisk {
    fn load(&self) -> Result<DiskState> {
        let path = &self.path;
        let get = |key: &[u8]| {
            self.db.get(key).map_err(|e| {
                corrupt(
                    path,
                    format!("reading {}: {e}", String::from_utf8_lossy(key)),
                )
            })
        };
        let mut state = DiskState::default();
        if let Some(bytes) = get(KEY_IDENTITY)? {
            let text = String::from_utf8_lossy(&bytes);
            let (id, name) = text
                .split_once('/')
                .ok_or_else(|| corrupt(path, format!("bad identity record '{text}'")))?;
            let replica_id = id
                .parse()
                .map_err(|_| corrupt(path, format!("bad identity record '{text}'")))?;
            state.identity = Some(Identity {
                replica_id,
                cluster_name: name.to_string(),
            });
        }
        if let Some(bytes) = get(KEY_HARD_STATE)? {
            state.hard_state =
                decode_pb::<HardState>(&bytes, "hard state").map_err(|r| corrupt(path, r))?;
        }
        if let Some(bytes) = get(KEY_CONF_STATE)? {
            state.conf_state =
                decode_pb::<ConfState>(&bytes, "conf state").map_err(|r| corrupt(path, r))?;
        }
        state.catching_up = get(KEY_CATCHING_UP)?.is_some();
        let snapshot = self
            .snapshots
            .get(KEY_SNAPSHOT)
            .map_err(|e| corrupt(path, format!("reading the snapshot: {e}")))?;
        if let Some(bytes) = snapshot {
            state.snapshot =
                decode_pb::<Snapshot>(&bytes, "snapshot").map_err(|r| corrupt(path, r))?;
        }
        for item in self.db.scan_prefix([ENTRY_PREFIX]) {
            let (_, value) = item.map_err(|e| corrupt(path, format!("reading the log: {e}")))?;
            state
                .entries
                .push(decode_pb::<Entry>(&value, "log entry").map_err(|r| corrupt(path, r))?);
        }
        Ok(state)
    }

    fn write(&mut self, batch: DiskBatch) -> Result<()> {
        if let Some(snapshot) = &batch.snapshot {
            self.snapshots
                .insert(KEY_SNAPSHOT, encode_pb(snapshot)?)
                .map_err(|e| self.write_error(e))?;
            self.snapshots.flush().map_err(|e| self.write_error(e))?;
        }
        let mut write = sled::Batch::default();
        if let Some(identity) = &batch.identity {
            write.insert(
                KEY_IDENTITY,
                format!("{}/{}", identity.replica_id, identity.cluster_name).into_bytes(),
            );
        }
        for index in &batch.remove_entries {
            write.remove(&entry_key(*index));
        }
        for entry in &batch.entries {
            write.insert(&entry_key(entry.index), encode_pb(entry)?);
        }
        if let Some(hard_state) = &batch.hard_state {
            write.insert(KEY_HARD_STATE, encode_pb(hard_state)?);
        }
        if let Some(conf_state) = &batch.conf_state {
            write.insert(KEY_CONF_STATE, encode_pb(conf_state)?);
        }
        match batch.catching_up {
            Some(true) => write.insert(KEY_CATCHING_UP, b"1".to_vec()),
            Some(false) => write.remove(KEY_CATCHING_UP),
            None => {}
        }
        self.db
            .apply_batch(write)
            .map_err(|e| self.write_error(e))?;
        if self.fsync {
            self.db.flush().map_err(|e| self.write_error(e))?;
        }
        Ok(())
    }
}
