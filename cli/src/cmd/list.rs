//! `fleet list nodes|actors|tasks|objects|placement-groups|jobs`: rows of the GCS tables,
//! filtered, as a table or JSON.

use std::collections::BTreeMap;

use anyhow::bail;
use clap::{Args, ValueEnum};
use fleet_proto::gcs::{ActorState, JobState, NodeState, PlacementGroupState, PlacementStrategy};
use serde_json::{json, Value};

use super::status::state_name;
use super::AddressArgs;

/// `fleet list KIND [filters]`
#[derive(Args)]
pub struct ListCommand {
    /// What to list.
    kind: Kind,
    #[command(flatten)]
    address: AddressArgs,
    /// Only rows in this state (e.g. alive, dead, running, finished, pending).
    #[arg(long)]
    state: Option<String>,
    /// Only rows on this node id.
    #[arg(long)]
    node: Option<String>,
    /// Only rows of this job id.
    #[arg(long)]
    job: Option<String>,
    /// Only rows with this name (actors, tasks, placement groups).
    #[arg(long)]
    name: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kind {
    Nodes,
    Actors,
    Tasks,
    Objects,
    PlacementGroups,
    Jobs,
}

impl Kind {
    /// The filters that apply, and the table's columns.
    fn shape(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Kind::Nodes => (
                &["state", "node"],
                &["node_id", "state", "address", "resources_total", "labels"],
            ),
            Kind::Actors => (
                &["state", "node", "job", "name"],
                &[
                    "actor_id",
                    "class_name",
                    "name",
                    "state",
                    "job_id",
                    "node_id",
                    "num_restarts",
                ],
            ),
            Kind::Tasks => (
                &["state", "node", "job", "name"],
                &[
                    "task_id", "name", "state", "attempt", "job_id", "node_id", "error",
                ],
            ),
            Kind::Objects => (
                &["node"],
                &["object_id", "size", "owner", "node_ids", "spilled_url"],
            ),
            Kind::PlacementGroups => (
                &["state", "job", "name"],
                &[
                    "placement_group_id",
                    "name",
                    "state",
                    "strategy",
                    "job_id",
                    "bundles",
                ],
            ),
            Kind::Jobs => (
                &["state", "job"],
                &[
                    "job_id",
                    "state",
                    "entrypoint",
                    "start_ms",
                    "end_ms",
                    "message",
                ],
            ),
        }
    }

    fn flag_name(self) -> &'static str {
        match self {
            Kind::Nodes => "nodes",
            Kind::Actors => "actors",
            Kind::Tasks => "tasks",
            Kind::Objects => "objects",
            Kind::PlacementGroups => "placement-groups",
            Kind::Jobs => "jobs",
        }
    }
}

