//! Tests of the store against real files in temporary directories.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use super::*;

/// A store of `capacity` bytes in a fresh temporary directory (dropped with the returned
/// `TempDir`).
fn store(capacity: u64, full_timeout: Duration) -> (TempDir, ObjectStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = ObjectStore::open(ObjectStoreConfig {
        shm_dir: dir.path().join("shm"),
        spill_dir: dir.path().join("spill"),
        capacity_bytes: capacity,
        full_timeout,
    })
    .expect("open store");
    (dir, store)
}

/// `len` bytes that differ per `seed`, so mixed-up objects cannot compare equal.
fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

fn id(n: u8) -> ObjectId {
    ObjectId::from_bytes([n; OBJECT_ID_LEN])
}

fn shm_file(store: &ObjectStore, id: ObjectId) -> PathBuf {
    object_path(&store.config().shm_dir, id)
}

fn spill_file(store: &ObjectStore, id: ObjectId) -> PathBuf {
    object_path(&store.config().spill_dir, id)
}

/// The names of the files in `dir`.
fn file_names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn check_invariants(store: &ObjectStore) {
    store.inner.lock().ledger.check_invariants();
}

async fn get_bytes(store: &ObjectStore, id: ObjectId) -> Vec<u8> {
    store
        .get(id)
        .await
        .expect("get")
        .expect("object present")
        .to_vec()
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn put_then_get_and_map_object_see_the_same_bytes() {
    let (_dir, store) = store(1 << 20, LONG);
    let objects = [
        (id(1), bytes(1, 1000)),
        (id(2), bytes(2, 4096)),
        (id(3), Vec::new()),
    ];
    for (id, data) in &objects {
        store.put(*id, data).await.expect("put");
    }
    for (id, data) in &objects {
        let buffer = store.get(*id).await.expect("get").expect("present");
        assert_eq!(&buffer[..], &data[..]);
        assert_eq!(buffer.id(), *id);
        // Another process would do exactly this with the directory and the id.
        let mapped = map_object(&store.config().shm_dir, *id).expect("map_object");
        assert_eq!(&mapped[..], &data[..]);
    }
    // Only complete objects are ever visible under their names: no temporary file is left.
    let expected: BTreeSet<String> = objects.iter().map(|(id, _)| id.to_string()).collect();
    assert_eq!(file_names(&store.config().shm_dir), expected);
    assert!(store.contains(id(1)));
    assert!(!store.contains(id(9)));
    assert!(store.get(id(9)).await.expect("get").is_none());
    assert!(matches!(
        map_object(&store.config().shm_dir, id(9)),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        store.stats(),
        StoreStats {
            used_bytes: 5096,
            capacity: 1 << 20,
            num_objects: 3,
            num_spilled: 0,
            spilled_bytes: 0,
            pinned_bytes: 0,
        }
    );
    check_invariants(&store);
}

#[tokio::test]
async fn putting_an_id_again_is_idempotent_with_the_same_size_only() {
    let (_dir, store) = store(1000, LONG);
    store.put(id(1), &bytes(1, 100)).await.expect("put");
    store
        .put(id(1), &bytes(1, 100))
        .await
        .expect("same put again");
    assert_eq!(store.stats().used_bytes, 100);
    let error = store
        .put(id(1), &bytes(1, 50))
        .await
        .expect_err("size differs");
    assert!(matches!(
        error,
        Error::SizeMismatch {
            existing: 100,
            new: 50,
            ..
        }
    ));
    assert_eq!(get_bytes(&store, id(1)).await, bytes(1, 100));
}

#[tokio::test]
async fn over_capacity_spills_the_least_recently_used_and_get_restores_it() {
    let (_dir, store) = store(100, LONG);
    store.put(id(1), &bytes(1, 40)).await.expect("put 1");
    store.put(id(2), &bytes(2, 40)).await.expect("put 2");
    // Reading 1 makes 2 the least recently used.
    assert_eq!(get_bytes(&store, id(1)).await, bytes(1, 40));

    store.put(id(3), &bytes(3, 40)).await.expect("put 3");
    assert!(!shm_file(&store, id(2)).exists());
    assert_eq!(
        fs::read(spill_file(&store, id(2))).expect("spill file"),
        bytes(2, 40)
    );
    assert!(shm_file(&store, id(1)).exists());
    let stats = store.stats();
    assert_eq!(
        (
            stats.used_bytes,
            stats.num_objects,
            stats.num_spilled,
            stats.spilled_bytes
        ),
        (80, 3, 1, 40)
    );
    assert!(store.contains(id(2)));

    // Getting 2 brings it back, which spills 1 (now the least recently used).
    assert_eq!(get_bytes(&store, id(2)).await, bytes(2, 40));
    assert!(shm_file(&store, id(2)).exists());
    assert!(!spill_file(&store, id(2)).exists());
    assert!(spill_file(&store, id(1)).exists());
    assert_eq!(get_bytes(&store, id(1)).await, bytes(1, 40));
    assert_eq!(get_bytes(&store, id(3)).await, bytes(3, 40));
    let stats = store.stats();
    assert_eq!(
        (stats.used_bytes, stats.num_objects, stats.num_spilled),
        (80, 3, 1)
    );
    check_invariants(&store);
}

#[tokio::test]
async fn a_pinned_object_is_not_spilled_even_when_least_recently_used() {
    let (_dir, store) = store(100, LONG);
    store.put(id(1), &bytes(1, 50)).await.expect("put 1");
    store.put(id(2), &bytes(2, 50)).await.expect("put 2");
    let pinned = store.get(id(1)).await.expect("get").expect("present");
    // Reading 2 afterwards makes 1 the least recently used, but 1 is pinned.
    assert_eq!(get_bytes(&store, id(2)).await, bytes(2, 50));
    assert_eq!(store.stats().pinned_bytes, 50);

    store.put(id(3), &bytes(3, 50)).await.expect("put 3");
    assert!(shm_file(&store, id(1)).exists());
    assert!(!spill_file(&store, id(1)).exists());
    assert!(spill_file(&store, id(2)).exists());
    assert_eq!(&pinned[..], &bytes(1, 50)[..]);

    drop(pinned);
    assert_eq!(store.stats().pinned_bytes, 0);
    // Unpinned, 1 is the least recently used again and goes next.
    store.put(id(4), &bytes(4, 50)).await.expect("put 4");
    assert!(spill_file(&store, id(1)).exists());
    check_invariants(&store);
}

#[tokio::test]
async fn a_put_waits_while_everything_is_pinned_and_completes_once_released() {
    let (_dir, store) = store(100, LONG);
    store.put(id(1), &bytes(1, 60)).await.expect("put 1");
    let pinned = store.get(id(1)).await.expect("get").expect("present");
    let released = Arc::new(AtomicBool::new(false));
    let releaser = tokio::spawn({
        let released = Arc::clone(&released);
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            released.store(true, Ordering::SeqCst);
            drop(pinned);
        }
    });

    store
        .put(id(2), &bytes(2, 60))
        .await
        .expect("put 2 after release");
    // The put could only complete by spilling 1, which the pin forbade until it was dropped.
    assert!(released.load(Ordering::SeqCst));
    releaser.await.expect("releaser");
    assert!(spill_file(&store, id(1)).exists());
    assert_eq!(get_bytes(&store, id(2)).await, bytes(2, 60));
    let stats = store.stats();
    assert_eq!(
        (stats.used_bytes, stats.num_spilled, stats.pinned_bytes),
        (60, 1, 0)
    );
    check_invariants(&store);
}

#[tokio::test]
async fn a_put_fails_with_store_full_when_nothing_is_released_in_time() {
    let (_dir, store) = store(100, Duration::from_millis(100));
    store.put(id(1), &bytes(1, 60)).await.expect("put 1");
    let pinned = store.get(id(1)).await.expect("get").expect("present");

    let error = store
        .put(id(2), &bytes(2, 60))
        .await
        .expect_err("store is full");
    match &error {
        Error::StoreFull {
            id: failed,
            needed,
            capacity,
            pinned,
            ..
        } => assert_eq!((*failed, *needed, *capacity, *pinned), (id(2), 60, 100, 60)),
        other => panic!("expected StoreFull, got {other:?}"),
    }
    assert!(error.is_retryable());
    let message = error.to_string();
    assert!(message.contains(&id(2).to_string()), "{message}");
    assert!(message.contains("raise the store's capacity"), "{message}");
    assert!(message.contains("release object references"), "{message}");

    // Nothing was spilled or lost, and nothing of the failed put is left behind.
    assert!(!store.contains(id(2)));
    assert!(!shm_file(&store, id(2)).exists());
    assert_eq!(&pinned[..], &bytes(1, 60)[..]);
    let stats = store.stats();
    assert_eq!(
        (stats.used_bytes, stats.num_objects, stats.num_spilled),
        (60, 1, 0)
    );
    check_invariants(&store);
}

#[tokio::test]
async fn a_get_that_must_restore_into_a_pinned_full_store_fails_with_store_full() {
    let (_dir, store) = store(100, Duration::from_millis(100));
    store.put(id(1), &bytes(1, 60)).await.expect("put 1");
    store
        .put(id(2), &bytes(2, 60))
        .await
        .expect("put 2 spills 1");
    let pinned = store.get(id(2)).await.expect("get").expect("present");
    assert!(matches!(
        store.get(id(1)).await,
        Err(Error::StoreFull { id: failed, needed: 60, pinned: 60, .. }) if failed == id(1)
    ));
    drop(pinned);
    assert_eq!(get_bytes(&store, id(1)).await, bytes(1, 60));
    check_invariants(&store);
}

#[tokio::test]
async fn a_put_cancelled_while_spilling_leaves_the_store_consistent() {
    let (_dir, store) = store(100, LONG);
    store.put(id(1), &bytes(1, 60)).await.expect("put 1");
    // Dropped at its first await, which is the spill of 1 (unless that already finished).
    let _ = tokio::time::timeout(Duration::ZERO, store.put(id(2), &bytes(2, 60))).await;
    // A new put waits for the orphaned spill, if still running, and then fits.
    store.put(id(2), &bytes(2, 60)).await.expect("put 2");
    assert!(spill_file(&store, id(1)).exists());
    assert_eq!(get_bytes(&store, id(2)).await, bytes(2, 60));
    assert_eq!(get_bytes(&store, id(1)).await, bytes(1, 60));
    check_invariants(&store);
}

#[tokio::test]
async fn an_object_larger_than_the_store_fails_at_once() {
    // An hour-long full timeout: the test only finishes if the put does not wait.
    let (_dir, store) = store(100, Duration::from_secs(3600));
    let error = store
        .put(id(1), &bytes(1, 101))
        .await
        .expect_err("too large");
    assert!(matches!(
        error,
        Error::ObjectTooLarge {
            size: 101,
            capacity: 100,
            ..
        }
    ));
    assert!(error.to_string().contains(&id(1).to_string()));
    assert_eq!(store.stats().used_bytes, 0);
}

#[tokio::test]
async fn deleting_a_pinned_object_takes_effect_when_the_last_pin_drops() {
    let (_dir, store) = store(100, LONG);
    store.put(id(1), &bytes(1, 30)).await.expect("put");
    let first = store.get(id(1)).await.expect("get").expect("present");
    let second = store.get(id(1)).await.expect("get").expect("present");

    assert!(store.delete(id(1)).expect("delete"));
    assert!(!store.contains(id(1)));
    assert!(store.get(id(1)).await.expect("get").is_none());
    assert!(
        !store.delete(id(1)).expect("second delete"),
        "already deleted"
    );
    // The readers' bytes and the file are untouched while pinned.
    assert!(shm_file(&store, id(1)).exists());
    assert_eq!(&first[..], &bytes(1, 30)[..]);
    assert_eq!(store.stats().used_bytes, 30);
    assert_eq!(store.stats().num_objects, 0);

    drop(first);
    assert!(shm_file(&store, id(1)).exists());
    assert_eq!(&second[..], &bytes(1, 30)[..]);
    drop(second);
    assert!(!shm_file(&store, id(1)).exists());
    assert_eq!(store.stats().used_bytes, 0);
    check_invariants(&store);
}

#[tokio::test]
async fn deleting_objects_frees_room_and_files() {
    let (_dir, store) = store(100, LONG);
    store.put(id(1), &bytes(1, 60)).await.expect("put 1");
    store
        .put(id(2), &bytes(2, 60))
        .await
        .expect("put 2 spills 1");
    assert!(store.delete(id(1)).expect("delete spilled"));
    assert!(store.delete(id(2)).expect("delete in memory"));
    assert!(file_names(&store.config().shm_dir).is_empty());
    assert!(file_names(&store.config().spill_dir).is_empty());
    assert_eq!(
        store.stats(),
        StoreStats {
            capacity: 100,
            ..StoreStats::default()
        }
    );
}

#[tokio::test]
async fn a_spill_file_removed_behind_the_stores_back_gives_a_clear_error() {
    let (_dir, store) = store(100, LONG);
    store.put(id(1), &bytes(1, 60)).await.expect("put 1");
    store
        .put(id(2), &bytes(2, 60))
        .await
        .expect("put 2 spills 1");
    let path = spill_file(&store, id(1));
    fs::remove_file(&path).expect("remove spill file");

    let error = store.get(id(1)).await.expect_err("spill file is gone");
    assert!(
        matches!(&error, Error::SpilledFileMissing { id: lost, path: at } if *lost == id(1) && *at == path),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&id(1).to_string()), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");

    // Nothing was spilled to make room for an object that is not there.
    assert_eq!(store.stats().used_bytes, 60);
    assert!(shm_file(&store, id(2)).exists());
    assert_eq!(get_bytes(&store, id(2)).await, bytes(2, 60));
    // The loss keeps being reported until the owner deletes the object.
    assert!(matches!(
        store.get(id(1)).await,
        Err(Error::SpilledFileMissing { .. })
    ));
    assert!(store.delete(id(1)).expect("delete lost object"));
    assert!(store.get(id(1)).await.expect("get").is_none());
    check_invariants(&store);
}

#[tokio::test]
async fn a_truncated_spill_file_is_reported_corrupt() {
    let (_dir, store) = store(100, LONG);
    store.put(id(1), &bytes(1, 60)).await.expect("put 1");
    store
        .put(id(2), &bytes(2, 60))
        .await
        .expect("put 2 spills 1");
    fs::write(spill_file(&store, id(1)), b"short").expect("truncate");
    assert!(matches!(
        store.get(id(1)).await,
        Err(Error::Corrupt {
            expected: 60,
            found: 5,
            ..
        })
    ));
    check_invariants(&store);
}

#[tokio::test]
async fn a_shared_memory_file_removed_behind_the_stores_back_gives_a_clear_error() {
    let (_dir, store) = store(100, LONG);
    store.put(id(1), &bytes(1, 10)).await.expect("put");
    fs::remove_file(shm_file(&store, id(1))).expect("remove shm file");
    assert!(matches!(
        store.get(id(1)).await,
        Err(Error::NotFound { id: missing, .. }) if missing == id(1)
    ));
    // The failed get left no pin behind.
    assert_eq!(store.stats().pinned_bytes, 0);
    check_invariants(&store);
}

#[tokio::test]
async fn destroy_removes_the_stores_files_but_not_others_and_buffers_stay_readable() {
    let (dir, store) = store(100, LONG);
    store.put(id(1), &bytes(1, 60)).await.expect("put 1");
    store
        .put(id(2), &bytes(2, 60))
        .await
        .expect("put 2 spills 1");
    let buffer = store.get(id(2)).await.expect("get").expect("present");
    let foreign = store.config().shm_dir.join("not-ours.txt");
    fs::write(&foreign, b"keep me").expect("foreign file");
    let other_handle = store.clone();

    store.destroy().expect("destroy");
    assert_eq!(
        file_names(&dir.path().join("shm")),
        BTreeSet::from(["not-ours.txt".to_string()])
    );
    assert!(!dir.path().join("spill").exists());
    assert_eq!(&buffer[..], &bytes(2, 60)[..]);
    assert!(matches!(
        other_handle.put(id(3), b"x").await,
        Err(Error::Destroyed)
    ));
    assert!(matches!(
        other_handle.get(id(2)).await,
        Err(Error::Destroyed)
    ));
    assert!(!other_handle.contains(id(2)));
    drop(buffer);
}

#[test]
fn open_names_the_directory_it_cannot_use() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    fs::write(&file, b"").expect("file");
    let config = ObjectStoreConfig {
        shm_dir: file.join("shm"),
        spill_dir: dir.path().join("spill"),
        capacity_bytes: 100,
        full_timeout: LONG,
    };
    let error = ObjectStore::open(config.clone()).expect_err("shm_dir under a file");
    assert!(
        matches!(
            &error,
            Error::CreateDir {
                field: "shm_dir",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains(&file.join("shm").display().to_string()),
        "{error}"
    );

    let same = ObjectStoreConfig {
        spill_dir: config.shm_dir.clone(),
        ..config.clone()
    };
    assert!(matches!(
        ObjectStore::open(same),
        Err(Error::InvalidConfig {
            field: "spill_dir",
            ..
        })
    ));
    // The same directory spelled differently is caught after creating it.
    let spelled_twice = ObjectStoreConfig {
        shm_dir: dir.path().join("x"),
        spill_dir: dir.path().join("x").join("..").join("x"),
        ..config.clone()
    };
    assert!(matches!(
        ObjectStore::open(spelled_twice),
        Err(Error::InvalidConfig {
            field: "spill_dir",
            ..
        })
    ));
    let empty = ObjectStoreConfig {
        capacity_bytes: 0,
        ..config
    };
    assert!(matches!(
        ObjectStore::open(empty),
        Err(Error::InvalidConfig {
            field: "capacity_bytes",
            ..
        })
    ));
}

#[test]
fn object_ids_print_parse_and_serialize_as_hex() {
    let object = ObjectId::random();
    assert_ne!(object, ObjectId::random());
    let hex = object.to_string();
    assert_eq!(hex.len(), 40);
    assert_eq!(hex.parse::<ObjectId>().expect("parse"), object);
    assert_eq!(
        hex.to_uppercase()
            .parse::<ObjectId>()
            .expect("parse upper case"),
        object
    );

    let json = serde_json::to_string(&object).expect("serialize");
    assert_eq!(json, format!("\"{hex}\""));
    assert_eq!(
        serde_json::from_str::<ObjectId>(&json).expect("deserialize"),
        object
    );
    assert!(serde_json::from_str::<ObjectId>("\"abc\"").is_err());

    for bad in ["", "abc", &"g".repeat(40), &"a".repeat(42), "é"] {
        let error = bad.parse::<ObjectId>().expect_err(bad);
        assert!(
            matches!(error, Error::InvalidObjectId { .. }),
            "{bad}: {error:?}"
        );
        assert!(error.to_string().contains("40 hex digits"), "{error}");
    }
}

#[test]
fn seeded_ids_replay() {
    use rand::SeedableRng;
    let mut first = rand::rngs::StdRng::seed_from_u64(7);
    let mut second = rand::rngs::StdRng::seed_from_u64(7);
    assert_eq!(
        ObjectId::random_with(&mut first),
        ObjectId::random_with(&mut second)
    );
}

/// Several tasks on two threads put, read back and delete objects in a store that holds a
/// fraction of them, so spills, restores and waits interleave; every read must return the
/// bytes that were put, and the accounting must add up at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_and_gets_under_pressure_keep_every_object_intact() {
    const TASKS: u8 = 4;
    const PER_TASK: u8 = 25;
    const SIZE: usize = 1000;
    // Deleted objects are among the later ones, which no task reads back afterwards.
    let deleted = |n: u8| n % 5 == 4 && n > PER_TASK / 2;
    let (_dir, store) = store(8 * SIZE as u64, LONG);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            for n in 0..PER_TASK {
                let seed = task * PER_TASK + n;
                store.put(id(seed), &bytes(seed, SIZE)).await.expect("put");
                // Read back an earlier object of this task, likely spilled by now, while
                // holding the newest one pinned.
                let newest = store.get(id(seed)).await.expect("get").expect("present");
                let earlier = task * PER_TASK + n / 2;
                let buffer = store.get(id(earlier)).await.expect("get").expect("present");
                assert_eq!(&buffer[..], &bytes(earlier, SIZE)[..]);
                assert_eq!(&newest[..], &bytes(seed, SIZE)[..]);
                if deleted(n) {
                    store.delete(id(seed)).expect("delete");
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task");
    }
    check_invariants(&store);
    let stats = store.stats();
    let num_deleted = (0..PER_TASK).filter(|&n| deleted(n)).count() as u64;
    assert_eq!(
        stats.num_objects,
        u64::from(TASKS) * (u64::from(PER_TASK) - num_deleted)
    );
    assert_eq!(stats.pinned_bytes, 0);
    assert!(stats.used_bytes <= stats.capacity);
    assert_eq!(
        stats.used_bytes + stats.spilled_bytes,
        stats.num_objects * SIZE as u64
    );
    for seed in 0..TASKS * PER_TASK {
        match store.get(id(seed)).await.expect("get") {
            Some(buffer) => assert_eq!(&buffer[..], &bytes(seed, SIZE)[..]),
            None => assert!(deleted(seed % PER_TASK), "object {seed} went missing"),
        }
    }
}
