//! `fleet::init()`: three ways to start.
//!
//! - Worker mode (`FLEET_WORKER_ID` is set: this process was started by a raylet): serve tasks
//!   until the raylet goes away or says exit, then exit the process. Never returns.
//! - Cluster mode (`FLEET_ADDRESS` or `InitOptions::address`): join a running cluster (its
//!   GCS, and a live raylet registered there).
//! - Embedded mode (no address): start a one-replica GCS and a raylet inside this process,
//!   as real gRPC servers, with this program's own binary as the worker executable.

use fleet_gcs::clock::now_ms;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, OnceLock};

use fleet_gcs::server::EmbeddedGcs;
use fleet_gcs::GcsClient;
use fleet_proto::gcs::{JobInfo, NodeInfo, NodeState};
use fleet_proto::runtime::core_worker_server::CoreWorkerServer;
use fleet_proto::runtime::raylet_client::RayletClient;
use fleet_proto::runtime::RegisterWorkerRequest;
use fleet_raylet::worker_pool::env;
use fleet_raylet::RayletConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::context::{install, CoreWorker, CoreWorkerParts, MAX_MESSAGE_BYTES};
use crate::error::{Error, Result};
use crate::executor::{install_panic_hook, Executor};
use crate::plasma::Plasma;
use fleet_raylet::object_store::ObjectStore;

/// How to start.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// A running cluster's GCS (comma-separated); `FLEET_ADDRESS` when unset; embedded when
    /// neither.
    pub address: Option<String>,
    /// Embedded mode: CPUs to offer (default: this machine's).
    pub num_cpus: Option<f64>,
    /// Embedded mode: GPUs to offer (default: detected; set it to fake GPUs for tests).
    pub num_gpus: Option<u32>,
    /// Embedded mode: custom resources.
    pub resources: BTreeMap<String, f64>,
    /// Embedded mode: the node's labels (for label selectors).
    pub labels: BTreeMap<String, String>,
    /// Namespace of named actors (default "default").
    pub namespace: Option<String>,
    /// Embedded mode: the node's object store capacity in bytes (default 2 GiB); beyond it,
    /// least recently used objects spill to disk.
    pub object_store_bytes: Option<u64>,
}

struct Embedded {
    _gcs: EmbeddedGcs,
    raylet: fleet_raylet::server::RunningRaylet,
    _dir: tempfile::TempDir,
    shm_dir: std::path::PathBuf,
}

static EMBEDDED: OnceLock<tokio::sync::Mutex<Option<Embedded>>> = OnceLock::new();

/// Starts Fleet in this process with default options.
pub async fn init() -> Result<()> {
    init_with(InitOptions::default()).await
}

async fn serve_core_worker(listener: TcpListener, executor: Executor) {
    let incoming = direct_calls_and_grpc(listener, executor.clone());
    let service = CoreWorkerServer::new(executor)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // TLS was checked when the process started (`check_tls`).
    let builder = match fleet_gcs::tls::server_builder() {
        Ok(builder) => builder,
        Err(error) => {
            tracing::error!(%error, "core worker server cannot start");
            return;
        }
    };
    if let Err(error) = builder
        .layer(fleet_gcs::auth::RequireToken::layer_for_process())
        .add_service(service)
        .serve_with_incoming(incoming)
        .await
    {
        tracing::error!(%error, "core worker server failed");
    }
}

