//! Task submission with leases (Ray's model): a task shape (its resources) leases a worker
//! from the raylet once and then runs many tasks on it; a finished task hands its lease to
//! the next queued task of the same shape without a round trip to the raylet; a lease left
//! idle goes back shortly after.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::runtime::raylet_client::RayletClient;
use fleet_proto::runtime::{task_reply, LeaseRequest, ReturnLeaseRequest, TaskKind, TaskSpec};
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::object_ref::{resolve_args, Arg, ObjectRef, Stored};

/// How long an unused lease is kept before it goes back to the raylet.
const LEASE_IDLE: Duration = Duration::from_millis(100);
/// Lease requests of one shape outstanding at the raylet at once. Queued tasks beyond this
/// wait for a lease to be handed over; a thousand queued tasks must not become a thousand
/// requests that keep granting (and starting workers) long after the work is done.
const MAX_PENDING_LEASE_REQUESTS: usize = 4;

/// Options of a remote function call.
#[derive(Clone, Debug)]
pub struct TaskOptions {
    /// Resources: "CPU" (default 1), "GPU", "memory", custom.
    pub resources: BTreeMap<String, f64>,
    /// Retries when the worker dies (default 3).
    pub max_retries: u32,
    /// Also retry when the function returns `Err` or panics.
    pub retry_exceptions: bool,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            resources: BTreeMap::from([("CPU".to_string(), 1.0)]),
            max_retries: 3,
            retry_exceptions: false,
        }
    }
}

/// A granted lease.
#[derive(Clone, Debug)]
pub struct Lease {
    /// Raylet's lease id.
    pub lease_id: u64,
    /// The worker's CoreWorker address.
    pub worker_address: String,
    /// GPU ids of the lease.
    pub gpu_ids: Vec<u32>,
}

type ShapeKey = Vec<(String, u64)>;

fn shape_key(resources: &BTreeMap<String, f64>) -> ShapeKey {
    resources
        .iter()
        .map(|(k, v)| (k.clone(), v.to_bits()))
        .collect()
}

#[derive(Default)]
struct Shape {
    idle: Vec<(Lease, u64)>,
    waiters: VecDeque<oneshot::Sender<Result<Lease>>>,
    requesting: usize,
}

/// Leases held by this process, by shape.
pub struct LeasePool {
    raylet: RayletClient<Channel>,
    shapes: Arc<Mutex<HashMap<ShapeKey, Shape>>>,
    generation: std::sync::atomic::AtomicU64,
}

impl LeasePool {
    pub(crate) fn new(raylet: RayletClient<Channel>) -> Self {
        LeasePool {
            raylet,
            shapes: Arc::default(),
            generation: Default::default(),
        }
    }

    /// Gets a worker for `resources`: an idle lease of this shape, or a new one.
    pub async fn acquire(
        self: &Arc<Self>,
        resources: &BTreeMap<String, f64>,
        description: &str,
    ) -> Result<Lease> {
        let key = shape_key(resources);
        let (tx, rx) = oneshot::channel();
        let request_more = {
            let mut shapes = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
            let shape = shapes.entry(key.clone()).or_default();
            if let Some((lease, _)) = shape.idle.pop() {
                return Ok(lease);
            }
            shape.waiters.push_back(tx);
            let more = shape.waiters.len() > shape.requesting
                && shape.requesting < MAX_PENDING_LEASE_REQUESTS;
            if more {
                shape.requesting += 1;
            }
            more
        };
        if request_more {
            let pool = self.clone();
            let resources = resources.clone();
            let description = description.to_string();
            tokio::spawn(async move {
                let mut raylet = pool.raylet.clone();
                let reply = raylet
                    .request_worker_lease(LeaseRequest {
                        resources: resources.into_iter().collect(),
                        dedicated: false,
                        job_id: String::new(),
                        description: description.clone(),
                    })
                    .await;
                let mut shapes = pool.shapes.lock().unwrap_or_else(|e| e.into_inner());
                let shape = shapes.entry(key.clone()).or_default();
                shape.requesting = shape.requesting.saturating_sub(1);
                match reply {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        let lease = Lease {
                            lease_id: reply.lease_id,
                            worker_address: reply.worker_address,
                            gpu_ids: reply.gpu_ids,
                        };
                        drop(shapes);
                        pool.hand_over(key, lease);
                    }
                    Err(status) => {
                        // Infeasible or failed to start a worker: every waiter of this shape
                        // would get the same answer.
                        let error = if status.code() == tonic::Code::FailedPrecondition {
                            Error::Infeasible(status.message().to_string())
                        } else {
                            Error::rpc(format!("leasing a worker for {description}"), &status)
                        };
                        for waiter in shape.waiters.drain(..) {
                            let _ = waiter.send(Err(error.clone()));
                        }
                    }
                }
            });
        }
        rx.await
            .map_err(|_| Error::Internal("lease request dropped".into()))?
    }

    /// Gives a lease to the next waiter of its shape, or parks it and returns it to the
    /// raylet if nobody wants it soon.
    fn hand_over(self: &Arc<Self>, key: ShapeKey, lease: Lease) {
        let mut lease = Some(lease);
        let mut shapes = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        let shape = shapes.entry(key.clone()).or_default();
        while let Some(waiter) = shape.waiters.pop_front() {
            match lease.take() {
                Some(l) => match waiter.send(Ok(l)) {
                    Ok(()) => return,
                    Err(Ok(l)) => lease = Some(l),
                    Err(Err(_)) => return,
                },
                None => return,
            }
        }
        let Some(lease) = lease else { return };
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lease_id = lease.lease_id;
        shape.idle.push((lease, generation));
        drop(shapes);
        let pool = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LEASE_IDLE).await;
            let expired = {
                let mut shapes = pool.shapes.lock().unwrap_or_else(|e| e.into_inner());
                let shape = shapes.entry(key).or_default();
                let before = shape.idle.len();
                shape
                    .idle
                    .retain(|(l, g)| !(l.lease_id == lease_id && *g == generation));
                shape.idle.len() < before
            };
            if expired {
                let mut raylet = pool.raylet.clone();
                let _ = raylet
                    .return_worker_lease(ReturnLeaseRequest {
                        lease_id,
                        worker_failed: false,
                    })
                    .await;
            }
        });
    }

    /// Returns a lease after use: to the next task of its shape, or (failed) to the raylet.
    pub fn release(
        self: &Arc<Self>,
        resources: &BTreeMap<String, f64>,
        lease: Lease,
        worker_failed: bool,
    ) {
        if worker_failed {
            let mut raylet = self.raylet.clone();
            tokio::spawn(async move {
                let _ = raylet
                    .return_worker_lease(ReturnLeaseRequest {
                        lease_id: lease.lease_id,
                        worker_failed: true,
                    })
                    .await;
            });
            return;
        }
        self.hand_over(shape_key(resources), lease);
    }
}

