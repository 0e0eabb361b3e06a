//! `fleet status`: nodes (alive/dead, resources used/total, object store), GCS members and
//! leader, jobs. Totals come from the GCS nodes table, live usage from each alive raylet's
//! `NodeInfo`; a raylet that does not answer is shown as unreachable.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use fleet_proto::gcs::{JobState, NodeState};
use fleet_proto::runtime::raylet_client::RayletClient;
use fleet_proto::runtime::{NodeInfoReply, NodeInfoRequest};
use serde_json::{json, Value};

use super::AddressArgs;

/// `fleet status [--json]`
#[derive(Args)]
pub struct StatusCommand {
    #[command(flatten)]
    address: AddressArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl StatusCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        let resolved = self.address.resolve()?;
        let client = self.address.client_for(&resolved.address)?;
        let mut replicas = Vec::new();
        let mut leader = Value::Null;
        for endpoint in client.endpoints() {
            match client.replica_status(endpoint).await {
                Ok(status) => {
                    if status.role == "leader" {
                        leader = json!({ "id": status.id, "address": endpoint });
                    }
                    replicas.push(json!({
                        "address": endpoint, "id": status.id, "role": status.role,
                        "term": status.term, "applied_index": status.applied_index,
                        "members": status.members.iter().map(|m| json!({
                            "id": m.id, "address": m.address, "voter": m.voter,
                        })).collect::<Vec<_>>(),
                    }));
                }
                Err(error) => replicas.push(json!({
                    "address": endpoint, "role": "unreachable", "error": format!("{error:#}"),
                })),
            }
        }
        let nodes = client.list_nodes().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot read the nodes table from the GCS at {}: {e:#}",
                resolved.address
            )
        })?;
        let mut node_rows = Vec::new();
        for node in &nodes {
            let alive = node.state == NodeState::NodeAlive as i32;
            let usage = if alive {
                match node_info(&node.address).await {
                    Ok(reply) => usage_json(&reply),
                    Err(error) => json!({ "unreachable": error }),
                }
            } else {
                Value::Null
            };
            node_rows.push(json!({
                "node_id": node.node_id,
                "state": if alive { "ALIVE" } else { "DEAD" },
                "address": node.address,
                "resources_total": node.resources_total,
                "labels": node.labels,
                "death_cause": node.death_cause,
                "usage": usage,
            }));
        }
        let jobs = client.list_jobs().await?;
        let job_rows: Vec<Value> = jobs
            .iter()
            .map(|j| {
                json!({
                    "job_id": j.job_id,
                    "state": state_name(JobState::try_from(j.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN")),
                    "entrypoint": j.entrypoint,
                    "start_ms": j.start_ms,
                    "end_ms": j.end_ms,
                })
            })
            .collect();
        let report = json!({
            "address": resolved.address,
            "cluster": resolved.state.as_ref().map(|s| s.name.clone()),
            "gcs": { "leader": leader, "replicas": replicas },
            "nodes": node_rows,
            "jobs": job_rows,
        });
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_human(&report);
        }
        Ok(())
    }
}