/// Serves the direct call path (`direct`) next to gRPC: on an abstract Unix socket named
/// after the address, and on the TCP port itself, where a connection's first bytes say
/// which it is; returns the gRPC connections.
fn direct_calls_and_grpc(
    listener: TcpListener,
    executor: Executor,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio::net::TcpStream>> {
    let (grpc, incoming) = tokio::sync::mpsc::channel(64);
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let tasks = executor.runtime().tasks.clone();
    let direct = crate::direct::enabled();
    if direct {
        match crate::direct::listen_unix(&address) {
            Ok(unix) => {
                let executor = executor.clone();
                let owner = tasks.clone();
                tasks.spawn(async move {
                    loop {
                        match unix.accept().await {
                            Ok((stream, _)) => owner.spawn(crate::direct::serve(
                                crate::direct::Conn::Unix(stream),
                                executor.clone(),
                            )),
                            Err(error) => {
                                // Out of descriptors, most likely: wait instead of spinning.
                                tracing::warn!(%error, "direct call socket: accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            }
                        }
                    }
                });
            }
            Err(error) => tracing::warn!(%error, "no local socket for direct calls; gRPC only"),
        }
    }
    let owner = tasks.clone();
    tasks.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let grpc = grpc.clone();
                    let executor = executor.clone();
                    owner.spawn(async move {
                        if direct
                            && crate::direct::tcp_allowed()
                            && crate::direct::is_direct(&stream).await
                        {
                            crate::direct::serve(crate::direct::Conn::Tcp(stream), executor).await;
                        } else {
                            let _ = grpc.send(Ok(stream)).await;
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "core worker listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// Binds this process's server on its node's IP (`FLEET_NODE_IP`, which the raylet hands its
/// workers; 127.0.0.1 when unset), on a free port.
async fn bind_node_port() -> Result<(TcpListener, String)> {
    let ip = fleet_gcs::transport::NetworkSettings::current().bind_ip();
    let listener = TcpListener::bind((ip, 0))
        .await
        .map_err(|e| Error::Internal(format!("cannot bind a port on {ip} (FLEET_NODE_IP): {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?
        .to_string();
    Ok((listener, address))
}

fn raylet_client(address: &str) -> Result<RayletClient<fleet_gcs::auth::AuthChannel>> {
    let channel =
        fleet_gcs::transport::Connector::channel(&fleet_gcs::transport::TcpConnector, address)
            .map_err(Error::Internal)?;
    // A worker's put reaches its raylet whole (for now), so raylet messages are larger.
    Ok(RayletClient::new(channel)
        .max_decoding_message_size(fleet_raylet::server::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(fleet_raylet::server::MAX_MESSAGE_BYTES))
}

/// Starts Fleet in this process.
pub async fn init_with(options: InitOptions) -> Result<()> {
    // A driver or host talking to thousands of actors holds many connections.
    fleet_raylet::limits::raise_open_files_limit();
    // Connections are driven by this (the process's main) runtime, never by an actor's
    // thread that happened to use one first.
    fleet_gcs::transport::set_io_runtime(tokio::runtime::Handle::current());
    if let Ok(worker_id) = std::env::var(env::WORKER_ID) {
        run_worker(worker_id).await;
    }
    // A TLS misconfiguration is named here, before any connection fails because of it.
    fleet_gcs::tls::current().map_err(Error::Internal)?;
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let address = options
        .address
        .clone()
        .or_else(|| std::env::var("FLEET_ADDRESS").ok())
        .filter(|a| !a.is_empty());
    let cluster_mode = address.is_some();
    let (gcs, raylet_address, node_id, local_store) = match address {
        Some(address) => {
            let gcs = GcsClient::connect(&address)?;
            let node = pick_node(&gcs, &address).await?;
            (gcs, node.address, node.node_id, None)
        }
        None => start_embedded(&options).await?,
    };
    let job_id = std::env::var(env::JOB_ID)
        .ok()
        .filter(|j| !j.is_empty())
        .unwrap_or_else(|| crate::ids::new_id("job"));
    // On a cluster, workers run this program: uploaded once, fetched once per node.
    let job_binary = if cluster_mode {
        upload_binary(&raylet_address).await?
    } else {
        String::new()
    };
    let (listener, address) = bind_node_port().await?;
    let worker_id = crate::ids::new_id("driver");
    let runtime = Arc::new(CoreWorker::new(CoreWorkerParts {
        job_id: job_id.clone(),
        worker_id: worker_id.clone(),
        node_id,
        address: address.clone(),
        namespace,
        gpu_ids: Vec::new(),
        gcs: gcs.clone(),
        raylet: raylet_client(&raylet_address)?,
        raylet_address: raylet_address.clone(),
        job_binary,
        plasma: match local_store {
            Some(store) => Plasma::Local(store),
            None => Plasma::Remote {
                raylet: Box::new(raylet_client(&raylet_address)?),
                shm_dir: std::path::PathBuf::from(
                    std::env::var(env::OBJECT_STORE_DIR).unwrap_or_default(),
                ),
            },
        },
        is_driver: true,
    }));
    install(runtime.clone())?;
    runtime.tasks.spawn(serve_core_worker(
        listener,
        Executor::new(runtime.clone(), CancellationToken::new()),
    ));
    let entrypoint = std::env::args().collect::<Vec<_>>().join(" ");
    gcs.add_job(JobInfo {
        job_id: runtime.job_id.clone(),
        driver_address: address.clone(),
        entrypoint,
        start_ms: now_ms(),
        ..JobInfo::default()
    })
    .await?;
    attach_driver(&runtime, &raylet_address, job_id, address).await?;
    runtime.tasks.spawn(watch_node_deaths(runtime.clone()));
    Ok(())
}

/// Follows the nodes table: when the GCS declares a node dead, calls in flight to its
/// workers fail at once (see `CoreWorker::on_node_dead`).
async fn watch_node_deaths(runtime: Arc<CoreWorker>) {
    use prost::Message;
    let mut watch = runtime.gcs.watch(
        vec![fleet_proto::gcs::WatchFilter {
            table: fleet_proto::gcs::Table::Nodes as i32,
            ..Default::default()
        }],
        0,
    );
    loop {
        match watch.next().await {
            Ok(update) => {
                for event in update.events {
                    let Some(record) = event.record else { continue };
                    let Ok(node) = NodeInfo::decode(record.value.as_slice()) else {
                        continue;
                    };
                    if node.state == NodeState::NodeDead as i32 {
                        runtime.on_node_dead(&node.node_id, &node.death_cause);
                        crate::placement::on_node_dead(&runtime, &node.node_id);
                    }
                }
            }
            Err(error) => {
                tracing::debug!(%error, "nodes watch interrupted; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// The node this driver uses: `FLEET_NODE_ID`'s, else the first live one.
async fn pick_node(gcs: &GcsClient, address: &str) -> Result<NodeInfo> {
    let wanted = std::env::var("FLEET_NODE_ID")
        .ok()
        .filter(|n| !n.is_empty());
    let mut alive: Vec<NodeInfo> = gcs
        .list_nodes()
        .await?
        .into_iter()
        .filter(|n| n.state == NodeState::NodeAlive as i32 && !n.address.is_empty())
        .collect();
    alive.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    if let Some(wanted) = wanted {
        return alive.into_iter().find(|n| n.node_id == wanted).ok_or_else(|| {
            Error::Internal(format!(
                "FLEET_NODE_ID={wanted} is not a live node of the cluster at {address}; see `fleet list nodes`"
            ))
        });
    }
    alive.into_iter().next().ok_or_else(|| {
        Error::Internal(format!("the cluster at {address} has no live node; start one (fleet cluster up) or unset FLEET_ADDRESS to run embedded"))
    })
}

/// Uploads this program to its raylet unless it has it already; returns its digest.
async fn upload_binary(raylet_address: &str) -> Result<String> {
    let binary = std::env::current_exe().map_err(|e| {
        Error::Internal(format!(
            "cannot find this program's binary to upload it: {e}"
        ))
    })?;
    let path = binary.clone();
    let digest = tokio::task::spawn_blocking(move || fleet_raylet::binaries::digest_file(&path))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(|e| Error::Internal(format!("cannot read {}: {e}", binary.display())))?;
    let mut raylet = raylet_client(raylet_address)?;
    let present = raylet
        .has_binary(fleet_proto::runtime::HasBinaryRequest {
            digest: digest.clone(),
        })
        .await
        .map_err(|s| Error::rpc("asking the raylet for the job binary", &s))?
        .into_inner()
        .present;
    if !present {
        let data = tokio::fs::read(&binary)
            .await
            .map_err(|e| Error::Internal(format!("cannot read {}: {e}", binary.display())))?;
        let first_digest = digest.clone();
        let chunks: Vec<fleet_proto::runtime::BinaryChunk> = data
            .chunks(1 << 20)
            .enumerate()
            .map(|(i, chunk)| fleet_proto::runtime::BinaryChunk {
                digest: if i == 0 {
                    first_digest.clone()
                } else {
                    String::new()
                },
                data: chunk.to_vec(),
            })
            .collect();
        raylet
            .upload_binary(tokio_stream::iter(chunks))
            .await
            .map_err(|s| Error::rpc("uploading the job binary", &s))?;
        tracing::info!(%digest, bytes = data.len(), "uploaded the job binary");
    }
    Ok(digest)
}

/// Holds a stream open to the raylet for the driver's lifetime: when this process dies the
/// raylet sees it close and fails the job, and every node stops its workers.
async fn attach_driver(
    runtime: &CoreWorker,
    raylet_address: &str,
    job_id: String,
    driver_address: String,
) -> Result<()> {
    let mut raylet = raylet_client(raylet_address)?;
    let mut stream = raylet
        .attach_driver(fleet_proto::runtime::AttachDriverRequest {
            job_id,
            driver_address,
        })
        .await
        .map_err(|s| Error::rpc("attaching the driver to its raylet", &s))?
        .into_inner();
    // Held open for the driver's life: its end tells the raylet the driver is gone.
    runtime.attach(tokio::spawn(async move {
        while let Ok(Some(_)) = stream.message().await {}
    }));
    Ok(())
}

async fn start_embedded(
    options: &InitOptions,
) -> Result<(GcsClient, String, String, Option<ObjectStore>)> {
    sweep_stale_embedded();
    // The embedded cluster's token lives in memory (this process's, or FLEET_TOKEN's); its
    // workers get it through their environment.
    fleet_gcs::auth::ensure_process_token();
    let dir = tempfile::Builder::new()
        .prefix("fleet-embedded-")
        .tempdir()
        .map_err(|e| Error::Internal(format!("cannot create a temp dir: {e}")))?;
    mark_owner(dir.path());
    let gcs_server = EmbeddedGcs::start(dir.path().join("gcs")).await?;
    let gcs = GcsClient::connect(&gcs_server.address)?;
    let node_id = crate::ids::new_id("node");
    let cpus = options.num_cpus.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0)
    });
    let num_gpus = match options.num_gpus {
        Some(n) => n,
        None => fleet_raylet::gpu::detect_gpus().count,
    };
    let binary = std::env::current_exe().map_err(|e| {
        Error::Internal(format!(
            "cannot find this program's binary to start workers: {e}"
        ))
    })?;
    let mut config = RayletConfig::local(
        node_id.clone(),
        cpus,
        num_gpus,
        binary,
        gcs_server.address.clone(),
    );
    config.worker_args = std::env::args().skip(1).collect();
    config.resources.extend(options.resources.clone());
    config.labels.extend(options.labels.clone());
    if let Some(bytes) = options.object_store_bytes {
        config.object_store_bytes = bytes;
    }
    // Shared memory when the machine has it, so workers map objects without copies.
    let shm_root = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        dir.path().to_path_buf()
    };
    config.object_store_dir = shm_root.join(format!("fleet-{node_id}"));
    let shm_dir = config.object_store_dir.clone();
    config.spill_dir = dir.path().join("spill");
    // Job binaries and the like go with the cluster's directory (removed with it, or swept
    // when its process died), not into a temp directory of their own that nothing removes
    // (each kept a copy of the program: tens of MiB per run).
    config.node_dir = dir.path().join("node");
    if std::fs::create_dir_all(&config.object_store_dir).is_ok() {
        mark_owner(&config.object_store_dir);
    }
    let mut total: BTreeMap<String, f64> = config.resources.clone();
    total.insert("GPU".into(), f64::from(num_gpus));
    let (listener, _) = bind_node_port().await?;
    let raylet = fleet_raylet::server::start(config, listener).await?;
    gcs.register_node(NodeInfo {
        node_id: node_id.clone(),
        address: raylet.address.clone(),
        resources_total: total.into_iter().collect(),
        registered_at_ms: now_ms(),
        ..NodeInfo::default()
    })
    .await?;
    let raylet_address = raylet.address.clone();
    let store = raylet.service.object_store().clone();
    let cell = EMBEDDED.get_or_init(|| tokio::sync::Mutex::new(None));
    *cell.lock().await = Some(Embedded {
        _gcs: gcs_server,
        raylet,
        _dir: dir,
        shm_dir,
    });
    Ok((gcs, raylet_address, node_id, Some(store)))
}

const OWNER_FILE: &str = ".fleet-owner-pid";

/// Records which process an embedded cluster's directories belong to, so that a later start
/// can remove them if that process died without cleaning up (SIGKILL, a crash).
fn mark_owner(dir: &std::path::Path) {
    let _ = std::fs::write(dir.join(OWNER_FILE), std::process::id().to_string());
}

/// Removes the shared-memory and temporary directories of embedded clusters whose process is
/// gone: objects in `/dev/shm` are memory, and a killed driver cannot free them itself.
/// Returns how many were removed.
pub fn sweep_stale_embedded() -> usize {
    let roots = [
        (std::path::PathBuf::from("/dev/shm"), "fleet-node-"),
        (std::env::temp_dir(), "fleet-embedded-"),
    ];
    let mut removed = 0;
    for (root, prefix) in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with(prefix) {
                continue;
            }
            let path = entry.path();
            let Ok(pid) = std::fs::read_to_string(path.join(OWNER_FILE)) else {
                continue;
            };
            let Ok(pid) = pid.trim().parse::<u32>() else {
                continue;
            };
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !alive && std::fs::remove_dir_all(&path).is_ok() {
                tracing::info!(path = %path.display(), pid, "removed the directory of a dead embedded cluster");
                removed += 1;
            }
        }
    }
    removed
}

/// How long `shutdown()` waits for the background tasks it cancelled.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Marks this driver's job finished, ends every background task of this process (calls
/// still waiting fail with `Error::ShutDown`) and stops the embedded cluster, if any (its
/// workers exit). Called at the end of `#[fleet::main]`.
pub async fn shutdown() {
    if let Some(runtime) = crate::context::try_current() {
        // First the work: every task ends and whoever waits on one is answered.
        let left = runtime.tasks.shutdown(SHUTDOWN_GRACE).await;
        if left > 0 {
            tracing::warn!(
                tasks = left,
                "background tasks did not end within the shutdown grace"
            );
        }
        if runtime.is_driver {
            let finished = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                runtime.gcs.finish_job(
                    &runtime.job_id,
                    fleet_proto::gcs::JobState::JobSucceeded,
                    now_ms(),
                    "the driver finished",
                ),
            )
            .await;
            if !matches!(finished, Ok(Ok(_))) {
                tracing::debug!("could not record the job's end");
            }
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                runtime
                    .gcs
                    .mark_job_actors_dead(&runtime.job_id, "its driver finished"),
            )
            .await;
        }
        // Last, once the job's end is recorded: the stream that tells the raylet this
        // driver lives (closing it earlier would have the raylet fail the job).
        runtime.detach_driver();
    }
    if let Some(cell) = EMBEDDED.get() {
        if let Some(embedded) = cell.lock().await.take() {
            embedded.raylet.stop().await;
            let _ = std::fs::remove_dir_all(&embedded.shm_dir);
        }
    }
}

/// Worker mode: serve tasks until the raylet goes away or asks us to exit.
async fn run_worker(worker_id: String) -> ! {
    install_panic_hook();
    let code = match serve_worker(worker_id).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("fleet worker: {error:#}");
            1
        }
    };
    std::process::exit(code)
}

async fn serve_worker(worker_id: String) -> Result<()> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| Error::Internal(format!("worker started without {name}")))
    };
    let raylet_address = var(env::RAYLET_ADDRESS)?;
    let gcs_address = var(env::GCS_ADDRESS)?;
    let node_id = var(env::NODE_ID)?;
    let gpu_ids: Vec<u32> = std::env::var(env::GPU_IDS)
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let (listener, address) = bind_node_port().await?;
    let mut raylet = raylet_client(&raylet_address)?;
    let runtime = Arc::new(CoreWorker::new(CoreWorkerParts {
        job_id: std::env::var(env::JOB_ID).unwrap_or_default(),
        worker_id: worker_id.clone(),
        node_id,
        address: address.clone(),
        namespace: "default".into(),
        gpu_ids,
        gcs: GcsClient::connect(&gcs_address)?,
        raylet: raylet.clone(),
        raylet_address: raylet_address.clone(),
        job_binary: std::env::var(env::JOB_BINARY).unwrap_or_default(),
        plasma: Plasma::Remote {
            raylet: Box::new(raylet.clone()),
            shm_dir: std::path::PathBuf::from(var(env::OBJECT_STORE_DIR)?),
        },
        is_driver: false,
    }));
    install(runtime.clone())?;
    let exit = CancellationToken::new();
    runtime.tasks.spawn(serve_core_worker(
        listener,
        Executor::new(runtime.clone(), exit.clone()),
    ));
    if let Err(status) = raylet
        .register_worker(RegisterWorkerRequest {
            worker_id,
            address,
            pid: std::process::id(),
        })
        .await
    {
        // The raylet stopped while this worker was starting: nothing to serve.
        tracing::debug!(status = %status.message(), "raylet gone before registration");
        return Ok(());
    }
    // The raylet holds our stdin: EOF means it is gone or retired us.
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut buffer = [0u8; 64];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buffer) {
            if n == 0 {
                break;
            }
        }
    });
    tokio::select! {
        _ = stdin_closed => {}
        _ = exit.cancelled() => {
            // Let the Exit reply go out.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// The address of the cluster this process is part of (its GCS replicas, comma-separated): what
/// another program sets as `FLEET_ADDRESS` to join it, including an embedded cluster.
pub fn cluster_address() -> Result<String> {
    Ok(crate::context::current()?.gcs.endpoints().join(","))
}

/// The token of the cluster this process is part of: what another program sets as
/// `FLEET_TOKEN` (next to [`cluster_address`]'s `FLEET_ADDRESS`) to join it. A secret: hand
/// it over through the environment or a file of mode 0600, never a command line.
pub fn cluster_token() -> Result<String> {
    fleet_gcs::auth::process_token()
        .map(|t| t.secret().to_string())
        .ok_or_else(|| Error::Internal(fleet_gcs::auth::describe_own_token()))
}

/// The id of the node this process runs on.
pub fn node_id() -> String {
    crate::context::try_current()
        .map(|r| r.node_id.clone())
        .unwrap_or_default()
}

/// The GPU ids this process may use (those of its actor or task's lease).
pub fn gpu_ids() -> Vec<u32> {
    crate::context::try_current()
        .map(|r| r.gpu_ids.clone())
        .unwrap_or_default()
}
