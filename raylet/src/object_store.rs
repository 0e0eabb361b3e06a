//! The node's shared-memory object store: immutable objects kept as files in a shared-memory
//! directory (a tmpfs such as `/dev/shm`), memory-mapped read-only by the raylet and by the
//! worker processes of the same node, and spilled to disk, least recently used first, when
//! they do not fit.
//!
//! - [`id`]: [`ObjectId`], the 20-byte name of an object.
//! - [`error`]: [`Error`] and [`Result`].
//! - `ledger`: the bookkeeping without I/O (where each object is, pins, the LRU order, how
//!   many bytes are spoken for), which decides; this module performs the file operations.
//!
//! # Contract
//!
//! - **Files.** Object `id` lives at `<shm_dir>/<id as hex>` ([`object_path`]). It is written
//!   under a temporary name and renamed, so a file with an object's name is always complete;
//!   a sealed file is never modified in place, only removed (spill, delete, destroy). That is
//!   what makes sharing the pages with [`Mmap`] sound.
//! - **Capacity.** `capacity_bytes` bounds the object bytes in `shm_dir`, including room
//!   reserved for puts and restores in progress and deleted objects that readers still pin.
//!   The filesystem under `shm_dir` must be at least that large.
//! - **Pins.** An [`ObjectBuffer`] pins its object: a pinned object is never spilled, and a
//!   delete of it takes effect when the last pin drops.
//! - **Spilling.** When a put (or the restore of a spilled object) does not fit, unpinned
//!   objects are moved to `<spill_dir>/<id as hex>`, least recently used (put or got) first,
//!   until it fits. Only as much is spilled as is needed, and nothing is spilled when even
//!   spilling every unpinned object would not make room.
//! - **Backpressure.** When the pinned objects alone leave no room, [`ObjectStore::put`] and
//!   [`ObjectStore::get`] wait until a pin drops, an object is deleted or a spill finishes,
//!   for at most `full_timeout`, then fail with [`Error::StoreFull`].
//! - **Restores** are transparent: a get of a spilled object copies it back first. This is why
//!   `get` is async: making room for the restore may mean spilling or waiting like a put.
//! - **Workers.** [`map_object`] lets another process on the node map an object by id. It does
//!   not pin: the raylet must hold a pin on the worker's behalf for as long as the object must
//!   stay in shared memory. A mapping stays valid and unchanged even if the store then spills
//!   or deletes the object (removing a file does not touch existing mappings); only the
//!   memory is not returned to the system until every mapping is gone.
//! - **Shutdown.** Handles are cheap clones of one store; dropping them removes no files,
//!   because workers may still map them. [`ObjectStore::destroy`] removes the store's files.
//!
//! # Locking and I/O
//!
//! One `std::sync::Mutex` guards the ledger and is never held across an `.await`. Files are
//! removed while holding it, so a removal cannot hit a file of the same name created after
//! the decision; objects are written and copied without it. A put writes its own bytes on the
//! calling thread (into tmpfs that is a memory copy, like producing the bytes); spills and
//! restores, which touch disk, run on tokio's blocking pool and settle the ledger themselves,
//! so they complete consistently even if the put or get that started them is cancelled.

pub mod error;
pub mod id;
mod ledger;

#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use memmap2::Mmap;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use self::error::{Error, Result};
pub use self::id::{ObjectId, OBJECT_ID_LEN};
use self::ledger::{FileOp, GetStep, Ledger, PutStep, Victim};

/// Prefix of the store's temporary files, hidden from id-based lookups by the leading dot.
const TEMP_PREFIX: &str = ".fleet-tmp-";

/// Where and how big the object store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectStoreConfig {
    /// Directory on a shared-memory filesystem (tmpfs) holding the objects in memory.
    pub shm_dir: PathBuf,
    /// Directory on disk receiving spilled objects; must differ from `shm_dir`.
    pub spill_dir: PathBuf,
    /// Most object bytes kept in `shm_dir` at once.
    pub capacity_bytes: u64,
    /// How long a put or get waits for pinned objects to be released when nothing can be
    /// spilled, before failing with [`Error::StoreFull`].
    pub full_timeout: Duration,
}

