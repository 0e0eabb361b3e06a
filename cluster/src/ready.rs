//! Readiness: a GCS leader, and raylets ALIVE in the nodes table.

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_gcs::client::ClientOptions;
use fleet_gcs::GcsClient;
use fleet_proto::gcs::NodeState;

use crate::error::Result;

/// A client for polling: short deadlines, so a dead replica does not stall a poll loop.
pub fn polling_client(address: &str) -> Result<GcsClient> {
    Ok(GcsClient::connect_with(
        address,
        ClientOptions {
            deadline: Duration::from_secs(2),
            rpc_timeout: Duration::from_secs(1),
            ..ClientOptions::default()
        },
    )?)
}

/// The replica that reports itself leader, as (id, address), if one answers.
pub async fn leader(client: &GcsClient) -> Option<(u64, String)> {
    for endpoint in client.endpoints() {
        if let Ok(status) = client.replica_status(endpoint).await {
            if status.role == "leader" {
                return Some((status.id, endpoint.clone()));
            }
        }
    }
    None
}

/// Ids of the nodes the GCS holds ALIVE.
pub async fn alive_nodes(client: &GcsClient) -> Result<BTreeSet<String>> {
    Ok(client
        .list_nodes()
        .await?
        .into_iter()
        .filter(|n| n.state == NodeState::NodeAlive as i32)
        .map(|n| n.node_id)
        .collect())
}

/// What readiness still waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// No replica is leader yet.
    Leader,
    /// These node ids are not ALIVE yet.
    Nodes(Vec<String>),
}

/// One poll: `None` when there is a leader and every node in `node_ids` is ALIVE.
pub async fn poll(client: &GcsClient, node_ids: &[String]) -> Option<Pending> {
    if leader(client).await.is_none() {
        return Some(Pending::Leader);
    }
    if node_ids.is_empty() {
        return None;
    }
    let alive = match alive_nodes(client).await {
        Ok(alive) => alive,
        Err(_) => return Some(Pending::Nodes(node_ids.to_vec())),
    };
    let missing: Vec<String> = node_ids
        .iter()
        .filter(|id| !alive.contains(*id))
        .cloned()
        .collect();
    (!missing.is_empty()).then_some(Pending::Nodes(missing))
}
