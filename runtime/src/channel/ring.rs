//! A shared-memory ring for the large payloads of a channel whose ends share a node.
//!
//! The Unix socket stays the channel's control path: frames, their order, credits, the
//! clean close and the detection of a dead peer are exactly as without a ring. A large
//! message's bytes, instead of crossing the socket (two kernel copies), are copied by the
//! sender into a ring both processes map, and the frame on the socket says where they are
//! (`DATA_SHM`: length and start); the receiver copies them out (or decodes them in place)
//! and advances the ring's tail. A sender short of space sets a flag in the ring's header and
//! waits for a credit frame; a receiver that frees space and sees the flag sends one at once.
//!
//! The ring is a file in `/dev/shm` made by the sender when its first large message goes
//! (so a channel of small messages costs no memory). The receiver maps it, removes the
//! name and sets a flag in the header; a sender that ends before the receiver mapped it
//! leaves the file for the receiver (whose frames still point into it). A file whose maker
//! died and that nobody mapped for a minute is removed by the next ring made on the node.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The header: the receiver's tail (bytes consumed, absolute) at 0, the sender's
/// "waiting for space" flag at 64 (its own cache line), the receiver's "mapped" flag at 96.
const HEADER_BYTES: usize = 128;
/// Where payloads may start (`place`); ring sizes are powers of two above it.
const PAYLOAD_ALIGN: u64 = 64;
const WAITING_OFFSET: usize = 64;
const OPENED_OFFSET: usize = 96;
/// A ring file whose maker's process is gone and that is older than this is removed by
/// the next ring made on the node (both ends crashed before either removed it).
const STALE_RING_AGE: std::time::Duration = std::time::Duration::from_secs(60);
/// Ring sizes: room for a few of the channel's large messages, within these bounds.
const MIN_RING_BYTES: u64 = 4 << 20;
const MAX_RING_BYTES: u64 = 64 << 20;
/// Ring file names start with this (checked on open: a name from the wire names only a
/// ring in the shared-memory directory).
const NAME_PREFIX: &str = "fleet-ch-";

fn shm_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The ring size for a channel whose first large message has `message_bytes` bytes.
pub(crate) fn ring_bytes(message_bytes: u64, capacity: u32) -> u64 {
    let room = message_bytes
        .saturating_add(message_bytes / 8)
        .saturating_mul(u64::from(capacity.clamp(2, 8)));
    room.clamp(MIN_RING_BYTES, MAX_RING_BYTES)
        .next_power_of_two()
        .min(MAX_RING_BYTES)
}

/// Where in a ring of `size` bytes a payload of `len` bytes goes when the writer is at
/// `head` and the reader at `tail`: `Some((start, new_head))`, skipping the ring's end when
/// the payload would not fit before it; `None` while there is no room.
pub(crate) fn place(head: u64, tail: u64, size: u64, len: u64) -> Option<(u64, u64)> {
    if len > size {
        return None;
    }
    // Payloads start on cache-line boundaries: the numbers after a vector's 8-byte count
    // are then aligned for any element type, and can be read in place.
    let head = head.next_multiple_of(PAYLOAD_ALIGN);
    let offset = head % size;
    let start = if offset + len > size {
        head + (size - offset)
    } else {
        head
    };
    let end = start + len;
    (end - tail <= size).then_some((start, end))
}

/// A mapped ring.
pub(crate) struct Ring {
    map: memmap2::MmapMut,
    size: u64,
    /// Set on the sender's side: the file to remove when the ring ends.
    path: Option<PathBuf>,
}

