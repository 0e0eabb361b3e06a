//! One GCS replica: opens its storage, starts the Raft driver and serves gRPC until
//! shutdown. The listener and the connector are passed in, so tests bind `127.0.0.1:0` and
//! the simulation runs the same code over `turmoil`'s network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::gcs::gcs_client::GcsClient as GcsGrpcClient;
use fleet_proto::gcs::gcs_server::GcsServer;
use fleet_proto::gcs::raft_transport_server::RaftTransportServer;
use fleet_proto::gcs::{Member, StateSnapshot, StatusRequest, StatusResponse};
use futures::Stream;
use prost::Message as _;
use raft::prelude::ConfState;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::{Connected, TcpIncoming};

use crate::config::GcsConfig;
use crate::error::{Error, Result};
use crate::node::Driver;
use crate::service::{GcsService, RaftService};
use crate::storage::{Identity, LogStore, RaftDisk, SledDisk};
use crate::transport::{
    Connector, PeerTransport, TcpConnector, MAX_CLIENT_REQUEST_BYTES, MAX_MESSAGE_BYTES,
};

/// How long an empty replica waits for each peer's status before deciding it starts a new
/// cluster.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens the replica's storage and decides how an empty disk starts:
/// - with `join`, or when a peer shows the cluster already exists (its data dir was lost,
///   or it starts after the others did), it starts empty and marked as catching up: it
///   does not vote or campaign until a leader has brought it up to date;
/// - otherwise it bootstraps a new cluster's membership from `peers`.
///
/// A replica whose disk is lost while every peer is unreachable cannot tell that it is not
/// new; `--join` makes the choice explicit (docs/gcs.md, "Replacing a lost disk").
pub async fn open_store(
    config: &GcsConfig,
    disk: Box<dyn RaftDisk>,
    connector: &Arc<dyn Connector>,
) -> Result<LogStore> {
    let identity = Identity {
        replica_id: config.id,
        cluster_name: config.cluster_name.clone(),
    };
    let (mut store, _) = LogStore::open(disk, &identity).map_err(|error| match error {
        Error::DataDirMismatch {
            found_id,
            found_cluster,
            expected_id,
            expected_cluster,
            ..
        } => Error::DataDirMismatch {
            path: config.data_dir.clone(),
            found_id,
            found_cluster,
            expected_id,
            expected_cluster,
        },
        Error::CorruptDataDir { reason, .. } => Error::CorruptDataDir {
            path: config.data_dir.clone(),
            reason,
        },
        other => other,
    })?;
    if store.is_initialized() {
        return Ok(store);
    }
    if config.join {
        store.set_catching_up(true)?;
        return Ok(store);
    }
    if let Some((peer, status)) = find_running_cluster(config, connector).await {
        tracing::warn!(
            id = config.id,
            peer,
            peer_commit = status.commit_index,
            peer_term = status.term,
            data_dir = %config.data_dir.display(),
            "the data dir is empty but the cluster already exists: joining it as a replica \
             that catches up before it votes (not bootstrapping a new one)"
        );
        store.set_catching_up(true)?;
        return Ok(store);
    }
    let voters: Vec<u64> = config.peers.keys().copied().collect();
    let initial = StateSnapshot {
        applied_index: 1,
        members: config
            .peers
            .iter()
            .map(|(id, address)| Member {
                id: *id,
                address: address.clone(),
                voter: true,
            })
            .collect(),
        ..StateSnapshot::default()
    };
    store.bootstrap(ConfState::from((voters, vec![])), initial.encode_to_vec())?;
    tracing::info!(id = config.id, peers = ?config.peers, "bootstrapped a new GCS cluster");
    Ok(store)
}

/// Whether a replica's status shows a cluster that has committed past its bootstrap: only a
/// cluster that once had a quorum of bootstrapped replicas gets there, so a late or wiped
/// replica joining it can always be caught up by a leader of that quorum.
fn has_history(status: &StatusResponse) -> bool {
    status.commit_index > 1 || status.last_log_index > 1
}