impl ObjectStoreConfig {
    /// Checks what can be checked without touching the filesystem.
    pub fn validate(&self) -> Result<()> {
        if self.capacity_bytes == 0 {
            return Err(Error::InvalidConfig {
                field: "capacity_bytes",
                reason: "is 0; give the object store some bytes of shared memory".into(),
            });
        }
        for (field, dir) in [("shm_dir", &self.shm_dir), ("spill_dir", &self.spill_dir)] {
            if dir.as_os_str().is_empty() {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "is empty; set it to a directory".into(),
                });
            }
        }
        if self.shm_dir == self.spill_dir {
            return Err(same_dirs(&self.shm_dir));
        }
        Ok(())
    }
}

/// The error for a spill directory that is the shared-memory directory.
fn same_dirs(dir: &Path) -> Error {
    Error::InvalidConfig {
        field: "spill_dir",
        reason: format!(
            "is the same directory as shm_dir ({}); spilled files would overwrite objects \
             in memory, so point spill_dir at a directory on disk",
            dir.display()
        ),
    }
}

/// The store's numbers at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes of `shm_dir` spoken for: objects in memory, room reserved for puts and restores
    /// in progress, and deleted objects still pinned.
    pub used_bytes: u64,
    /// The configured capacity.
    pub capacity: u64,
    /// Objects a get would find, in memory or spilled.
    pub num_objects: u64,
    /// How many of those are spilled (including any being restored).
    pub num_spilled: u64,
    /// Their bytes.
    pub spilled_bytes: u64,
    /// Bytes of objects pinned by live [`ObjectBuffer`]s.
    pub pinned_bytes: u64,
}

/// The node's object store; clones share one store.
#[derive(Clone)]
pub struct ObjectStore {
    inner: Arc<Inner>,
}

/// What the handles share.
struct Inner {
    config: ObjectStoreConfig,
    state: Mutex<State>,
    /// Woken (all waiters) whenever room may have appeared or an object changed state:
    /// a pin dropped, a delete, a put sealed or failed, a spill or restore finished.
    changed: Notify,
    /// Makes temporary file names unique within this process.
    temp_seq: AtomicU64,
}

/// The state behind the lock.
struct State {
    ledger: Ledger,
    destroyed: bool,
}

impl State {
    /// Fails once the store has been destroyed.
    fn check_live(&self) -> Result<()> {
        if self.destroyed {
            Err(Error::Destroyed)
        } else {
            Ok(())
        }
    }
}

