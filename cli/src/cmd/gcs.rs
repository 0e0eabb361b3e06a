//! `fleet gcs`: run a replica; `fleet gcs status`; `fleet gcs member add|remove`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use fleet_gcs::config::parse_peers;
use fleet_gcs::GcsConfig;
use fleet_proto::gcs::MemberChange;

use super::{shutdown_on_signal, AddressArgs};

/// `fleet gcs [FLAGS]` runs one replica; `fleet gcs status|member ...` operates on a cluster.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GcsCommand {
    #[command(subcommand)]
    action: Option<GcsAction>,
    #[command(flatten)]
    replica: ReplicaArgs,
}

#[derive(Subcommand)]
enum GcsAction {
    /// Members, leader, term, commit and applied index of every replica.
    Status {
        #[command(flatten)]
        address: AddressArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change the membership (one replica at a time).
    Member {
        #[command(subcommand)]
        change: MemberAction,
    },
}

#[derive(Subcommand)]
enum MemberAction {
    /// Add a replica: start it with `fleet gcs --join`, then add it here (either order).
    Add {
        #[command(flatten)]
        address: AddressArgs,
        /// The new replica's id.
        #[arg(long)]
        id: u64,
        /// The new replica's HOST:PORT.
        #[arg(long)]
        peer_address: String,
        /// Add as a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a replica (then stop its process).
    Remove {
        #[command(flatten)]
        address: AddressArgs,
        /// The replica's id.
        #[arg(long)]
        id: u64,
    },
}

/// Flags of a replica.
#[derive(Args)]
struct ReplicaArgs {
    /// This replica's Raft id.
    #[arg(long, env = "FLEET_GCS_ID", default_value_t = 1)]
    id: u64,
    /// Address to listen on (and, unless --advertise, the one peers and clients use).
    #[arg(long, env = "FLEET_GCS_LISTEN", default_value = "127.0.0.1:6380")]
    listen: String,
    /// Address peers and clients reach this replica at, when not --listen.
    #[arg(long)]
    advertise: Option<String>,
    /// Initial members: ID=HOST:PORT,... (default: this replica alone).
    #[arg(long, env = "FLEET_GCS_PEERS")]
    peers: Option<String>,
    /// Where the Raft log and snapshots are kept (default: ./fleet-gcs-ID).
    #[arg(long, env = "FLEET_GCS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The cluster's name; replicas refuse data dirs and peers of other clusters.
    #[arg(long, default_value = "fleet")]
    cluster_name: String,
    /// Start empty and wait to be added with `fleet gcs member add`.
    #[arg(long)]
    join: bool,
    /// Raft tick in milliseconds.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// Election timeout in ticks.
    #[arg(long, default_value_t = 10)]
    election_ticks: usize,
    /// Snapshot and compact the log every this many entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_threshold: u64,
    /// Do not fsync the log (unsafe: a power loss can lose acknowledged writes).
    #[arg(long)]
    no_fsync: bool,
    /// How often the leader health-checks raylets, in milliseconds (0: never).
    #[arg(long, default_value_t = 500)]
    health_check_ms: u64,
    /// A raylet that has not answered health checks for this long is declared dead.
    #[arg(long, default_value_t = 3000)]
    node_timeout_ms: u64,
    /// Dead actors kept in the actor table (older ones, and their checkpoint records, are
    /// deleted). Give every replica the same value.
    #[arg(long, default_value_t = 10_000)]
    retain_dead_actors: usize,
    /// Finished jobs kept in the job table. Give every replica the same value.
    #[arg(long, default_value_t = 10_000)]
    retain_finished_jobs: usize,
    /// Removed placement groups kept. Give every replica the same value.
    #[arg(long, default_value_t = 10_000)]
    retain_removed_placement_groups: usize,
}

impl GcsCommand {
    /// Whether this runs a long-lived replica (for the log level).
    pub fn is_daemon(&self) -> bool {
        self.action.is_none()
    }

    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.action {
            None => run_replica(self.replica).await,
            Some(GcsAction::Status { address, json }) => status(&address, json).await,
            Some(GcsAction::Member { change }) => member(change).await,
        }
    }
}

async fn run_replica(args: ReplicaArgs) -> anyhow::Result<()> {
    let listen: SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen '{}' is not an IP:PORT address (e.g. 127.0.0.1:6380)",
            args.listen
        )
    })?;
    let advertise = args.advertise.unwrap_or_else(|| args.listen.clone());
    let peers = match &args.peers {
        Some(spec) => parse_peers(spec)?,
        None => [(args.id, advertise.clone())].into_iter().collect(),
    };
    if let Some(listed) = peers.get(&args.id) {
        if *listed != advertise {
            bail!(
                "--peers lists replica {} at {listed}, but this replica advertises {advertise}; make them agree \
                 (or pass --advertise {listed})",
                args.id
            );
        }
    }
    let config = GcsConfig {
        id: args.id,
        advertise_address: advertise,
        peers,
        data_dir: args
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("fleet-gcs-{}", args.id))),
        cluster_name: args.cluster_name,
        join: args.join,
        tick_interval: Duration::from_millis(args.tick_ms),
        election_ticks: args.election_ticks,
        snapshot_threshold: args.snapshot_threshold,
        fsync: !args.no_fsync,
        health_check_period: Duration::from_millis(args.health_check_ms),
        node_timeout: Duration::from_millis(args.node_timeout_ms),
        retention: fleet_gcs::state_machine::Retention {
            dead_actors: args.retain_dead_actors,
            finished_jobs: args.retain_finished_jobs,
            removed_placement_groups: args.retain_removed_placement_groups,
        },
        ..GcsConfig::default()
    };
    // After the flags are checked, so that a malformed flag is named first.
    super::token::require_daemon_token("fleet gcs")?;
    fleet_gcs::server::run_tcp(config, listen, shutdown_on_signal()).await?;
    Ok(())
}