impl ListCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        let (filters, columns) = self.kind.shape();
        for (filter, given) in [
            ("state", self.state.is_some()),
            ("node", self.node.is_some()),
            ("job", self.job.is_some()),
            ("name", self.name.is_some()),
        ] {
            if given && !filters.contains(&filter) {
                bail!(
                    "--{filter} does not apply to `fleet list {}` (its filters: {})",
                    self.kind.flag_name(),
                    filters
                        .iter()
                        .map(|f| format!("--{f}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let client = self.address.client()?;
        let rows = rows(&client, self.kind).await?;
        let rows: Vec<Value> = rows
            .into_iter()
            .filter(|row| self.matches(row))
            .take(self.limit)
            .collect();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print_table(columns, &rows);
        }
        Ok(())
    }

    fn matches(&self, row: &Value) -> bool {
        let field = |k: &str| row[k].as_str().unwrap_or("").to_string();
        if let Some(state) = &self.state {
            let want = state.to_ascii_uppercase().replace('-', "_");
            let have = field("state").to_ascii_uppercase();
            let finished =
                want == "FINISHED" && !["RUNNING", "ALIVE", "PENDING"].contains(&have.as_str());
            if have != want && !finished {
                return false;
            }
        }
        if let Some(node) = &self.node {
            let on_node = field("node_id") == *node
                || row["node_ids"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|id| id.as_str() == Some(node.as_str())));
            if !on_node {
                return false;
            }
        }
        if let Some(job) = &self.job {
            if field("job_id") != *job {
                return false;
            }
        }
        if let Some(name) = &self.name {
            if field("name") != *name {
                return false;
            }
        }
        true
    }
}

async fn rows(client: &fleet_gcs::GcsClient, kind: Kind) -> anyhow::Result<Vec<Value>> {
    Ok(match kind {
        Kind::Nodes => client
            .list_nodes()
            .await?
            .into_iter()
            .map(|n| {
                json!({
                    "node_id": n.node_id,
                    "state": state_name(NodeState::try_from(n.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN")),
                    "address": n.address,
                    "resources_total": n.resources_total,
                    "labels": n.labels,
                    "registered_at_ms": n.registered_at_ms,
                    "death_cause": n.death_cause,
                    "object_store_address": n.object_store_address,
                })
            })
            .collect(),
        Kind::Actors => client
            .list_actors()
            .await?
            .into_iter()
            .map(|a| {
                json!({
                    "actor_id": a.actor_id,
                    "job_id": a.job_id,
                    "name": a.name,
                    "namespace": a.namespace,
                    "class_name": a.class_name,
                    "state": state_name(ActorState::try_from(a.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN")),
                    "node_id": a.node_id,
                    "address": a.address,
                    "num_restarts": a.num_restarts,
                    "max_restarts": a.max_restarts,
                    "death_cause": a.death_cause,
                    "detached": a.detached,
                    "resources": a.resources,
                })
            })
            .collect(),
        Kind::Tasks => {
            // The latest event of each task (by attempt, then time) is its state.
            let mut latest: BTreeMap<String, fleet_proto::gcs::TaskEvent> = BTreeMap::new();
            for event in client.list_task_events().await? {
                let newer = latest.get(&event.task_id).is_none_or(|seen| {
                    (event.attempt, event.time_ms) >= (seen.attempt, seen.time_ms)
                });
                if newer {
                    latest.insert(event.task_id.clone(), event);
                }
            }
            latest
                .into_values()
                .map(|t| {
                    json!({
                        "task_id": t.task_id,
                        "attempt": t.attempt,
                        "job_id": t.job_id,
                        "name": t.name,
                        "state": t.state,
                        "node_id": t.node_id,
                        "time_ms": t.time_ms,
                        "error": t.error,
                    })
                })
                .collect()
        }
        Kind::Objects => client
            .list_objects()
            .await?
            .into_iter()
            .map(|o| {
                json!({
                    "object_id": o.object_id,
                    "node_ids": o.node_ids,
                    "size": o.size,
                    "owner": o.owner,
                    "spilled_url": o.spilled_url,
                })
            })
            .collect(),
        Kind::PlacementGroups => client
            .list_placement_groups()
            .await?
            .into_iter()
            .map(|g| {
                json!({
                    "placement_group_id": g.placement_group_id,
                    "name": g.name,
                    "job_id": g.job_id,
                    "strategy": PlacementStrategy::try_from(g.strategy).map(|s| s.as_str_name()).unwrap_or("UNKNOWN"),
                    "state": state_name(PlacementGroupState::try_from(g.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN")),
                    "bundles": g.bundles.iter().map(|b| json!({
                        "resources": b.resources, "node_id": b.node_id,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
        Kind::Jobs => client
            .list_jobs()
            .await?
            .into_iter()
            .map(|j| {
                json!({
                    "job_id": j.job_id,
                    "driver_address": j.driver_address,
                    "state": state_name(JobState::try_from(j.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN")),
                    "entrypoint": j.entrypoint,
                    "start_ms": j.start_ms,
                    "end_ms": j.end_ms,
                    "message": j.message,
                })
            })
            .collect(),
    })
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(";"),
        other => other.to_string(),
    }
}

fn print_table(columns: &[&str], rows: &[Value]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| cell(&row[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
                .min(60)
        })
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        line(columns.iter().map(|c| c.to_ascii_uppercase()).collect())
    );
    for row in cells {
        println!("{}", line(row));
    }
    if rows.is_empty() {
        println!("(none)");
    }
}
