//! The store's bookkeeping without I/O: where each object lives, who pins it, how much shared
//! memory is spoken for, and which objects to spill to make room.
//!
//! Each method takes one event (a put or get begins, a spill or restore finished, a pin was
//! dropped, a delete) and answers with a decision ([`PutStep`], [`GetStep`]) or the files to
//! remove ([`FileOp`]). [`ObjectStore`](super::ObjectStore) performs them. Keeping I/O out
//! keeps the accounting small enough to check exhaustively in unit tests.
//!
//! An object moves through these [`Location`]s:
//!
//! ```text
//! Creating --sealed--> InMemory --chosen as victim--> Spilling --copied--> Spilled
//!                         ^                              |                    |
//!                         +----- pinned meanwhile -------+        get: Restoring
//!                         +----------------------- restored ------------------+
//! ```
//!
//! `used` counts the shared-memory bytes spoken for: objects in shared memory, being written,
//! being spilled (until their file is gone), being restored (from the moment room was
//! claimed), and deleted objects that readers still pin. It never exceeds the capacity.

use std::collections::{BTreeMap, HashMap};

use super::error::{Error, Result};
use super::id::ObjectId;
use super::StoreStats;

/// Where an object's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Location {
    /// A put reserved room and is writing the file; invisible to readers until sealed.
    Creating,
    /// In shared memory.
    InMemory,
    /// In shared memory and being copied to the spill directory; readers may still pin it,
    /// which cancels the spill.
    Spilling,
    /// Only in the spill directory.
    Spilled,
    /// In the spill directory and being copied back; room in shared memory is reserved.
    Restoring,
}

/// One object's record.
#[derive(Debug)]
struct Entry {
    size: u64,
    location: Location,
    /// Live [`ObjectBuffer`](super::ObjectBuffer)s on it.
    pins: u32,
    /// Logical time of the last put or get; the key of this entry in [`Ledger::lru`].
    last_used: u64,
    /// Deleted while pinned or while a spill or restore was running: invisible, and removed
    /// once the last pin drops or the copy finishes.
    deleted: bool,
}

impl Entry {
    /// Whether gets, `contains` and deletes see this object.
    fn visible(&self) -> bool {
        !self.deleted && self.location != Location::Creating
    }
}

/// An object chosen to be spilled; the ledger has marked it [`Location::Spilling`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Victim {
    pub(super) id: ObjectId,
    pub(super) size: u64,
}

/// A file the store must remove (while still holding the lock, so that no new file with the
/// same name can be created in between).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FileOp {
    /// The object's file in the shared-memory directory.
    RemoveShm(ObjectId),
    /// The object's file in the spill directory.
    RemoveSpill(ObjectId),
}

/// What a put does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PutStep {
    /// The object is already stored (or being spilled or restored): nothing to write.
    Present,
    /// Room is reserved and the object is [`Location::Creating`]: write it, then
    /// [`Ledger::finish_put`].
    Write,
    /// Spill these, then ask again.
    Spill(Vec<Victim>),
    /// Another put of the same id, or spills that will free enough, are running: wait for a
    /// notification and ask again.
    Wait,
    /// Nothing can be spilled to make room: wait (bounded) for a reader to release space.
    Full {
        /// Bytes that cannot be spilled now.
        unspillable: u64,
    },
}

/// What a get does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum GetStep {
    /// No such object (never put, deleted, or not sealed yet).
    Missing,
    /// The object is in shared memory and now pinned once more for the caller: map it.
    Map {
        /// The object's size.
        size: u64,
    },
    /// The object is spilled and room is reserved ([`Location::Restoring`]): copy it back,
    /// then [`Ledger::finish_restore`], then ask again.
    Restore {
        /// The object's size.
        size: u64,
    },
    /// Spill these to make room for the restore, then ask again.
    Spill {
        /// The objects to spill.
        victims: Vec<Victim>,
        /// The size of the object to restore.
        size: u64,
    },
    /// A restore of this object, or spills that will free enough, are running: wait.
    Wait,
    /// Nothing can be spilled to make room for the restore: wait (bounded).
    Full {
        /// The object's size.
        size: u64,
        /// Bytes that cannot be spilled now.
        unspillable: u64,
    },
}