/// Strips the enum prefix: `NODE_ALIVE` → `ALIVE`, `PG_CREATED` → `CREATED`.
pub fn state_name(name: &str) -> String {
    for prefix in [
        "NODE_STATE_",
        "NODE_",
        "JOB_STATE_",
        "JOB_",
        "ACTOR_STATE_",
        "ACTOR_",
        "PLACEMENT_GROUP_STATE_",
        "PG_",
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    name.to_string()
}

async fn node_info(address: &str) -> Result<NodeInfoReply, String> {
    let url = if address.starts_with("http") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    let channel = tokio::time::timeout(Duration::from_secs(2), endpoint.connect())
        .await
        .map_err(|_| "no answer within 2 s".to_string())?
        .map_err(|e| e.to_string())?;
    let mut client = RayletClient::new(fleet_gcs::auth::authed(channel));
    client
        .node_info(NodeInfoRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|e| fleet_gcs::error::describe_status(&e))
}

fn usage_json(reply: &NodeInfoReply) -> Value {
    let used: BTreeMap<&String, f64> = reply
        .total
        .iter()
        .map(|(name, total)| {
            let available = reply.available.get(name).copied().unwrap_or(0.0);
            (name, total - available)
        })
        .collect();
    json!({
        "total": reply.total,
        "available": reply.available,
        "used": used,
        "idle_workers": reply.idle_workers,
        "leased_workers": reply.leased_workers,
        "pending_leases": reply.pending_leases,
        "object_store_used_bytes": reply.object_store_used_bytes,
        "object_store_capacity_bytes": reply.object_store_capacity_bytes,
        "spilled_bytes": reply.spilled_bytes,
        "num_objects": reply.num_objects,
    })
}

/// `1536` → `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn amount(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn print_human(report: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    match report["cluster"].as_str() {
        Some(name) => println!("cluster '{name}' at {}", text(&report["address"])),
        None => println!("cluster at {}", text(&report["address"])),
    }
    let leader = &report["gcs"]["leader"];
    println!();
    println!(
        "GCS: leader {}",
        if leader.is_null() {
            "none (election in progress or no quorum)".to_string()
        } else {
            format!("{} ({})", leader["id"], text(&leader["address"]))
        }
    );
    println!(
        "  {:<4} {:<22} {:<12} {:>6} {:>10}",
        "ID", "ADDRESS", "ROLE", "TERM", "APPLIED"
    );
    for replica in report["gcs"]["replicas"].as_array().into_iter().flatten() {
        if replica.get("error").is_some() {
            println!("  {:<4} {:<22} unreachable", "-", text(&replica["address"]));
            continue;
        }
        println!(
            "  {:<4} {:<22} {:<12} {:>6} {:>10}",
            replica["id"].to_string(),
            text(&replica["address"]),
            text(&replica["role"]),
            replica["term"].to_string(),
            replica["applied_index"].to_string()
        );
    }
    let nodes = report["nodes"].as_array().cloned().unwrap_or_default();
    let alive = nodes.iter().filter(|n| n["state"] == "ALIVE").count();
    println!();
    println!("Nodes: {alive} alive, {} dead", nodes.len() - alive);
    println!(
        "  {:<14} {:<6} {:<22} {:<36} {:<24} WORKERS",
        "NODE", "STATE", "ADDRESS", "RESOURCES (used/total)", "OBJECT STORE"
    );
    for node in &nodes {
        let total: BTreeMap<String, f64> =
            serde_json::from_value(node["resources_total"].clone()).unwrap_or_default();
        let usage = &node["usage"];
        let (resources, store, workers) = if node["state"] != "ALIVE" {
            let cause = text(&node["death_cause"]);
            (
                total
                    .iter()
                    .map(|(k, v)| format!("{k} {}", amount(*v)))
                    .collect::<Vec<_>>()
                    .join(", "),
                String::new(),
                if cause.is_empty() {
                    String::new()
                } else {
                    format!("death: {cause}")
                },
            )
        } else if let Some(error) = usage.get("unreachable") {
            (
                total
                    .iter()
                    .map(|(k, v)| format!("{k} ?/{}", amount(*v)))
                    .collect::<Vec<_>>()
                    .join(", "),
                "unreachable".to_string(),
                format!("unreachable: {}", error.as_str().unwrap_or("")),
            )
        } else {
            let used: BTreeMap<String, f64> =
                serde_json::from_value(usage["used"].clone()).unwrap_or_default();
            let live_total: BTreeMap<String, f64> =
                serde_json::from_value(usage["total"].clone()).unwrap_or_default();
            let shown = if live_total.is_empty() {
                &total
            } else {
                &live_total
            };
            (
                shown
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{k} {}/{}",
                            amount(used.get(k).copied().unwrap_or(0.0)),
                            amount(*v)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                format!(
                    "{}/{} ({} obj)",
                    bytes(usage["object_store_used_bytes"].as_u64().unwrap_or(0)),
                    bytes(usage["object_store_capacity_bytes"].as_u64().unwrap_or(0)),
                    usage["num_objects"].as_u64().unwrap_or(0)
                ),
                format!(
                    "{} leased, {} idle, {} pending",
                    usage["leased_workers"], usage["idle_workers"], usage["pending_leases"]
                ),
            )
        };
        println!(
            "  {:<14} {:<6} {:<22} {:<36} {:<24} {}",
            text(&node["node_id"]),
            text(&node["state"]),
            text(&node["address"]),
            resources,
            store,
            workers
        );
    }
    let jobs = report["jobs"].as_array().cloned().unwrap_or_default();
    let running = jobs.iter().filter(|j| j["state"] == "RUNNING").count();
    println!();
    println!("Jobs: {running} running, {} finished", jobs.len() - running);
    for job in jobs.iter().filter(|j| j["state"] == "RUNNING") {
        println!(
            "  {:<24} {}",
            text(&job["job_id"]),
            text(&job["entrypoint"])
        );
    }
}