async fn status(address_args: &AddressArgs, json: bool) -> anyhow::Result<()> {
    let resolved = address_args.resolve()?;
    let client = address_args.client_for(&resolved.address)?;
    let address = &resolved.address;
    let mut rows = Vec::new();
    for endpoint in client.endpoints() {
        let row = match client.replica_status(endpoint).await {
            Ok(status) => serde_json::json!({
                "address": endpoint,
                "id": status.id,
                "role": status.role,
                "leader_id": status.leader_id,
                "leader_address": status.leader_address,
                "term": status.term,
                "commit_index": status.commit_index,
                "applied_index": status.applied_index,
                "snapshot_index": status.snapshot_index,
                "last_log_index": status.last_log_index,
                "catching_up": status.catching_up,
                "cluster_name": status.cluster_name,
                "members": status.members.iter().map(|m| serde_json::json!({
                    "id": m.id, "address": m.address, "voter": m.voter,
                })).collect::<Vec<_>>(),
            }),
            Err(error) => serde_json::json!({ "address": endpoint, "error": format!("{error:#}") }),
        };
        rows.push(row);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let reachable: Vec<_> = rows.iter().filter(|r| r.get("error").is_none()).collect();
    if let Some(leader) = reachable
        .iter()
        .find(|r| r["role"] == "leader")
        .or(reachable.first())
    {
        let members: Vec<String> = leader["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        format!(
                            "{}@{}{}",
                            m["id"],
                            m["address"].as_str().unwrap_or(""),
                            if m["voter"] == true { "" } else { " (learner)" }
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "cluster {}  members: {}",
            leader["cluster_name"].as_str().unwrap_or(""),
            members.join(", ")
        );
    }
    println!(
        "{:<22} {:>3} {:<10} {:>6} {:>6} {:>10} {:>10} {:>10}",
        "ADDRESS", "ID", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED", "SNAPSHOT"
    );
    for row in &rows {
        if let Some(error) = row.get("error") {
            println!(
                "{:<22} unreachable: {}",
                row["address"].as_str().unwrap_or(""),
                error.as_str().unwrap_or("")
            );
            continue;
        }
        // A replica that started on an empty disk does not vote until caught up.
        let role = match (row["role"].as_str(), row["catching_up"] == true) {
            (Some(role), true) => format!("{role}*"),
            (role, false) => role.unwrap_or("").to_string(),
            (None, true) => "*".into(),
        };
        println!(
            "{:<22} {:>3} {:<10} {:>6} {:>6} {:>10} {:>10} {:>10}",
            row["address"].as_str().unwrap_or(""),
            row["id"].to_string(),
            role,
            row["leader_id"].to_string(),
            row["term"].to_string(),
            row["commit_index"].to_string(),
            row["applied_index"].to_string(),
            row["snapshot_index"].to_string(),
        );
    }
    if reachable.iter().any(|r| r["catching_up"] == true) {
        println!("* catching up after starting on an empty disk: not voting yet");
    }
    if reachable.is_empty() {
        bail!("no GCS replica answered at {address}; is the cluster running? (--address / FLEET_ADDRESS)");
    }
    Ok(())
}

async fn member(change: MemberAction) -> anyhow::Result<()> {
    let (address, kind, id, peer_address) = match change {
        MemberAction::Add {
            address,
            id,
            peer_address,
            learner,
        } => {
            if peer_address.parse::<SocketAddr>().is_err() && !peer_address.contains(':') {
                bail!("--peer-address '{peer_address}' is not HOST:PORT");
            }
            let kind = if learner {
                MemberChange::AddLearner
            } else {
                MemberChange::AddVoter
            };
            (address, kind, id, peer_address)
        }
        MemberAction::Remove { address, id } => (address, MemberChange::Remove, id, String::new()),
    };
    let client = address.client()?;
    let members = client.change_member(kind, id, &peer_address).await?;
    for m in members {
        println!(
            "{}\t{}\t{}",
            m.id,
            m.address,
            if m.voter { "voter" } else { "learner" }
        );
    }
    Ok(())
}
