//! Objects between nodes: pull-based, chunked, pipelined.
//!
//! A process that needs an object held by another node asks its own raylet to pull it
//! (`PullObject`). The raylet reads it from the holder's raylet over one `ReadObject` stream
//! of [`CHUNK_BYTES`] chunks (HTTP/2 flow control keeps several chunks in flight, so reading,
//! the network and writing overlap), stores it, and answers. Concurrent pulls of one object
//! share a single transfer: an object moves once per node however many tasks ask at once.
//!
//! The holder remembers which raylets read each object, so that when the owner frees it the
//! copies made from it are freed too; new copies are reported to the GCS objects table in
//! batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use fleet_proto::gcs::{LocationChange, ObjectLocationUpdate};
use fleet_proto::runtime::raylet_client::RayletClient;
use fleet_proto::runtime::{ObjectChunk, ReadObjectRequest, StoreDeleteRequest};
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::mpsc;

use crate::object_store::{ObjectId, ObjectStore};
use crate::server::MAX_MESSAGE_BYTES;

/// Bytes per chunk on the wire.
pub const CHUNK_BYTES: usize = 4 << 20;

type PullResult = Result<u64, String>;

/// Pulls, serves reads, and tracks who holds copies made from this node.
#[derive(Clone)]
pub struct Transfers {
    inner: Arc<Inner>,
}

struct Inner {
    store: ObjectStore,
    node_id: String,
    address: String,
    in_flight: Mutex<HashMap<ObjectId, Shared<BoxFuture<'static, PullResult>>>>,
    /// Raylets that read each object from here.
    readers: DashMap<ObjectId, Vec<String>>,
    locations: mpsc::Sender<ObjectLocationUpdate>,
    objects_pulled: std::sync::atomic::AtomicU64,
    bytes_pulled: std::sync::atomic::AtomicU64,
    /// Location changes dropped because the queue to the GCS was full.
    locations_dropped: std::sync::atomic::AtomicU64,
}

