//! One GCS replica: opens its storage, starts the Raft driver and serves gRPC until
//! shutdown. The listener and the connector are passed in, so tests bind `127.0.0.1:0` and
//! the simulation runs the same code over `turmoil`'s network.

use std::net::SocketAddr;
use std::sync::Arc;

use fleet_proto::gcs::gcs_server::GcsServer;
use fleet_proto::gcs::raft_transport_server::RaftTransportServer;
use fleet_proto::gcs::{Member, StateSnapshot};
use futures::Stream;
use prost::Message as _;
use raft::prelude::ConfState;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::{Connected, TcpIncoming};

use crate::config::GcsConfig;
use crate::error::{Error, Result};
use crate::node::Driver;
use crate::service::{GcsService, RaftService};
use crate::storage::{Identity, LogStore, RaftDisk, SledDisk};
use crate::transport::{Connector, PeerTransport, TcpConnector, MAX_MESSAGE_BYTES};

/// Opens the replica's storage, bootstrapping a new cluster's membership when the disk is
/// fresh (and `join` is off).
pub fn open_store(config: &GcsConfig, disk: Box<dyn RaftDisk>) -> Result<LogStore> {
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
    if !store.is_initialized() && !config.join {
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
    }
    Ok(store)
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
    let config = Arc::new(config);
    let store = open_store(&config, disk)?;
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
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let raft = RaftTransportServer::new(RaftService::new(handle))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tracing::info!(id = config.id, address = %config.advertise_address, "GCS replica serving");
    let serve_stop = stop.clone();
    let served = tonic::transport::Server::builder()
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