impl ObjectStore {
    /// Opens a store, creating its directories and checking that files can be created in
    /// them.
    ///
    /// Files left in the directories by an earlier store are neither adopted nor removed
    /// (a previous raylet's workers may still map them); [`destroy`](Self::destroy) removes
    /// them.
    pub fn open(config: ObjectStoreConfig) -> Result<Self> {
        config.validate()?;
        let capacity = config.capacity_bytes;
        let inner = Inner {
            config,
            state: Mutex::new(State {
                ledger: Ledger::new(capacity),
                destroyed: false,
            }),
            changed: Notify::new(),
            temp_seq: AtomicU64::new(0),
        };
        inner.prepare_dir("shm_dir", &inner.config.shm_dir)?;
        inner.prepare_dir("spill_dir", &inner.config.spill_dir)?;
        // The same directory can hide behind two spellings (symlinks, `..`).
        if let (Ok(shm), Ok(spill)) = (
            fs::canonicalize(&inner.config.shm_dir),
            fs::canonicalize(&inner.config.spill_dir),
        ) {
            if shm == spill {
                return Err(same_dirs(&shm));
            }
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &ObjectStoreConfig {
        &self.inner.config
    }

    /// Stores `data` as object `id`.
    ///
    /// Spills least-recently-used unpinned objects if needed, and waits up to `full_timeout`
    /// when pinned objects leave no room. Putting an id that is already stored with the same
    /// size succeeds without writing (ids name immutable values); with another size it is
    /// [`Error::SizeMismatch`]. Objects larger than the capacity fail at once with
    /// [`Error::ObjectTooLarge`].
    pub async fn put(&self, id: ObjectId, data: &[u8]) -> Result<()> {
        self.put_parts(id, &[data]).await
    }

    /// Like [`ObjectStore::put`], for an object made of consecutive parts (a header and a
    /// body, say), written without first joining them in memory.
    pub async fn put_parts(&self, id: ObjectId, parts: &[&[u8]]) -> Result<()> {
        let size = parts.iter().map(|p| p.len() as u64).sum::<u64>();
        let deadline = Instant::now() + self.inner.config.full_timeout;
        loop {
            // Registered before looking, so a change made after the look still wakes us.
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = {
                let mut state = self.inner.lock();
                state.check_live()?;
                state.ledger.begin_put(id, size)?
            };
            match step {
                PutStep::Present => return Ok(()),
                PutStep::Write => return self.write_object(id, parts),
                PutStep::Spill(victims) => self.spill(victims).await?,
                PutStep::Wait => notified.await,
                PutStep::Full { unspillable } => {
                    self.wait_for_room(notified, deadline, id, size, unspillable)
                        .await?
                }
            }
        }
    }

    /// A read-only, zero-copy view of object `id`, or `None` when the store does not have it
    /// (never put, deleted, or still being written).
    ///
    /// A spilled object is first copied back into shared memory, spilling or waiting for room
    /// like a put does ([`Error::StoreFull`] after `full_timeout`). The object counts as
    /// recently used, and stays pinned while the buffer lives.
    pub async fn get(&self, id: ObjectId) -> Result<Option<ObjectBuffer>> {
        let deadline = Instant::now() + self.inner.config.full_timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = {
                let mut state = self.inner.lock();
                state.check_live()?;
                state.ledger.begin_get(id)
            };
            match step {
                GetStep::Missing => return Ok(None),
                GetStep::Map { size } => return self.map_pinned(id, size).map(Some),
                GetStep::Restore { size } => self.restore(id, size).await?,
                GetStep::Spill { victims, size } => {
                    // Make sure there is something to restore before evicting others for it.
                    let spilled = object_path(&self.inner.config.spill_dir, id);
                    if let Err(error) = check_spilled_file(id, &spilled, size) {
                        // Dropped unrun, the spills are settled as not done.
                        drop(self.pending_spills(victims));
                        return Err(error);
                    }
                    self.spill(victims).await?
                }
                GetStep::Wait => notified.await,
                GetStep::Full { size, unspillable } => {
                    self.wait_for_room(notified, deadline, id, size, unspillable)
                        .await?
                }
            }
        }
    }

    /// Whether a get of `id` would find the object (in memory or spilled).
    pub fn contains(&self, id: ObjectId) -> bool {
        let state = self.inner.lock();
        !state.destroyed && state.ledger.contains(id)
    }

    /// Deletes object `id`; `false` when there was no such object.
    ///
    /// The object disappears for gets at once. Its file is removed now, or, while readers pin
    /// it, when the last [`ObjectBuffer`] drops. Waiting puts are woken.
    pub fn delete(&self, id: ObjectId) -> Result<bool> {
        let mut state = self.inner.lock();
        if state.destroyed {
            return Ok(false);
        }
        let Some(ops) = state.ledger.delete(id) else {
            return Ok(false);
        };
        let removed = self.inner.remove_files(&ops);
        drop(state);
        self.inner.changed.notify_waiters();
        removed.map(|()| true)
    }

    /// The store's numbers now.
    pub fn stats(&self) -> StoreStats {
        self.inner.lock().ledger.stats()
    }

    /// Removes the store's files from `shm_dir` and `spill_dir`, and the directories when
    /// nothing else is left in them; every handle fails with [`Error::Destroyed`] afterwards.
    ///
    /// Only files named like objects or like the store's temporary files are removed, so
    /// a directory shared with other programs (say `/dev/shm` itself) keeps their files.
    /// Buffers and worker mappings already taken stay readable. Returns the first removal
    /// that failed, after trying them all.
    pub fn destroy(self) -> Result<()> {
        let mut state = self.inner.lock();
        state.destroyed = true;
        state.ledger.drain();
        let shm = remove_store_files(&self.inner.config.shm_dir);
        let spill = remove_store_files(&self.inner.config.spill_dir);
        drop(state);
        self.inner.changed.notify_waiters();
        shm.and(spill)
    }

    /// Writes the object whose room [`PutStep::Write`] reserved, then seals it.
    fn write_object(&self, id: ObjectId, parts: &[&[u8]]) -> Result<()> {
        let path = object_path(&self.inner.config.shm_dir, id);
        let temp = self.inner.temp_path(&self.inner.config.shm_dir, id);
        let written = write_new_file(&temp, parts).and_then(|()| fs::rename(&temp, &path));
        if written.is_err() {
            remove_quietly(&temp);
        }
        let mut state = self.inner.lock();
        state.ledger.finish_put(id, written.is_ok());
        let destroyed = state.destroyed;
        if destroyed && written.is_ok() {
            // `destroy` ran while we wrote; it could not have seen this file.
            remove_quietly(&path);
        }
        drop(state);
        self.inner.changed.notify_waiters();
        if destroyed {
            return Err(Error::Destroyed);
        }
        written.map_err(|source| Error::Write { id, path, source })?;
        tracing::debug!(%id, size = parts.iter().map(|p| p.len()).sum::<usize>(), "object stored");
        Ok(())
    }

    /// Maps object `id`, which [`GetStep::Map`] has just pinned for us.
    fn map_pinned(&self, id: ObjectId, size: u64) -> Result<ObjectBuffer> {
        // Built first so that every error below also releases the pin.
        let pin = PinGuard {
            inner: Arc::clone(&self.inner),
            id,
        };
        let path = object_path(&self.inner.config.shm_dir, id);
        let map = map_file(id, &path)?;
        if map.len() as u64 != size {
            return Err(Error::Corrupt {
                id,
                path,
                expected: size,
                found: map.len() as u64,
            });
        }
        Ok(ObjectBuffer { map, pin })
    }

    /// Spills `victims` on the blocking pool and waits for the outcome.
    async fn spill(&self, victims: Vec<Victim>) -> Result<()> {
        let Some(first) = victims.first().map(|victim| victim.id) else {
            return Ok(());
        };
        let pending = self.pending_spills(victims);
        tokio::task::spawn_blocking(move || pending.run())
            .await
            .map_err(|source| Error::Background {
                op: "spill",
                id: first,
                source,
            })?
    }

    /// Takes charge of settling `victims` in the ledger.
    fn pending_spills(&self, victims: Vec<Victim>) -> PendingSpills {
        PendingSpills {
            inner: Arc::clone(&self.inner),
            victims,
        }
    }

    /// Copies spilled object `id` back into shared memory on the blocking pool.
    async fn restore(&self, id: ObjectId, size: u64) -> Result<()> {
        let pending = PendingRestore {
            inner: Arc::clone(&self.inner),
            id,
            size,
            settled: false,
        };
        tokio::task::spawn_blocking(move || pending.run())
            .await
            .map_err(|source| Error::Background {
                op: "restore",
                id,
                source,
            })?
    }

    /// Waits for something to change, failing with [`Error::StoreFull`] at `deadline`.
    async fn wait_for_room(
        &self,
        notified: Pin<&mut Notified<'_>>,
        deadline: Instant,
        id: ObjectId,
        needed: u64,
        unspillable: u64,
    ) -> Result<()> {
        match tokio::time::timeout_at(deadline, notified).await {
            Ok(()) => Ok(()),
            Err(_elapsed) => {
                tracing::warn!(%id, needed, unspillable, "object store full");
                Err(Error::StoreFull {
                    id,
                    needed,
                    capacity: self.inner.config.capacity_bytes,
                    pinned: unspillable,
                    waited: self.inner.config.full_timeout,
                })
            }
        }
    }
}

impl fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStore")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// The ledger, even if a thread panicked while holding it: every ledger method leaves it
    /// consistent before anything that could panic, and refusing all further work would turn
    /// one bug into a dead node.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates `dir` if needed and proves that files can be created in it.
    fn prepare_dir(&self, field: &'static str, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            field,
            path: dir.to_path_buf(),
            source,
        })?;
        let probe = dir.join(format!(
            "{TEMP_PREFIX}probe-{}-{}",
            std::process::id(),
            self.temp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let not_writable = |source| Error::DirNotWritable {
            field,
            path: dir.to_path_buf(),
            source,
        };
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(not_writable)?;
        fs::remove_file(&probe).map_err(not_writable)
    }

    /// A fresh temporary name in `dir` for a file that will become object `id`'s.
    fn temp_path(&self, dir: &Path, id: ObjectId) -> PathBuf {
        dir.join(format!(
            "{TEMP_PREFIX}{id}-{}-{}",
            std::process::id(),
            self.temp_seq.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Removes the files the ledger said to remove; call with the lock held. Tries them all
    /// and returns the first failure (a file already gone is not one).
    fn remove_files(&self, ops: &[FileOp]) -> Result<()> {
        let mut result = Ok(());
        for op in ops {
            let path = match *op {
                FileOp::RemoveShm(id) => object_path(&self.config.shm_dir, id),
                FileOp::RemoveSpill(id) => object_path(&self.config.spill_dir, id),
            };
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    tracing::warn!(path = %path.display(), %source, "cannot remove object file");
                    if result.is_ok() {
                        result = Err(Error::Remove { path, source });
                    }
                }
            }
        }
        result
    }

    /// Spills one object and settles it in the ledger, whatever happened.
    fn spill_one(&self, victim: Victim) -> Result<()> {
        let id = victim.id;
        let from = object_path(&self.config.shm_dir, id);
        let to = object_path(&self.config.spill_dir, id);
        let temp = self.temp_path(&self.config.spill_dir, id);
        let copied = copy_file(&from, &temp, &to, victim.size);
        let mut state = self.lock();
        let ops = state.ledger.finish_spill(id, copied.is_ok());
        // The object itself is safe on disk; a shared-memory file we fail to remove only
        // costs memory, so it is logged (by `remove_files`) rather than failing the put.
        let _ = self.remove_files(&ops);
        drop(state);
        self.changed.notify_waiters();
        match copied {
            Ok(()) => {
                tracing::debug!(%id, size = victim.size, "object spilled");
                Ok(())
            }
            Err(source) => {
                tracing::warn!(%id, %source, "cannot spill object");
                Err(Error::Spill {
                    id,
                    from,
                    to,
                    source,
                })
            }
        }
    }

    /// Copies spilled object `id` back into shared memory and settles it in the ledger.
    fn restore_one(&self, id: ObjectId, size: u64) -> Result<()> {
        let from = object_path(&self.config.spill_dir, id);
        let to = object_path(&self.config.shm_dir, id);
        let temp = self.temp_path(&self.config.shm_dir, id);
        let copied = restore_file(id, &from, &temp, &to, size);
        self.settle_restore(id, copied.is_ok());
        match &copied {
            Ok(()) => tracing::debug!(%id, size, "object restored"),
            Err(error) => tracing::warn!(%id, %error, "cannot restore object"),
        }
        copied
    }

    /// Records the end of a restore in the ledger and wakes waiters.
    fn settle_restore(&self, id: ObjectId, restored: bool) {
        let mut state = self.lock();
        let ops = state.ledger.finish_restore(id, restored);
        // Leftover files only cost space; `remove_files` logs them.
        let _ = self.remove_files(&ops);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Records the end of a spill that never ran, and wakes waiters.
    fn settle_failed_spill(&self, id: ObjectId) {
        let mut state = self.lock();
        let ops = state.ledger.finish_spill(id, false);
        let _ = self.remove_files(&ops);
        drop(state);
        self.changed.notify_waiters();
    }
}

/// Spills that the ledger still waits to hear about. Dropping it (a panic, or a blocking
/// task that the runtime discarded before it ran) settles the rest as failed copies, so no
/// object is left marked as being spilled, which would stall every later put.
struct PendingSpills {
    inner: Arc<Inner>,
    victims: Vec<Victim>,
}

impl PendingSpills {
    /// Spills every victim; the first error, after trying them all.
    fn run(mut self) -> Result<()> {
        let mut result = Ok(());
        while let Some(&victim) = self.victims.last() {
            let spilled = self.inner.spill_one(victim);
            self.victims.pop();
            if result.is_ok() {
                result = spilled;
            }
        }
        result
    }
}

impl Drop for PendingSpills {
    fn drop(&mut self) {
        for victim in self.victims.drain(..) {
            self.inner.settle_failed_spill(victim.id);
        }
    }
}

/// A restore that the ledger still waits to hear about; settles it as failed if dropped
/// before it ran (see [`PendingSpills`]).
struct PendingRestore {
    inner: Arc<Inner>,
    id: ObjectId,
    size: u64,
    settled: bool,
}

impl PendingRestore {
    fn run(mut self) -> Result<()> {
        let restored = self.inner.restore_one(self.id, self.size);
        self.settled = true;
        restored
    }
}

impl Drop for PendingRestore {
    fn drop(&mut self) {
        if !self.settled {
            self.inner.settle_restore(self.id, false);
        }
    }
}

/// A read-only, zero-copy view of one object, which stays pinned while the buffer lives.
///
/// Dereferences to the object's bytes. Dropping it releases the pin: the object may then be
/// spilled, and a pending delete takes effect.
pub struct ObjectBuffer {
    map: Mmap,
    pin: PinGuard,
}

impl ObjectBuffer {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.pin.id
    }
}

impl Deref for ObjectBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl AsRef<[u8]> for ObjectBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl fmt::Debug for ObjectBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBuffer")
            .field("id", &self.pin.id)
            .field("len", &self.map.len())
            .finish()
    }
}