/// A raylet client for another node.
pub fn connect(address: &str) -> Result<RayletClient<fleet_gcs::auth::AuthChannel>, String> {
    let channel =
        fleet_gcs::transport::Connector::channel(&fleet_gcs::transport::TcpConnector, address)?;
    Ok(RayletClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

impl Transfers {
    /// Transfers for the node `node_id` serving at `address`; location changes go to
    /// `locations` (batched into the GCS by the caller).
    pub fn new(
        store: ObjectStore,
        node_id: String,
        address: String,
        locations: mpsc::Sender<ObjectLocationUpdate>,
    ) -> Self {
        Transfers {
            inner: Arc::new(Inner {
                store,
                node_id,
                address,
                in_flight: Mutex::new(HashMap::new()),
                readers: DashMap::new(),
                locations,
                objects_pulled: Default::default(),
                bytes_pulled: Default::default(),
                locations_dropped: Default::default(),
            }),
        }
    }

    /// Queues a location change for the GCS, or drops (and counts) it when the queue is
    /// full: the GCS being slow must not grow this raylet's memory.
    fn report_location(&self, update: ObjectLocationUpdate) {
        if self.inner.locations.try_send(update).is_err() {
            let dropped = self
                .inner
                .locations_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if dropped.is_multiple_of(10_000) {
                tracing::warn!(
                    dropped = dropped + 1,
                    "object location changes dropped: the queue to the control store is full"
                );
            }
        }
    }

    /// Makes a local copy of `id` from the raylet at `from` (at once if there is one already);
    /// returns its size.
    pub async fn pull(&self, id: ObjectId, from: &str) -> PullResult {
        if from == self.inner.address || self.inner.store.contains(id) {
            return match self.inner.store.get(id).await {
                Ok(Some(buffer)) => Ok(buffer.len() as u64),
                Ok(None) => Err(format!(
                    "object {id} is not in the object store of node {}",
                    self.inner.node_id
                )),
                Err(error) => Err(error.to_string()),
            };
        }
        let shared = {
            let mut in_flight = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            in_flight
                .entry(id)
                .or_insert_with(|| {
                    let this = self.clone();
                    let from = from.to_string();
                    async move {
                        let result = this.fetch(id, &from).await;
                        this.inner
                            .in_flight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                        result
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        shared.await
    }

    async fn fetch(&self, id: ObjectId, from: &str) -> PullResult {
        let started = std::time::Instant::now();
        let mut client = connect(from)?;
        let mut stream = client
            .read_object(ReadObjectRequest {
                object_id: id.to_string(),
                reader_address: self.inner.address.clone(),
            })
            .await
            .map_err(|s| format!("node at {from}: {}", fleet_gcs::error::describe_status(&s)))?
            .into_inner();
        // Chunks are kept as they arrive and written to the store in one pass (no
        // reassembly copy). Each is checked against the declared size before it is kept.
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut incoming = IncomingObject::new(self.inner.store.config().capacity_bytes);
        loop {
            let chunk: Option<ObjectChunk> = stream.message().await.map_err(|s| {
                format!(
                    "node at {from} broke off the transfer: {}",
                    fleet_gcs::error::describe_status(&s)
                )
            })?;
            let Some(chunk) = chunk else { break };
            incoming
                .accept(&chunk)
                .map_err(|reason| format!("node at {from} sent object {id} {reason}"))?;
            chunks.push(chunk.data);
        }
        let total = incoming
            .finish()
            .map_err(|reason| format!("node at {from} sent object {id} {reason}"))?;
        let parts: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        self.inner
            .store
            .put_parts(id, &parts)
            .await
            .map_err(|e| format!("cannot store the copy of object {id}: {e}"))?;
        drop(chunks);
        tracing::debug!(object = %id, bytes = total, from, elapsed = ?started.elapsed(), "pulled");
        self.inner
            .objects_pulled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .bytes_pulled
            .fetch_add(total, std::sync::atomic::Ordering::Relaxed);
        self.report_location(ObjectLocationUpdate {
            object_id: id.to_string(),
            change: LocationChange::LocationAdd as i32,
            node_id: self.inner.node_id.clone(),
            size: total,
            ..Default::default()
        });
        Ok(total)
    }

    /// Serves `ReadObject`: the object in chunks, fed from the store as the stream drains.
    pub async fn read(
        &self,
        id: ObjectId,
        reader: String,
    ) -> Result<mpsc::Receiver<Result<ObjectChunk, tonic::Status>>, tonic::Status> {
        let buffer = self
            .inner
            .store
            .get(id)
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .ok_or_else(|| {
                tonic::Status::not_found(format!(
                    "object {id} is not in the object store of node {} (freed, or lost with a restart)",
                    self.inner.node_id
                ))
            })?;
        if !reader.is_empty() {
            let mut readers = self.inner.readers.entry(id).or_default();
            if !readers.contains(&reader) {
                readers.push(reader);
            }
        }
        // Several chunks ahead of the network (the stream window holds 4 of them).
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let total = buffer.len();
            let mut offset = 0;
            loop {
                let end = (offset + CHUNK_BYTES).min(total);
                let chunk = ObjectChunk {
                    total_size: total as u64,
                    offset: offset as u64,
                    data: buffer[offset..end].to_vec(),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                offset = end;
                if offset >= total {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Frees the local copy and the copies other raylets read from here.
    pub fn delete(&self, id: ObjectId) {
        let _ = self.inner.store.delete(id);
        self.report_location(ObjectLocationUpdate {
            object_id: id.to_string(),
            change: LocationChange::LocationRemove as i32,
            node_id: self.inner.node_id.clone(),
            ..Default::default()
        });
        if let Some((_, readers)) = self.inner.readers.remove(&id) {
            for reader in readers {
                tokio::spawn(async move {
                    if let Ok(mut client) = connect(&reader) {
                        let _ = client
                            .store_delete(StoreDeleteRequest {
                                object_id: id.to_string(),
                            })
                            .await;
                    }
                });
            }
        }
    }

    /// Objects and bytes pulled from other nodes so far.
    pub fn pulled(&self) -> (u64, u64) {
        (
            self.inner
                .objects_pulled
                .load(std::sync::atomic::Ordering::Relaxed),
            self.inner
                .bytes_pulled
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Reports an object stored here (by a worker or owner of this node).
    pub fn stored(&self, id: ObjectId, size: u64) {
        self.report_location(ObjectLocationUpdate {
            object_id: id.to_string(),
            change: LocationChange::LocationAdd as i32,
            node_id: self.inner.node_id.clone(),
            size,
            ..Default::default()
        });
    }
}

/// The checks on one object arriving in chunks: the first chunk declares the size, which
/// must fit this node's store; every chunk must start where the last ended, repeat the
/// declared size, and stay within it; the stream must end at exactly that size. A peer that
/// breaks any of these is stopped before its chunk is buffered.
#[derive(Debug)]
pub(crate) struct IncomingObject {
    capacity: u64,
    declared: Option<u64>,
    received: u64,
}

impl IncomingObject {
    /// An object to be stored in a store of `capacity` bytes.
    pub(crate) fn new(capacity: u64) -> Self {
        IncomingObject {
            capacity,
            declared: None,
            received: 0,
        }
    }

    /// Checks one chunk (before the caller keeps it).
    pub(crate) fn accept(&mut self, chunk: &ObjectChunk) -> Result<(), String> {
        let declared = match self.declared {
            Some(declared) if declared != chunk.total_size => {
                return Err(format!(
                    "with a changed size: {} bytes after declaring {declared}",
                    chunk.total_size
                ))
            }
            Some(declared) => declared,
            None => {
                if chunk.total_size > self.capacity || usize::try_from(chunk.total_size).is_err() {
                    return Err(format!(
                        "of {} bytes, larger than this node's object store ({} bytes; raise \
                         object_store_bytes)",
                        chunk.total_size, self.capacity
                    ));
                }
                self.declared = Some(chunk.total_size);
                chunk.total_size
            }
        };
        if chunk.offset != self.received {
            return Err(format!(
                "out of order (offset {} after {} bytes)",
                chunk.offset, self.received
            ));
        }
        let end = self.received.saturating_add(chunk.data.len() as u64);
        if end > declared {
            return Err(format!(
                "past its declared size ({end} bytes of {declared}); the transfer was stopped"
            ));
        }
        self.received = end;
        Ok(())
    }

    /// The object's size, once the stream has ended.
    pub(crate) fn finish(&self) -> Result<u64, String> {
        let declared = self.declared.unwrap_or(0);
        if self.received != declared {
            return Err(format!(
                "only in part: {} of {declared} bytes",
                self.received
            ));
        }
        Ok(declared)
    }
}

/// Sends location changes to the GCS in batches: one proposal per [`BATCH_WINDOW`] at most,
/// so object traffic never waits on a Raft commit per object.
pub async fn report_locations(
    gcs: fleet_gcs::GcsClient,
    mut updates: mpsc::Receiver<ObjectLocationUpdate>,
) {
    while let Some(first) = updates.recv().await {
        tokio::time::sleep(BATCH_WINDOW).await;
        let mut batch = vec![first];
        while let Ok(more) = updates.try_recv() {
            batch.push(more);
            if batch.len() >= 4096 {
                break;
            }
        }
        if let Err(error) = gcs.update_object_locations(batch).await {
            // Locations are hints (owners know where their objects are); drop, do not stall.
            tracing::debug!(%error, "object location batch not recorded");
        }
    }
}

/// Location changes queued for the GCS at most; beyond, new ones are dropped and counted
/// (locations are hints: an owner knows where its objects are).
pub const LOCATION_QUEUE: usize = 65_536;

/// How long location changes gather before they go to the GCS.
pub const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(total_size: u64, offset: u64, len: usize) -> ObjectChunk {
        ObjectChunk {
            total_size,
            offset,
            data: vec![7; len],
        }
    }

    #[test]
    fn a_well_formed_transfer_is_accepted() {
        let mut incoming = IncomingObject::new(1 << 20);
        incoming.accept(&chunk(10, 0, 4)).expect("first");
        incoming.accept(&chunk(10, 4, 6)).expect("second");
        assert_eq!(incoming.finish(), Ok(10));
        assert_eq!(IncomingObject::new(1).finish(), Ok(0), "an empty object");
    }

    #[test]
    fn a_peer_sending_past_the_declared_size_is_stopped_before_buffering() {
        let mut incoming = IncomingObject::new(1 << 20);
        incoming.accept(&chunk(10, 0, 8)).expect("first");
        let error = incoming
            .accept(&chunk(10, 8, 3))
            .expect_err("past the size");
        assert!(
            error.contains("past its declared size (11 bytes of 10)"),
            "{error}"
        );
    }

    #[test]
    fn sizes_that_change_or_do_not_fit_and_gaps_are_refused() {
        let error = IncomingObject::new(100)
            .accept(&chunk(101, 0, 1))
            .expect_err("too large");
        assert!(
            error.contains("larger than this node's object store"),
            "{error}"
        );
        let mut incoming = IncomingObject::new(100);
        incoming.accept(&chunk(10, 0, 2)).expect("first");
        let error = incoming.accept(&chunk(20, 2, 2)).expect_err("changed size");
        assert!(error.contains("changed size"), "{error}");
        let error = incoming.accept(&chunk(10, 5, 2)).expect_err("gap");
        assert!(error.contains("out of order"), "{error}");
        let error = incoming.finish().expect_err("short");
        assert!(error.contains("only in part: 2 of 10"), "{error}");
    }

    proptest::proptest! {
        /// Whatever chunks a peer sends (sizes, offsets, lengths), what is kept never exceeds
        /// the declared size or the store, and the transfer completes only at exactly that size.
        #[test]
        fn no_chunk_sequence_gets_past_the_checks(
            chunks in proptest::collection::vec((0u64..64, 0u64..64, 0usize..24), 0..12),
        ) {
            let mut incoming = IncomingObject::new(48);
            let mut kept = 0u64;
            for (total_size, offset, len) in chunks {
                if incoming.accept(&chunk(total_size, offset, len)).is_err() {
                    break;
                }
                kept += len as u64;
                proptest::prop_assert!(kept <= total_size && total_size <= 48);
            }
            if let Ok(size) = incoming.finish() {
                proptest::prop_assert_eq!(size, kept);
            }
        }
    }
}