/// Submits a remote function call; the returned reference resolves to its result.
pub fn submit_task<T>(
    function: &'static str,
    args: Vec<Arg>,
    options: TaskOptions,
) -> ObjectRef<T> {
    let Ok(runtime) = crate::context::current() else {
        // Without a runtime, awaiting the reference reports NotInitialized.
        return ObjectRef::new(crate::ids::new_id("obj"), String::new());
    };
    let task_id = crate::ids::new_id("task");
    let object_id = format!("{task_id}.ret");
    let result = ObjectRef::new(object_id.clone(), runtime.address.clone());
    runtime.store.slot(&object_id);
    let rt = runtime.clone();
    runtime.runtime.spawn(async move {
        let outcome = run_task(&rt, &task_id, function, args, &options).await;
        rt.store.set_stored(&object_id, outcome);
    });
    result
}

async fn run_task(
    runtime: &Arc<crate::context::CoreWorker>,
    task_id: &str,
    function: &str,
    args: Vec<Arg>,
    options: &TaskOptions,
) -> Result<Stored> {
    let args = resolve_args(args).await?;
    let pool = runtime.leases.clone();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let lease = pool.acquire(&options.resources, function).await?;
        let spec = TaskSpec {
            task_id: task_id.to_string(),
            job_id: runtime.job_id.clone(),
            kind: TaskKind::Function as i32,
            function: function.to_string(),
            args: args
                .values
                .iter()
                .map(|a| fleet_proto::runtime::Arg {
                    value: Some(fleet_proto::runtime::arg::Value::Inline(a.clone())),
                })
                .collect(),
            gpu_ids: lease.gpu_ids.clone(),
            owner_address: runtime.address.clone(),
            ..TaskSpec::default()
        };
        match runtime.push(&lease.worker_address, spec).await {
            Ok(reply) => {
                pool.release(&options.resources, lease, false);
                runtime.pin_retained(&reply.retained).await;
                match reply.result {
                    Some(task_reply::Result::Value(bytes)) => {
                        return Ok(Stored::Inline(Arc::new(bytes)))
                    }
                    Some(task_reply::Result::StoredId(id)) => return stored_id(&id),
                    Some(task_reply::Result::Error(error)) => {
                        let retryable = options.retry_exceptions && error.kind != "SYSTEM";
                        if retryable && attempts <= options.max_retries {
                            continue;
                        }
                        return Err(crate::executor::error_from_wire(error));
                    }
                    None => return Err(Error::Internal(format!("{function}: empty reply"))),
                }
            }
            Err(cause) => {
                pool.release(&options.resources, lease, true);
                if attempts > options.max_retries {
                    return Err(Error::WorkerDied {
                        function: function.to_string(),
                        attempts,
                        cause,
                    });
                }
                tracing::debug!(function, attempts, "worker failed; retrying the task");
            }
        }
    }
}

/// A task's result that its worker put in the node's object store.
pub(crate) fn stored_id(id: &str) -> Result<Stored> {
    id.parse()
        .map(Stored::Plasma)
        .map_err(|e| Error::Internal(format!("a worker named an invalid stored id '{id}': {e}")))
}