/// One pin on an object; dropping it unpins.
struct PinGuard {
    inner: Arc<Inner>,
    id: ObjectId,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        let ops = state.ledger.unpin(self.id);
        // Nobody to report to in a drop; `remove_files` logs failures.
        let _ = self.inner.remove_files(&ops);
        drop(state);
        self.inner.changed.notify_waiters();
    }
}

/// Where object `id`'s file is while it is in shared memory.
pub fn object_path(shm_dir: &Path, id: ObjectId) -> PathBuf {
    shm_dir.join(id.to_string())
}

/// Maps object `id` from a store's `shm_dir` read-only, for another process on the node (a
/// worker); the pages are shared with the store, nothing is copied.
///
/// This does not pin the object (see the module docs): the mapping stays valid and
/// unchanged whatever the store does next, but a later spill or delete means a later call
/// finds nothing ([`Error::NotFound`]).
pub fn map_object(shm_dir: &Path, id: ObjectId) -> Result<Mmap> {
    map_file(id, &object_path(shm_dir, id))
}

/// Maps the file at `path`, which holds object `id`, read-only.
fn map_file(id: ObjectId, path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            Error::NotFound {
                id,
                path: path.to_path_buf(),
            }
        } else {
            Error::Map {
                id,
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    // SAFETY: the mapping is read-only, and the store never writes to or truncates a file
    // after renaming it to an object's name; it only unlinks it, which leaves existing
    // mappings intact. Only another program changing the file behind the store's back could
    // change the bytes under the returned slice; that is outside the store's contract, like
    // any other process writing to this process's memory.
    let map = unsafe { Mmap::map(&file) };
    map.map_err(|source| Error::Map {
        id,
        path: path.to_path_buf(),
        source,
    })
}

/// Creates `path` (which must not exist) holding exactly `parts`, one after the other.
fn write_new_file(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    // No fsync: objects do not outlive the store, so a crash loses them anyway.
    for part in parts {
        file.write_all(part)?;
    }
    Ok(())
}

/// Copies `from` to `to` through `temp`, checking that `expected` bytes were copied.
fn copy_file(from: &Path, temp: &Path, to: &Path, expected: u64) -> io::Result<()> {
    let copied = fs::copy(from, temp).and_then(|copied| {
        if copied == expected {
            fs::rename(temp, to)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds {copied} bytes, not the {expected} that were stored",
                    from.display()
                ),
            ))
        }
    });
    if copied.is_err() {
        remove_quietly(temp);
    }
    copied
}

