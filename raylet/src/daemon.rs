//! `fleet raylet`: one node of a cluster. Starts the raylet, registers the node in the GCS
//! nodes table (ALIVE, with its address, resources and labels), and serves until told to
//! stop; then it records the node as dead, stops its workers and removes its object store.
//!
//! A node the GCS has declared dead (it missed health checks, say across a partition) stops
//! too: its actors may already be running elsewhere, and a node that came back on its own
//! would split them. Restart it to rejoin as a new incarnation.

use fleet_gcs::clock::now_ms;
use std::collections::BTreeMap;
use std::time::Duration;

use fleet_proto::gcs::{NodeInfo, NodeState};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::RayletConfig;
use crate::error::{Error, Result};

/// How often a running node checks that the GCS still counts it alive.
pub const SELF_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// How a node's run ended.
#[derive(Debug)]
pub enum Ended {
    /// Asked to stop.
    Stopped,
    /// The GCS declared it dead.
    DeclaredDead(String),
}

/// Runs a node until `stop` is cancelled (or the GCS declares it dead). `ready` receives the
/// address it serves at once it is registered.
pub async fn run(
    config: RayletConfig,
    listen: &str,
    stop: CancellationToken,
    ready: impl FnOnce(&str),
) -> Result<Ended> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Listen {
            address: listen.to_string(),
            source,
        })?;
    let node_id = config.node_id.clone();
    let gcs =
        fleet_gcs::GcsClient::connect(&config.gcs_address).map_err(|e| Error::Registration {
            node: node_id.clone(),
            reason: format!("--gcs {:?}: {e}", config.gcs_address),
        })?;
    let mut total: BTreeMap<String, f64> = config.resources.clone();
    total.insert("GPU".into(), f64::from(config.num_gpus));
    let labels = config.labels.clone();
    let spill_dir = config.spill_dir.clone();
    let raylet = crate::server::start(config, listener).await?;
    let registered = gcs
        .register_node(NodeInfo {
            node_id: node_id.clone(),
            address: raylet.address.clone(),
            state: NodeState::NodeAlive as i32,
            resources_total: total.into_iter().collect(),
            labels: labels.into_iter().collect(),
            registered_at_ms: now_ms(),
            ..NodeInfo::default()
        })
        .await;
    if let Err(error) = registered {
        raylet.stop().await;
        return Err(Error::Registration {
            node: node_id,
            reason: format!("cannot register with the GCS: {error}"),
        });
    }
    ready(&raylet.address);
    let ended = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ended::Stopped,
            _ = tokio::time::sleep(SELF_CHECK_PERIOD) => {}
        }
        if let Ok(nodes) = gcs.list_nodes().await {
            if let Some(me) = nodes.iter().find(|n| n.node_id == node_id) {
                if me.state == NodeState::NodeDead as i32 {
                    break Ended::DeclaredDead(me.death_cause.clone());
                }
            }
        }
    };
    if matches!(ended, Ended::Stopped) {
        let marked = tokio::time::timeout(
            Duration::from_secs(5),
            gcs.mark_node_dead(&node_id, "stopped by the operator"),
        )
        .await;
        if !matches!(marked, Ok(Ok(_))) {
            tracing::warn!(node = %node_id, "could not record the node's stop in the GCS; it will be declared dead by health checks");
        }
    }
    raylet.stop().await;
    let _ = std::fs::remove_dir_all(&spill_dir);
    Ok(ended)
}