/// The outcome of [`Ledger::claim`].
enum Claim {
    Reserved,
    Spill(Vec<Victim>),
    Wait,
    Full { unspillable: u64 },
}

/// All objects of one store and the accounting of its shared memory.
#[derive(Debug)]
pub(super) struct Ledger {
    capacity: u64,
    entries: HashMap<ObjectId, Entry>,
    /// The spill candidates, least recently used first: exactly the entries that are
    /// [`Location::InMemory`], unpinned and not deleted, keyed by `last_used`.
    lru: BTreeMap<u64, ObjectId>,
    /// Bytes of the objects in `lru`.
    lru_bytes: u64,
    /// Shared-memory bytes spoken for (see the module docs).
    used: u64,
    /// Bytes of objects in [`Location::Spilling`]: freed when their spills finish.
    spilling: u64,
    /// Logical clock for `last_used`; strictly increasing, so keys in `lru` are unique.
    clock: u64,
}

impl Ledger {
    /// An empty ledger for a store of `capacity` bytes.
    pub(super) fn new(capacity: u64) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            lru_bytes: 0,
            used: 0,
            spilling: 0,
            clock: 0,
        }
    }

    /// A put of `size` bytes under `id` begins (or asks again after spilling or waiting).
    pub(super) fn begin_put(&mut self, id: ObjectId, size: u64) -> Result<PutStep> {
        if let Some(entry) = self.entries.get_mut(&id) {
            if entry.size != size {
                return Err(Error::SizeMismatch {
                    id,
                    existing: entry.size,
                    new: size,
                });
            }
            if entry.location == Location::Creating {
                return Ok(PutStep::Wait);
            }
            // Ids name immutable values, so putting a deleted-but-still-pinned object again
            // simply keeps it. (A deleted entry is pinned or mid-copy, so not in `lru`.)
            entry.deleted = false;
            return Ok(PutStep::Present);
        }
        if size > self.capacity {
            return Err(Error::ObjectTooLarge {
                id,
                size,
                capacity: self.capacity,
            });
        }
        Ok(match self.claim(size) {
            Claim::Reserved => {
                let last_used = self.tick();
                self.entries.insert(
                    id,
                    Entry {
                        size,
                        location: Location::Creating,
                        pins: 0,
                        last_used,
                        deleted: false,
                    },
                );
                PutStep::Write
            }
            Claim::Spill(victims) => PutStep::Spill(victims),
            Claim::Wait => PutStep::Wait,
            Claim::Full { unspillable } => PutStep::Full { unspillable },
        })
    }

    /// The put that got [`PutStep::Write`] finished writing (`sealed`) or failed.
    pub(super) fn finish_put(&mut self, id: ObjectId, sealed: bool) {
        let Some(entry) = self.entries.get_mut(&id) else {
            // Drained by `destroy` meanwhile; the store removes the file.
            return;
        };
        if entry.location != Location::Creating {
            return;
        }
        if sealed {
            // Nobody can pin or delete a `Creating` object, so it goes straight to `lru`.
            entry.location = Location::InMemory;
            self.clock += 1;
            entry.last_used = self.clock;
            self.lru.insert(entry.last_used, id);
            self.lru_bytes += entry.size;
        } else {
            self.used -= entry.size;
            self.entries.remove(&id);
        }
    }

    /// A get of `id` begins (or asks again after spilling, restoring or waiting).
    pub(super) fn begin_get(&mut self, id: ObjectId) -> GetStep {
        let Some(entry) = self.entries.get_mut(&id) else {
            return GetStep::Missing;
        };
        if !entry.visible() {
            return GetStep::Missing;
        }
        let size = entry.size;
        match entry.location {
            Location::InMemory | Location::Spilling => {
                self.pin(id);
                GetStep::Map { size }
            }
            Location::Restoring => GetStep::Wait,
            Location::Spilled => match self.claim(size) {
                Claim::Reserved => {
                    if let Some(entry) = self.entries.get_mut(&id) {
                        entry.location = Location::Restoring;
                    }
                    GetStep::Restore { size }
                }
                Claim::Spill(victims) => GetStep::Spill { victims, size },
                Claim::Wait => GetStep::Wait,
                Claim::Full { unspillable } => GetStep::Full { size, unspillable },
            },
            Location::Creating => GetStep::Missing,
        }
    }

    /// Adds a pin to an object in shared memory and marks it most recently used.
    fn pin(&mut self, id: ObjectId) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if entry.location == Location::InMemory
            && entry.pins == 0
            && self.lru.remove(&entry.last_used).is_some()
        {
            self.lru_bytes -= entry.size;
        }
        entry.pins += 1;
        self.clock += 1;
        entry.last_used = self.clock;
    }

    /// An [`ObjectBuffer`](super::ObjectBuffer) on `id` was dropped.
    pub(super) fn unpin(&mut self, id: ObjectId) -> Vec<FileOp> {
        let Some(entry) = self.entries.get_mut(&id) else {
            // Drained by `destroy` meanwhile.
            return Vec::new();
        };
        entry.pins = entry.pins.saturating_sub(1);
        if entry.pins > 0 || entry.location != Location::InMemory {
            // Still pinned, or a spill is running and `finish_spill` decides.
            return Vec::new();
        }
        if entry.deleted {
            self.used -= entry.size;
            self.entries.remove(&id);
            vec![FileOp::RemoveShm(id)]
        } else {
            self.lru.insert(entry.last_used, id);
            self.lru_bytes += entry.size;
            Vec::new()
        }
    }

    /// The spill of a [`Victim`] finished: its spill file is complete (`copied`) or the
    /// copy failed (and the store removed any partial file).
    pub(super) fn finish_spill(&mut self, id: ObjectId, copied: bool) -> Vec<FileOp> {
        let Some(entry) = self.entries.get_mut(&id) else {
            // Drained by `destroy` meanwhile: drop the copy too.
            return if copied {
                vec![FileOp::RemoveSpill(id)]
            } else {
                Vec::new()
            };
        };
        if entry.location != Location::Spilling {
            return Vec::new();
        }
        self.spilling -= entry.size;
        entry.location = Location::InMemory;
        if entry.pins > 0 {
            // A reader pinned it during the copy: pinned objects are never spilled, so the
            // copy is thrown away and the object stays in shared memory.
            return if copied {
                vec![FileOp::RemoveSpill(id)]
            } else {
                Vec::new()
            };
        }
        if entry.deleted {
            self.used -= entry.size;
            self.entries.remove(&id);
            return if copied {
                vec![FileOp::RemoveShm(id), FileOp::RemoveSpill(id)]
            } else {
                vec![FileOp::RemoveShm(id)]
            };
        }
        if copied {
            entry.location = Location::Spilled;
            self.used -= entry.size;
            vec![FileOp::RemoveShm(id)]
        } else {
            // Back among the candidates at its old place in the order.
            self.lru.insert(entry.last_used, id);
            self.lru_bytes += entry.size;
            Vec::new()
        }
    }

    /// The restore that got [`GetStep::Restore`] finished: the object's file is back in
    /// shared memory (`restored`), or the copy failed and the object stays spilled.
    pub(super) fn finish_restore(&mut self, id: ObjectId, restored: bool) -> Vec<FileOp> {
        let Some(entry) = self.entries.get_mut(&id) else {
            // Drained by `destroy` meanwhile: drop the restored file too.
            return if restored {
                vec![FileOp::RemoveShm(id)]
            } else {
                Vec::new()
            };
        };
        if entry.location != Location::Restoring {
            return Vec::new();
        }
        match (restored, entry.deleted) {
            (true, true) => {
                self.used -= entry.size;
                self.entries.remove(&id);
                vec![FileOp::RemoveShm(id), FileOp::RemoveSpill(id)]
            }
            (true, false) => {
                entry.location = Location::InMemory;
                self.clock += 1;
                entry.last_used = self.clock;
                self.lru.insert(entry.last_used, id);
                self.lru_bytes += entry.size;
                vec![FileOp::RemoveSpill(id)]
            }
            (false, true) => {
                self.used -= entry.size;
                self.entries.remove(&id);
                vec![FileOp::RemoveSpill(id)]
            }
            (false, false) => {
                entry.location = Location::Spilled;
                self.used -= entry.size;
                Vec::new()
            }
        }
    }

    /// Deletes `id`: `None` when there is no such object; otherwise the files to remove now
    /// (none when readers pin it or a copy is running, in which case the removal happens
    /// when the last pin drops or the copy finishes).
    pub(super) fn delete(&mut self, id: ObjectId) -> Option<Vec<FileOp>> {
        let entry = self.entries.get_mut(&id)?;
        if !entry.visible() {
            return None;
        }
        match entry.location {
            Location::InMemory if entry.pins == 0 => {
                if self.lru.remove(&entry.last_used).is_some() {
                    self.lru_bytes -= entry.size;
                }
                self.used -= entry.size;
                self.entries.remove(&id);
                Some(vec![FileOp::RemoveShm(id)])
            }
            Location::Spilled => {
                self.entries.remove(&id);
                Some(vec![FileOp::RemoveSpill(id)])
            }
            Location::InMemory | Location::Spilling | Location::Restoring => {
                entry.deleted = true;
                Some(Vec::new())
            }
            Location::Creating => None,
        }
    }

    /// Whether a get would find `id`.
    pub(super) fn contains(&self, id: ObjectId) -> bool {
        self.entries.get(&id).is_some_and(Entry::visible)
    }

    /// The store's numbers (a walk over all entries: meant for metrics, not hot paths).
    pub(super) fn stats(&self) -> StoreStats {
        let mut stats = StoreStats {
            used_bytes: self.used,
            capacity: self.capacity,
            ..StoreStats::default()
        };
        for entry in self.entries.values() {
            if entry.pins > 0 {
                stats.pinned_bytes += entry.size;
            }
            if !entry.visible() {
                continue;
            }
            stats.num_objects += 1;
            if matches!(entry.location, Location::Spilled | Location::Restoring) {
                stats.num_spilled += 1;
                stats.spilled_bytes += entry.size;
            }
        }
        stats
    }

    /// Forgets every object (the store is being destroyed) and returns their ids, so their
    /// files can be removed. Copies still running find no entry when they finish and
    /// remove what they wrote.
    pub(super) fn drain(&mut self) -> Vec<ObjectId> {
        let ids = self.entries.keys().copied().collect();
        *self = Self::new(self.capacity);
        ids
    }

    /// Reserves `size` bytes of shared memory, or says what would free them.
    fn claim(&mut self, size: u64) -> Claim {
        let free = self.capacity.saturating_sub(self.used);
        if size <= free {
            self.used += size;
            return Claim::Reserved;
        }
        let short = size - free;
        // Spills already running free their bytes when they finish; pick victims only for
        // what they do not cover, so two puts do not both spill for the same gap.
        if short <= self.spilling {
            return Claim::Wait;
        }
        let mut need = short - self.spilling;
        if need > self.lru_bytes {
            // Spilling every candidate would not make room: spill nothing, and wait for pins
            // to drop (or for running spills, which may still change the picture).
            return if self.spilling > 0 {
                Claim::Wait
            } else {
                Claim::Full {
                    unspillable: self.used - self.lru_bytes,
                }
            };
        }
        let mut victims = Vec::new();
        while need > 0 {
            let Some((_, id)) = self.lru.pop_first() else {
                break;
            };
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            entry.location = Location::Spilling;
            self.lru_bytes -= entry.size;
            self.spilling += entry.size;
            need = need.saturating_sub(entry.size);
            victims.push(Victim {
                id,
                size: entry.size,
            });
        }
        Claim::Spill(victims)
    }

    /// The next logical time.
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Panics when the counters disagree with the entries (tests only).
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        let mut used = 0;
        let mut spilling = 0;
        let mut lru_bytes = 0;
        let mut candidates = 0;
        for (id, entry) in &self.entries {
            if matches!(
                entry.location,
                Location::Creating | Location::InMemory | Location::Spilling | Location::Restoring
            ) {
                used += entry.size;
            }
            if entry.location == Location::Spilling {
                spilling += entry.size;
            }
            let candidate =
                entry.location == Location::InMemory && entry.pins == 0 && !entry.deleted;
            assert_eq!(
                self.lru.get(&entry.last_used) == Some(id),
                candidate,
                "lru membership of {id}: {entry:?}"
            );
            if candidate {
                lru_bytes += entry.size;
                candidates += 1;
            }
            assert!(
                !(entry.deleted
                    && entry.pins == 0
                    && matches!(entry.location, Location::InMemory | Location::Spilled)),
                "deleted unpinned entry {id} was not removed: {entry:?}"
            );
            assert!(
                entry.pins == 0
                    || matches!(entry.location, Location::InMemory | Location::Spilling),
                "pinned entry {id} is not in shared memory: {entry:?}"
            );
        }
        assert_eq!(
            self.lru.len(),
            candidates,
            "lru holds exactly the candidates"
        );
        assert_eq!(used, self.used, "used");
        assert_eq!(spilling, self.spilling, "spilling");
        assert_eq!(lru_bytes, self.lru_bytes, "lru_bytes");
        assert!(self.used <= self.capacity, "used {} > capacity", self.used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes([n; 20])
    }

    /// Puts and seals `n` with `size` bytes, expecting it to fit without spilling.
    fn put(ledger: &mut Ledger, n: u8, size: u64) {
        assert_eq!(ledger.begin_put(id(n), size).expect("put"), PutStep::Write);
        ledger.finish_put(id(n), true);
        ledger.check_invariants();
    }

    #[test]
    fn puts_reserve_until_capacity_then_spill_least_recently_used() {
        let mut ledger = Ledger::new(100);
        put(&mut ledger, 1, 40);
        put(&mut ledger, 2, 40);
        // A get makes 1 more recent than 2 (and the pin keeps it out of the running).
        assert_eq!(ledger.begin_get(id(1)), GetStep::Map { size: 40 });
        assert!(ledger.unpin(id(1)).is_empty());
        ledger.check_invariants();

        let step = ledger.begin_put(id(3), 40).expect("put");
        assert_eq!(
            step,
            PutStep::Spill(vec![Victim {
                id: id(2),
                size: 40
            }])
        );
        ledger.check_invariants();
        // While 2's spill runs, another put that its bytes cover waits instead of spilling 1.
        assert_eq!(ledger.begin_put(id(4), 30).expect("put"), PutStep::Wait);

        assert_eq!(
            ledger.finish_spill(id(2), true),
            vec![FileOp::RemoveShm(id(2))]
        );
        ledger.check_invariants();
        assert_eq!(ledger.begin_put(id(3), 40).expect("put"), PutStep::Write);
        ledger.finish_put(id(3), true);
        let stats = ledger.stats();
        assert_eq!(stats.used_bytes, 80);
        assert_eq!(stats.num_objects, 3);
        assert_eq!(stats.num_spilled, 1);
        assert_eq!(stats.spilled_bytes, 40);
        assert_eq!(stats.pinned_bytes, 0);
        ledger.check_invariants();
    }

    #[test]
    fn pinned_objects_are_never_victims_and_full_is_reported() {
        let mut ledger = Ledger::new(100);
        put(&mut ledger, 1, 50);
        put(&mut ledger, 2, 50);
        assert_eq!(ledger.begin_get(id(1)), GetStep::Map { size: 50 });
        // Only 2 can go.
        assert_eq!(
            ledger.begin_put(id(3), 50).expect("put"),
            PutStep::Spill(vec![Victim {
                id: id(2),
                size: 50
            }])
        );
        ledger.finish_spill(id(2), true);
        assert_eq!(ledger.begin_put(id(3), 50).expect("put"), PutStep::Write);
        ledger.finish_put(id(3), true);
        assert_eq!(ledger.begin_get(id(3)), GetStep::Map { size: 50 });
        // Everything in memory is pinned: nothing is spilled, the put is told the store is full.
        assert_eq!(
            ledger.begin_put(id(4), 10).expect("put"),
            PutStep::Full { unspillable: 100 }
        );
        assert_eq!(ledger.stats().pinned_bytes, 100);
        ledger.check_invariants();
        ledger.unpin(id(3));
        assert_eq!(
            ledger.begin_put(id(4), 10).expect("put"),
            PutStep::Spill(vec![Victim {
                id: id(3),
                size: 50
            }])
        );
        ledger.check_invariants();
    }

    #[test]
    fn too_large_and_size_mismatch_are_refused_and_same_size_is_idempotent() {
        let mut ledger = Ledger::new(100);
        assert!(matches!(
            ledger.begin_put(id(1), 101),
            Err(Error::ObjectTooLarge {
                size: 101,
                capacity: 100,
                ..
            })
        ));
        put(&mut ledger, 1, 10);
        assert_eq!(ledger.begin_put(id(1), 10).expect("put"), PutStep::Present);
        assert!(matches!(
            ledger.begin_put(id(1), 11),
            Err(Error::SizeMismatch {
                existing: 10,
                new: 11,
                ..
            })
        ));
        ledger.check_invariants();
    }

    #[test]
    fn a_put_being_written_is_invisible_and_a_second_put_waits() {
        let mut ledger = Ledger::new(100);
        assert_eq!(ledger.begin_put(id(1), 10).expect("put"), PutStep::Write);
        assert!(!ledger.contains(id(1)));
        assert_eq!(ledger.begin_get(id(1)), GetStep::Missing);
        assert_eq!(ledger.delete(id(1)), None);
        assert_eq!(ledger.begin_put(id(1), 10).expect("put"), PutStep::Wait);
        ledger.finish_put(id(1), false);
        ledger.check_invariants();
        assert_eq!(ledger.stats().used_bytes, 0);
        assert!(!ledger.contains(id(1)));
    }

    #[test]
    fn delete_of_a_pinned_object_waits_for_the_last_pin() {
        let mut ledger = Ledger::new(100);
        put(&mut ledger, 1, 30);
        assert_eq!(ledger.begin_get(id(1)), GetStep::Map { size: 30 });
        assert_eq!(ledger.begin_get(id(1)), GetStep::Map { size: 30 });
        assert_eq!(ledger.delete(id(1)), Some(Vec::new()));
        assert!(!ledger.contains(id(1)));
        assert_eq!(ledger.begin_get(id(1)), GetStep::Missing);
        assert_eq!(ledger.stats().used_bytes, 30);
        ledger.check_invariants();
        assert!(ledger.unpin(id(1)).is_empty());
        assert_eq!(ledger.unpin(id(1)), vec![FileOp::RemoveShm(id(1))]);
        assert_eq!(
            ledger.stats(),
            StoreStats {
                capacity: 100,
                ..StoreStats::default()
            }
        );
        ledger.check_invariants();
    }

    #[test]
    fn putting_a_deleted_but_pinned_object_again_keeps_it() {
        let mut ledger = Ledger::new(100);
        put(&mut ledger, 1, 30);
        assert_eq!(ledger.begin_get(id(1)), GetStep::Map { size: 30 });
        ledger.delete(id(1));
        assert_eq!(ledger.begin_put(id(1), 30).expect("put"), PutStep::Present);
        assert!(ledger.contains(id(1)));
        assert!(ledger.unpin(id(1)).is_empty());
        assert!(ledger.contains(id(1)));
        ledger.check_invariants();
    }

    #[test]
    fn a_pin_taken_during_a_spill_cancels_it() {
        let mut ledger = Ledger::new(100);
        put(&mut ledger, 1, 60);
        let PutStep::Spill(victims) = ledger.begin_put(id(2), 60).expect("put") else {
            panic!("expected a spill");
        };
        assert_eq!(
            victims,
            vec![Victim {
                id: id(1),
                size: 60
            }]
        );
        assert_eq!(ledger.begin_get(id(1)), GetStep::Map { size: 60 });
        assert_eq!(
            ledger.finish_spill(id(1), true),
            vec![FileOp::RemoveSpill(id(1))]
        );
        ledger.check_invariants();
        assert_eq!(ledger.stats().num_spilled, 0);
        assert_eq!(
            ledger.begin_put(id(2), 60).expect("put"),
            PutStep::Full { unspillable: 60 }
        );
        ledger.check_invariants();
    }

    #[test]
    fn a_failed_spill_returns_the_object_to_the_candidates() {
        let mut ledger = Ledger::new(100);
        put(&mut ledger, 1, 60);
        assert!(matches!(ledger.begin_put(id(2), 60), Ok(PutStep::Spill(_))));
        assert!(ledger.finish_spill(id(1), false).is_empty());
        ledger.check_invariants();
        assert!(ledger.contains(id(1)));
        assert_eq!(ledger.stats().used_bytes, 60);
    }

    #[test]
    fn restore_reserves_room_spilling_others_and_failure_keeps_it_spilled() {
        let mut ledger = Ledger::new(100);
        put(&mut ledger, 1, 60);
        assert!(matches!(ledger.begin_put(id(2), 60), Ok(PutStep::Spill(_))));
        ledger.finish_spill(id(1), true);
        assert_eq!(ledger.begin_put(id(2), 60).expect("put"), PutStep::Write);
        ledger.finish_put(id(2), true);

        // Getting 1 back needs 2 out.
        assert_eq!(
            ledger.begin_get(id(1)),
            GetStep::Spill {
                victims: vec![Victim {
                    id: id(2),
                    size: 60
                }],
                size: 60
            }
        );
        ledger.finish_spill(id(2), true);
        assert_eq!(ledger.begin_get(id(1)), GetStep::Restore { size: 60 });
        assert_eq!(ledger.begin_get(id(1)), GetStep::Wait);
        ledger.check_invariants();

        // A failed copy: still spilled, room released.
        assert!(ledger.finish_restore(id(1), false).is_empty());
        ledger.check_invariants();
        assert_eq!(ledger.stats().used_bytes, 0);
        assert_eq!(ledger.stats().num_spilled, 2);

        assert_eq!(ledger.begin_get(id(1)), GetStep::Restore { size: 60 });
        assert_eq!(
            ledger.finish_restore(id(1), true),
            vec![FileOp::RemoveSpill(id(1))]
        );
        ledger.check_invariants();
        assert_eq!(ledger.begin_get(id(1)), GetStep::Map { size: 60 });
        let stats = ledger.stats();
        assert_eq!(
            (stats.used_bytes, stats.num_spilled, stats.pinned_bytes),
            (60, 1, 60)
        );
    }

    #[test]
    fn deletes_during_copies_remove_every_file_when_the_copy_ends() {
        let mut ledger = Ledger::new(100);
        put(&mut ledger, 1, 60);
        assert!(matches!(ledger.begin_put(id(2), 60), Ok(PutStep::Spill(_))));
        assert_eq!(ledger.delete(id(1)), Some(Vec::new()));
        assert_eq!(
            ledger.finish_spill(id(1), true),
            vec![FileOp::RemoveShm(id(1)), FileOp::RemoveSpill(id(1))]
        );
        ledger.check_invariants();

        put(&mut ledger, 3, 60);
        assert!(matches!(ledger.begin_put(id(4), 60), Ok(PutStep::Spill(_))));
        ledger.finish_spill(id(3), true);
        assert_eq!(ledger.delete(id(3)), Some(vec![FileOp::RemoveSpill(id(3))]));
        ledger.check_invariants();

        put(&mut ledger, 5, 60);
        assert!(matches!(ledger.begin_put(id(6), 60), Ok(PutStep::Spill(_))));
        ledger.finish_spill(id(5), true);
        assert_eq!(ledger.begin_get(id(5)), GetStep::Restore { size: 60 });
        ledger.delete(id(5));
        assert_eq!(
            ledger.finish_restore(id(5), true),
            vec![FileOp::RemoveShm(id(5)), FileOp::RemoveSpill(id(5))]
        );
        ledger.check_invariants();
        assert_eq!(
            ledger.stats(),
            StoreStats {
                capacity: 100,
                ..StoreStats::default()
            }
        );
    }

    #[test]
    fn copies_finishing_after_drain_clean_up_after_themselves() {
        let mut ledger = Ledger::new(100);
        put(&mut ledger, 1, 60);
        assert!(matches!(ledger.begin_put(id(2), 60), Ok(PutStep::Spill(_))));
        assert_eq!(ledger.drain(), vec![id(1)]);
        assert_eq!(
            ledger.finish_spill(id(1), true),
            vec![FileOp::RemoveSpill(id(1))]
        );
        ledger.finish_put(id(2), true);
        ledger.check_invariants();
        assert_eq!(ledger.stats().used_bytes, 0);
    }
}