/// Copies spilled object `id` from `from` back to `to`, with clear errors for a spill file
/// that is gone or has the wrong size.
fn restore_file(id: ObjectId, from: &Path, temp: &Path, to: &Path, size: u64) -> Result<()> {
    check_spilled_file(id, from, size)?;
    copy_file(from, temp, to, size).map_err(|source| Error::Restore {
        id,
        path: from.to_path_buf(),
        source,
    })
}

/// Checks that spilled object `id`'s file at `path` exists and holds `size` bytes.
fn check_spilled_file(id: ObjectId, path: &Path, size: u64) -> Result<()> {
    let found = match fs::metadata(path) {
        Ok(metadata) => metadata.len(),
        Err(source) if source.kind() == io::ErrorKind::NotFound => {
            return Err(Error::SpilledFileMissing {
                id,
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(Error::Restore {
                id,
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if found != size {
        return Err(Error::Corrupt {
            id,
            path: path.to_path_buf(),
            expected: size,
            found,
        });
    }
    Ok(())
}

/// Removes a file whose removal is only tidying up (a temporary file after a failure).
fn remove_quietly(path: &Path) {
    if let Err(error) = fs::remove_file(path) {
        if error.kind() != io::ErrorKind::NotFound {
            tracing::debug!(path = %path.display(), %error, "cannot remove temporary file");
        }
    }
}

/// Removes every file in `dir` named like an object or a temporary file of the store, then
/// `dir` itself if that left it empty.
fn remove_store_files(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Remove {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut result = Ok(());
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(source) => {
                if result.is_ok() {
                    result = Err(Error::Remove {
                        path: dir.to_path_buf(),
                        source,
                    });
                }
                continue;
            }
        };
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        // Exactly the names the store writes (lowercase hex), nothing that merely parses.
        let is_object = name
            .parse::<ObjectId>()
            .is_ok_and(|id| id.to_string() == name);
        if !(name.starts_with(TEMP_PREFIX) || is_object) {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                if result.is_ok() {
                    result = Err(Error::Remove { path, source });
                }
            }
        }
    }
    // Fails, harmlessly, when other programs' files (or a copy still finishing) remain.
    if let Err(error) = fs::remove_dir(dir) {
        tracing::debug!(dir = %dir.display(), %error, "object store directory kept");
    }
    result
}