/// Asks every other initial peer (in parallel, each for at most [`PROBE_TIMEOUT`]) for its
/// status; returns the first that shows this cluster already running.
async fn find_running_cluster(
    config: &GcsConfig,
    connector: &Arc<dyn Connector>,
) -> Option<(u64, StatusResponse)> {
    let mut probes = JoinSet::new();
    for (id, address) in config.peers.iter().filter(|(id, _)| **id != config.id) {
        let Ok(channel) = connector.channel(address) else {
            continue;
        };
        let id = *id;
        probes.spawn(async move {
            let mut client = GcsGrpcClient::new(channel);
            let answer = tokio::time::timeout(PROBE_TIMEOUT, client.status(StatusRequest {})).await;
            (id, answer)
        });
    }
    while let Some(joined) = probes.join_next().await {
        let Ok((id, Ok(Ok(response)))) = joined else {
            continue;
        };
        let status = response.into_inner();
        if status.cluster_name == config.cluster_name && has_history(&status) {
            return Some((id, status));
        }
    }
    None
}

/// Runs one replica over `incoming` connections until `shutdown` is cancelled or storage
/// fails (the error is returned: nothing is acknowledged that was not made durable).
pub async fn run<I, IO, E>(
    config: GcsConfig,
    disk: Box<dyn RaftDisk>,
    incoming: I,
    connector: Arc<dyn Connector>,
    shutdown: CancellationToken,
) -> Result<()>
where
    I: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    config.validate()?;
    // Before anything starts: a TLS misconfiguration is named, not half served.
    let builder = crate::tls::server_builder().map_err(|reason| Error::InvalidConfig {
        field: "FLEET_TLS_CERT / FLEET_TLS_KEY / FLEET_TLS_CA",
        reason,
    })?;
    let config = Arc::new(config);
    let store = open_store(&config, disk, &connector).await?;
    let tasks = TaskTracker::new();
    let stop = shutdown.child_token();
    let (transport, feedback) = PeerTransport::new(
        config.id,
        config.cluster_name.clone(),
        connector,
        tasks.clone(),
        stop.clone(),
    );
    let (driver, handle) = Driver::new(config.clone(), store, transport, feedback)?;
    let driver_stop = stop.clone();
    let driver_task = tokio::spawn(async move {
        let result = driver.run(driver_stop.clone()).await;
        // However the driver ended (shutdown, storage failure, removal), stop serving.
        driver_stop.cancel();
        result
    });

    tokio::spawn(crate::health::run(handle.clone(), stop.clone()));
    let gcs = GcsServer::new(GcsService::new(handle.clone(), stop.clone()))
        .max_decoding_message_size(MAX_CLIENT_REQUEST_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let raft = RaftTransportServer::new(RaftService::new(handle))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tracing::info!(id = config.id, address = %config.advertise_address, "GCS replica serving");
    let serve_stop = stop.clone();
    let served = builder
        .tcp_nodelay(true)
        .layer(crate::auth::RequireToken::layer_for_process())
        .add_service(gcs)
        .add_service(raft)
        .serve_with_incoming_shutdown(incoming, serve_stop.cancelled_owned())
        .await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    let driver_result = driver_task.await.unwrap_or(Err(Error::ShuttingDown));
    driver_result?;
    served.map_err(|e| Error::Listen {
        address: config.advertise_address.clone(),
        source: std::io::Error::other(e),
    })
}

/// Binds `listen` and runs a replica on real TCP with sled storage in `config.data_dir`.
pub async fn run_tcp(
    config: GcsConfig,
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Listen {
            address: listen.to_string(),
            source,
        })?;
    let disk = SledDisk::open(&config.data_dir, config.fsync)?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    run(
        config,
        Box::new(disk),
        incoming,
        Arc::new(TcpConnector),
        shutdown,
    )
    .await
}

/// A single-replica GCS running inside this process (embedded mode, tests).
pub struct EmbeddedGcs {
    /// Where clients reach it.
    pub address: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl EmbeddedGcs {
    /// Starts a one-replica group on a free loopback port with its data in `data_dir`.
    pub async fn start(data_dir: impl Into<std::path::PathBuf>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| Error::Listen {
                address: "127.0.0.1:0".into(),
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|source| Error::Listen {
                address: "127.0.0.1:0".into(),
                source,
            })?
            .to_string();
        let mut config = GcsConfig::single(address.clone(), data_dir);
        // One replica elects itself at once; short ticks make that first election quick.
        config.tick_interval = std::time::Duration::from_millis(20);
        let disk = SledDisk::open(&config.data_dir, config.fsync)?;
        let shutdown = CancellationToken::new();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(run(
            config,
            Box::new(disk),
            incoming,
            Arc::new(TcpConnector),
            shutdown.clone(),
        ));
        Ok(EmbeddedGcs {
            address,
            shutdown,
            task,
        })
    }

    /// Stops it and waits.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await.unwrap_or(Err(Error::ShuttingDown))
    }
}
