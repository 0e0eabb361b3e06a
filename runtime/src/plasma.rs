//! Large objects live in the node's shared-memory object store (the raylet's), not in the
//! owner's memory: a process hosting the raylet uses the store directly; a worker writes
//! through the raylet and reads by mapping the object's file (zero-copy). Small objects
//! travel inline.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use fleet_gcs::auth::AuthChannel;
use fleet_proto::runtime::raylet_client::RayletClient;
use fleet_proto::runtime::{StoreDeleteRequest, StoreGetRequest, StorePutRequest};
use fleet_raylet::object_store::{map_object, ObjectBuffer, ObjectId, ObjectStore};

use crate::error::{Error, Result};

/// Values at least this large go to the object store.
pub const INLINE_LIMIT: usize = 100 * 1024;

/// An object's bytes: inline, or a view of the shared-memory store.
#[derive(Clone)]
pub enum ObjectData {
    /// In this process's memory.
    Inline(Arc<Vec<u8>>),
    /// A pinned view of the store (this process hosts it).
    Buffer(Arc<ObjectBuffer>),
    /// A read-only mapping of the object's file.
    Mapped(Arc<memmap2::Mmap>),
}

impl Deref for ObjectData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ObjectData::Inline(v) => v,
            ObjectData::Buffer(b) => b,
            ObjectData::Mapped(m) => m,
        }
    }
}

/// This process's way to the node's object store.
pub enum Plasma {
    /// The raylet runs in this process.
    Local(ObjectStore),
    /// Through the raylet; reads map the file under `shm_dir`.
    Remote {
        /// The raylet (boxed: the client is large next to the local store's handle).
        raylet: Box<RayletClient<AuthChannel>>,
        /// The store's shared-memory directory.
        shm_dir: PathBuf,
    },
}

fn store_error(id: ObjectId, error: impl std::fmt::Display) -> Error {
    Error::ObjectUnavailable {
        object_id: id.to_string(),
        reason: error.to_string(),
    }
}

impl Plasma {
    /// Stores `data` under `id`, waiting for space when the store is full.
    pub async fn put(&self, id: ObjectId, data: &[u8]) -> Result<()> {
        match self {
            Plasma::Local(store) => store.put(id, data).await.map_err(|e| store_error(id, e)),
            Plasma::Remote { raylet, .. } => {
                let mut raylet = raylet.clone();
                raylet
                    .store_put(StorePutRequest {
                        object_id: id.to_string(),
                        data: data.to_vec(),
                    })
                    .await
                    .map_err(|s| store_error(id, fleet_gcs::error::describe_status(&s)))?;
                Ok(())
            }
        }
    }

    /// Stores the parts at once when this process hosts the store and it has room now (one
    /// copy, from the caller's memory); `None` when that would mean waiting.
    pub fn try_put_now(&self, id: ObjectId, parts: &[&[u8]]) -> Option<Result<()>> {
        use futures::FutureExt;
        match self {
            Plasma::Local(store) => store
                .put_parts(id, parts)
                .now_or_never()
                .map(|r| r.map_err(|e| store_error(id, e))),
            Plasma::Remote { .. } => None,
        }
    }

    /// The object's bytes (restored from disk if it was spilled).
    pub async fn get(&self, id: ObjectId) -> Result<ObjectData> {
        match self {
            Plasma::Local(store) => match store.get(id).await.map_err(|e| store_error(id, e))? {
                Some(buffer) => Ok(ObjectData::Buffer(Arc::new(buffer))),
                None => Err(store_error(id, "not in the node's object store (freed?)")),
            },
            Plasma::Remote { raylet, shm_dir } => {
                if let Ok(map) = map_object(shm_dir, id) {
                    return Ok(ObjectData::Mapped(Arc::new(map)));
                }
                // Spilled (or moving): the raylet restores it.
                let mut raylet = raylet.clone();
                let reply = raylet
                    .store_get(StoreGetRequest {
                        object_id: id.to_string(),
                    })
                    .await
                    .map_err(|s| store_error(id, fleet_gcs::error::describe_status(&s)))?
                    .into_inner();
                if !reply.found {
                    return Err(store_error(id, "not in the node's object store (freed?)"));
                }
                Ok(ObjectData::Inline(Arc::new(reply.data)))
            }
        }
    }

    /// Frees the object: at once in a local store, else the request to send to the raylet
    /// (the caller spawns it on its task owner).
    pub fn delete(&self, id: ObjectId) -> Option<futures::future::BoxFuture<'static, ()>> {
        match self {
            Plasma::Local(store) => {
                let _ = store.delete(id);
                None
            }
            Plasma::Remote { raylet, .. } => {
                let mut raylet = raylet.clone();
                Some(Box::pin(async move {
                    let _ = raylet
                        .store_delete(StoreDeleteRequest {
                            object_id: id.to_string(),
                        })
                        .await;
                }))
            }
        }
    }
}
