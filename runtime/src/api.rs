//! `put`, `get`, `get_all`, `wait`, `kill`.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::actor::ActorHandle;
use crate::codec;
use std::sync::Arc;

use crate::context::{current, CoreWorker};
use crate::error::Result;
use crate::object_ref::{ObjectRef, Stored};
use crate::plasma::INLINE_LIMIT;
use fleet_raylet::object_store::ObjectId;

/// Stores a value owned by this process; the reference can be passed to tasks and actors.
///
/// Small values stay in this process's memory. Large ones go to the node's shared-memory
/// object store: written before `put` returns when the store has room (vectors of numbers
/// with one copy, straight from their memory), otherwise in the background, waiting for room
/// (readers wait for them).
pub fn put<T: Serialize + 'static>(value: &T) -> Result<ObjectRef<T>> {
    let runtime = current()?;
    let id = crate::ids::new_id("put");
    let reference = ObjectRef::new(id.clone(), runtime.address.clone());
    let raw = codec::raw_parts(value);
    let encoded_len = match &raw {
        Some((header, body)) => header.len() + body.len(),
        None => 0,
    };
    if raw.is_none() || encoded_len < INLINE_LIMIT {
        let bytes = codec::encode(value, "the value passed to fleet::put")?;
        if bytes.len() < INLINE_LIMIT {
            runtime.store.set(&id, Ok(bytes));
            return Ok(reference);
        }
        store_large(&runtime, &id, &[&bytes]).or_else(|()| {
            spawn_store(&runtime, id, bytes);
            Ok::<(), crate::error::Error>(())
        })?;
        return Ok(reference);
    }
    if let Some((header, body)) = raw {
        if store_large(&runtime, &id, &[&header, body]).is_err() {
            let mut bytes = Vec::with_capacity(encoded_len);
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(body);
            spawn_store(&runtime, id, bytes);
        }
    }
    Ok(reference)
}

/// An already encoded value stored in the node's object store (whatever its size) as an
/// object owned by this process, as an argument by reference: a task's or call's by-value
/// argument too large to travel inline.
pub(crate) fn put_encoded(runtime: &Arc<CoreWorker>, bytes: Vec<u8>) -> crate::object_ref::Arg {
    use crate::object_ref::IntoArg;
    let id = crate::ids::new_id("arg");
    let reference: ObjectRef<()> = ObjectRef::new(id.clone(), runtime.address.clone());
    if store_large(runtime, &id, &[&bytes]).is_err() {
        spawn_store(runtime, id, bytes);
    }
    <ObjectRef<()> as IntoArg<()>>::into_arg(reference)
}

/// Writes a large value to the object store now if there is room; `Err(())` if it must wait.
fn store_large(runtime: &Arc<CoreWorker>, id: &str, parts: &[&[u8]]) -> Result<(), ()> {
    let stored = ObjectId::random();
    match runtime.plasma.try_put_now(stored, parts) {
        Some(outcome) => {
            runtime.store.set_stored(
                id,
                outcome.map(|()| Stored::Plasma(stored, runtime.local_location())),
            );
            Ok(())
        }
        None => Err(()),
    }
}

/// Writes a large value in the background (the store must make room first).
fn spawn_store(runtime: &Arc<CoreWorker>, id: String, bytes: Vec<u8>) {
    runtime.store.slot(&id);
    let stored = ObjectId::random();
    let rt = runtime.clone();
    let stopped = runtime.clone();
    let answer_id = id.clone();
    runtime.tasks.spawn_answering(
        async move {
            let outcome = rt
                .plasma
                .put(stored, &bytes)
                .await
                .map(|()| Stored::Plasma(stored, rt.local_location()));
            rt.store.set_stored(&id, outcome);
        },
        move || {
            stopped
                .store
                .set(&answer_id, Err(crate::error::Error::ShutDown))
        },
    );
}

/// The value of a reference.
pub async fn get<T: DeserializeOwned>(object: &ObjectRef<T>) -> Result<T> {
    object.get().await
}

/// The value of a reference, or `Error::GetTimeout` naming it (and its task) when it is not
/// ready within `after` (Ray's `ray.get(ref, timeout=...)`).
pub async fn get_timeout<T: DeserializeOwned>(object: &ObjectRef<T>, after: Duration) -> Result<T> {
    object.timeout(after).await
}

/// The values of many references, in order.
pub async fn get_all<T: DeserializeOwned>(objects: &[ObjectRef<T>]) -> Result<Vec<T>> {
    let values = futures::future::join_all(objects.iter().map(|o| o.get())).await;
    values.into_iter().collect()
}

/// Waits until `num_returns` of `objects` are ready (a value or an error) or `timeout`
/// passes; returns (ready, not ready), each in the order given. A ready object is also
/// brought to this node (Ray's default, `fetch_local=True`); see [`wait_with`].
pub async fn wait<T>(
    objects: &[ObjectRef<T>],
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<(Vec<ObjectRef<T>>, Vec<ObjectRef<T>>)> {
    let mut options = WaitOptions::new(num_returns);
    options.timeout = timeout;
    wait_with(objects, options).await
}

/// How [`wait_with`] waits.
#[derive(Clone, Copy, Debug)]
pub struct WaitOptions {
    num_returns: usize,
    timeout: Option<Duration>,
    fetch_local: bool,
}

impl WaitOptions {
    /// Wait for `num_returns` objects, as long as it takes, fetching each to this node.
    pub fn new(num_returns: usize) -> Self {
        WaitOptions {
            num_returns,
            timeout: None,
            fetch_local: true,
        }
    }

    /// Give up after `timeout` (the objects not ready by then are returned as such).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// `false`: an object is ready once it exists anywhere; its bytes are not brought to
    /// this node (Ray's `fetch_local=False`), for a caller that only passes the references
    /// on to tasks elsewhere.
    pub fn fetch_local(mut self, fetch_local: bool) -> Self {
        self.fetch_local = fetch_local;
        self
    }
}

/// [`wait`] with options (`fetch_local`).
pub async fn wait_with<T>(
    objects: &[ObjectRef<T>],
    options: WaitOptions,
) -> Result<(Vec<ObjectRef<T>>, Vec<ObjectRef<T>>)> {
    let runtime = current()?;
    let wanted = options.num_returns.min(objects.len());
    let fetch_local = options.fetch_local;
    let mut pending: futures::stream::FuturesUnordered<_> = objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let runtime = runtime.clone();
            let o = o.clone();
            async move {
                if fetch_local {
                    let _ = runtime.get_bytes(o.id(), o.owner()).await;
                } else {
                    runtime.object_ready(o.id(), o.owner()).await;
                }
                i
            }
        })
        .collect();
    let mut ready_index = Vec::new();
    let deadline = options.timeout.map(|t| tokio::time::Instant::now() + t);
    while ready_index.len() < wanted {
        let next = futures::StreamExt::next(&mut pending);
        let index = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, next).await {
                Ok(index) => index,
                Err(_) => break,
            },
            None => next.await,
        };
        match index {
            Some(i) => ready_index.push(i),
            None => break,
        }
    }
    ready_index.sort_unstable();
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        if ready_index.binary_search(&i).is_ok() {
            ready.push(object.clone());
        } else {
            not_ready.push(object.clone());
        }
    }
    Ok((ready, not_ready))
}

/// Kills an actor (see [`ActorHandle::kill`]).
pub async fn kill(handle: &ActorHandle) -> Result<()> {
    handle.kill().await
}