impl Ring {
    /// Makes a ring of `size` data bytes; returns it and its name for the receiver.
    pub(crate) fn create(size: u64) -> std::io::Result<(Ring, String)> {
        sweep_stale(&shm_dir());
        let name = format!(
            "{NAME_PREFIX}{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = shm_dir().join(&name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let ring = (|| {
            file.set_len(HEADER_BYTES as u64 + size)?;
            // SAFETY: the file was just made by this process with a random name (create_new);
            // only the channel's receiver maps it besides, and both touch it only through
            // the header's atomics and the disjoint payload ranges the frames name.
            let map = unsafe { memmap2::MmapOptions::new().populate().map_mut(&file)? };
            Ok::<_, std::io::Error>(Ring {
                map,
                size,
                path: Some(path.clone()),
            })
        })();
        if ring.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        Ok((ring?, name))
    }

    /// Maps the ring a sender named, and removes the name (both ends hold the mapping).
    pub(crate) fn open(name: &str) -> std::io::Result<Ring> {
        let valid = name.starts_with(NAME_PREFIX)
            && name.len() < 128
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a ring name that is not a channel ring's: {name:?}"),
            ));
        }
        let path = shm_dir().join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        let _ = std::fs::remove_file(&path);
        let len = file.metadata()?.len();
        if len <= HEADER_BYTES as u64 || len - HEADER_BYTES as u64 > MAX_RING_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a channel ring of {len} bytes"),
            ));
        }
        // SAFETY: see `create`; the size was checked against the mapping's use.
        let map = unsafe { memmap2::MmapOptions::new().populate().map_mut(&file)? };
        let ring = Ring {
            map,
            size: len - HEADER_BYTES as u64,
            path: None,
        };
        ring.opened_cell().store(1, Ordering::SeqCst);
        Ok(ring)
    }

    fn opened_cell(&self) -> &AtomicU32 {
        // SAFETY: as `tail_cell`, at its own aligned offset.
        unsafe { &*(self.map.as_ptr().add(OPENED_OFFSET) as *const AtomicU32) }
    }

    /// Whether the receiver has mapped the ring.
    pub(crate) fn opened(&self) -> bool {
        self.opened_cell().load(Ordering::SeqCst) == 1
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    fn tail_cell(&self) -> &AtomicU64 {
        // SAFETY: the mapping is page-aligned and at least HEADER_BYTES long; offset 0 is
        // only ever accessed as this atomic, by both processes.
        unsafe { &*(self.map.as_ptr() as *const AtomicU64) }
    }

    fn waiting_cell(&self) -> &AtomicU32 {
        // SAFETY: as `tail_cell`, at its own aligned offset.
        unsafe { &*(self.map.as_ptr().add(WAITING_OFFSET) as *const AtomicU32) }
    }

    /// Bytes the receiver has consumed (absolute).
    pub(crate) fn tail(&self) -> u64 {
        self.tail_cell().load(Ordering::Acquire)
    }

    /// The receiver consumed everything up to `end`.
    pub(crate) fn release_to(&self, end: u64) {
        self.tail_cell().store(end, Ordering::SeqCst);
    }

    /// The sender says it waits for space (then re-reads the tail before it sleeps).
    pub(crate) fn set_waiting(&self) {
        self.waiting_cell().store(1, Ordering::SeqCst);
    }

    /// The receiver takes the sender's "waiting" flag: true when it was set.
    pub(crate) fn take_waiting(&self) -> bool {
        self.waiting_cell().swap(0, Ordering::SeqCst) == 1
    }

    /// The payload range of `len` bytes at absolute position `start`, if it lies in the ring.
    fn range(&self, start: u64, len: u64) -> Option<std::ops::Range<usize>> {
        let offset = start % self.size;
        (offset + len <= self.size).then(|| {
            let from = HEADER_BYTES + offset as usize;
            from..from + len as usize
        })
    }

    /// Writes a payload at `start` (a position `place` gave).
    pub(crate) fn write(&mut self, start: u64, bytes: &[u8]) -> bool {
        match self.range(start, bytes.len() as u64) {
            Some(range) => {
                self.map[range].copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    /// The payload at `start` (from a frame: checked to lie in the ring).
    pub(crate) fn read(&self, start: u64, len: u64) -> Option<&[u8]> {
        self.range(start, len).map(|range| &self.map[range])
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The receiver removed the name when it mapped the ring; before that, the file
        // is its (its frames point into it).
        if let Some(path) = &self.path {
            if self.opened() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Removes ring files whose maker is dead and that are older than `STALE_RING_AGE`.
fn sweep_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(NAME_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_RING_AGE);
        if old && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_placed_aligned_and_never_over_unread_bytes() {
        let size = 1024;
        assert_eq!(place(0, 0, size, 400), Some((0, 400)));
        // The next payload starts at the next 64-byte boundary.
        assert_eq!(place(400, 0, size, 400), Some((448, 848)));
        // 400 more would cross the end: skip to the start, which is still unread.
        assert_eq!(place(848, 0, size, 400), None);
        // Once the first 400 are consumed, the payload goes at the start of the next lap.
        assert_eq!(place(848, 400, size, 400), Some((1024, 1424)));
        assert_eq!(place(1424, 1024, size, 500), Some((1472, 1972)));
        assert_eq!(place(0, 0, size, 1025), None, "larger than the ring");
        assert_eq!(place(0, 0, size, 1024), Some((0, 1024)));
        for head in [1, 63, 65, 700] {
            let (start, _) = place(head, head, size, 10).expect("room");
            assert_eq!(start % PAYLOAD_ALIGN, 0, "head {head}");
        }
    }

    #[test]
    fn ring_sizes_hold_a_few_messages_within_bounds() {
        assert_eq!(ring_bytes(1 << 20, 8), 16 << 20);
        assert_eq!(ring_bytes(64 << 10, 4), MIN_RING_BYTES);
        assert_eq!(ring_bytes(1 << 30, 8), MAX_RING_BYTES);
    }

    #[test]
    fn both_sides_see_payloads_and_the_tail() {
        let (mut sender, name) = Ring::create(MIN_RING_BYTES).expect("create");
        assert!(!sender.opened());
        let receiver = Ring::open(&name).expect("open");
        assert!(sender.opened());
        assert!(
            !shm_dir().join(&name).exists(),
            "the name goes once both hold it"
        );
        assert!(sender.write(10, b"hello"));
        assert_eq!(receiver.read(10, 5), Some(&b"hello"[..]));
        assert_eq!(receiver.read(MIN_RING_BYTES - 2, 5), None, "past the end");
        receiver.release_to(15);
        assert_eq!(sender.tail(), 15);
        sender.set_waiting();
        assert!(receiver.take_waiting());
        assert!(!receiver.take_waiting());
    }

    #[test]
    fn names_from_the_wire_are_checked() {
        for bad in ["../etc/passwd", "fleet-ch-../../x", "other", "fleet-ch-a/b"] {
            assert!(Ring::open(bad).is_err(), "{bad}");
        }
    }
}
