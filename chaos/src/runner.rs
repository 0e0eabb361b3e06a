//! Runs a scenario: start the cluster, prepare the workload, run it while the faults happen
//! on schedule, end every fault, check the invariants, stop the cluster.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_cluster::plan::ClusterPlan;
use fleet_cluster::{ClusterHandle, LocalCluster};
use rand::{Rng, SeedableRng};

use crate::faults::{self, Undo};
use crate::network::FaultNetwork;
use crate::report::{FaultRecord, NetworkSummary, Report, Spread};
use crate::scenario::{Scenario, WorkloadKind};
use crate::workloads::{ActorCreation, Counters, FanOut, Progress, Register, Workload};

/// How long the harness waits for the GCS to declare a killed node dead.
const DETECTION_LIMIT: Duration = Duration::from_secs(30);

/// Runs `scenario` (read from `origin`) on a new local cluster of `fleet_binary` processes
/// under `work_dir`. This process becomes the workload's driver (once per process).
pub async fn run(
    scenario: &Scenario,
    origin: &str,
    fleet_binary: &Path,
    work_dir: &Path,
) -> anyhow::Result<Report> {
    let config = scenario.cluster_config(origin)?;
    let network = if scenario.needs_fault_network() {
        let hosts: Vec<String> = (1..=u64::from(config.gcs.replicas))
            .map(|id| format!("gcs-{id}"))
            .chain((0..config.expanded_nodes().len()).map(|i| format!("node-{i}")))
            .collect();
        Some(
            FaultNetwork::start(&hosts, scenario.seed)
                .await
                .context("starting the fault-injecting proxies")?,
        )
    } else {
        None
    };
    let cluster_dir = work_dir.join("cluster");
    let mut cluster = match &network {
        Some(network) => {
            LocalCluster::up_with(&config, fleet_binary, &cluster_dir, |plan| {
                place_on_fault_network(plan, network)
            })
            .await
        }
        None => LocalCluster::up(&config, fleet_binary, &cluster_dir).await,
    }
    .context("starting the scenario's cluster")?;
    cluster.set_stop_on_drop(true);
    if let Some(network) = &network {
        // The driver lives on node 0: its server on node 0's IP, its connections through
        // node 0's proxy, so that cutting a node off cuts it off from the driver too.
        if let Some(settings) = network.settings("node-0") {
            fleet_gcs::transport::NetworkSettings::set(settings);
        }
    }
    let report = drive(&mut cluster, network.as_ref(), scenario, work_dir).await;
    cluster.set_stop_on_drop(false);
    cluster
        .down(Duration::from_secs(3))
        .context("stopping the scenario's cluster")?;
    report
}

/// Runs `scenario` against the running local cluster recorded in `cluster_dir` (started by
/// `fleet cluster up`), which is left running. Its `[cluster]` table is not used; node and
/// replica numbers refer to the attached cluster. Network faults need `network = "netem"`
/// (the proxies must be in place before the daemons start).
pub async fn run_attached(
    scenario: &Scenario,
    cluster_dir: &Path,
    work_dir: &Path,
) -> anyhow::Result<Report> {
    if scenario.needs_fault_network() {
        anyhow::bail!(
            "scenario {} has network faults, which an attached cluster can only get with \
             network = \"netem\" (root, sch_netem); leave --attach out to let the harness \
             start a cluster behind its fault-injecting proxies",
            scenario.name
        );
    }
    let mut cluster = ClusterHandle::attach(cluster_dir).with_context(|| {
        format!(
            "attaching to the cluster in {} (start one with `fleet cluster up`)",
            cluster_dir.display()
        )
    })?;
    cluster.set_stop_on_drop(false);
    if !cluster.state().is_running() {
        anyhow::bail!(
            "the cluster recorded in {} is not running; start it with `fleet cluster up`",
            cluster_dir.display()
        );
    }
    drive(&mut cluster, None, scenario, work_dir).await
}

/// Attaches this process as the driver (on node 0), runs the scenario's workload under its
/// faults, and detaches.
async fn drive(
    cluster: &mut ClusterHandle,
    network: Option<&FaultNetwork>,
    scenario: &Scenario,
    work_dir: &Path,
) -> anyhow::Result<Report> {
    let driver_node = cluster
        .node_ids()
        .first()
        .cloned()
        .context("the scenario's cluster has no node")?;
    std::env::set_var("FLEET_NODE_ID", &driver_node);
    fleet::init_with(fleet::InitOptions {
        address: Some(cluster.address().to_string()),
        ..Default::default()
    })
    .await
    .context("attaching the harness's driver")?;
    let workload: Box<dyn Workload> = match scenario.workload.kind {
        WorkloadKind::Counters => Box::new(Counters::new(
            scenario.workload.actors,
            scenario.workload.task_retries,
            work_dir.join("checkpoints"),
        )),
        WorkloadKind::Fanout => Box::new(FanOut::new(scenario.workload.tasks)),
        WorkloadKind::Register => Box::new(Register::new(
            cluster.client()?,
            scenario.workload.clients,
            scenario.workload.keys,
        )),
        WorkloadKind::ActorCreation => Box::new(ActorCreation::new(
            cluster.client()?,
            scenario.workload.clients,
        )),
        WorkloadKind::Training => Box::new(crate::training::Training::new(
            scenario.workload.ranks,
            scenario.workload.steps,
            scenario.workload.checkpoint_every,
            work_dir.join("training-checkpoints"),
            cluster.node_ids(),
        )),
        WorkloadKind::ParameterServer => {
            Box::new(crate::parameter_server::ParameterServerWorkload::new(
                scenario.workload.workers,
                scenario.workload.shards,
                scenario.workload.steps,
                work_dir.join("ps-checkpoints"),
                cluster.node_ids(),
            ))
        }
        WorkloadKind::Stream => Box::new(crate::stream::StreamWorkload::new(
            scenario.workload.events,
            scenario.workload.rate,
            work_dir.join("stream-output"),
        )),
    };
    let report = run_on(cluster, network, scenario, workload).await;
    fleet::shutdown().await;
    report
}

/// Gives each daemon its host's IP and egress proxy.
fn place_on_fault_network(plan: &mut ClusterPlan, network: &FaultNetwork) {
    let port = |address: &str| address.rsplit(':').next().unwrap_or("0").to_string();
    for gcs in &mut plan.gcs {
        let host = format!("gcs-{}", gcs.id);
        if let Some(ip) = network.ip(&host) {
            gcs.address = format!("{ip}:{}", port(&gcs.address));
            gcs.host = ip.to_string();
            gcs.env = network.env(&host);
        }
    }
    for node in &mut plan.nodes {
        let host = format!("node-{}", node.index);
        if let Some(ip) = network.ip(&host) {
            node.listen = format!("{ip}:{}", port(&node.listen));
            node.host = ip.to_string();
            node.env = network.env(&host);
        }
    }
}

enum Event {
    Fault(usize),
    Undo(Undo),
}

/// Runs `workload` on a started cluster (this process already attached as its driver)
/// with `scenario`'s faults; a user's own workload plugs in here. Network faults need
/// `network = "netem"` here (or [`run_on`] with the cluster's fault network).
pub async fn run_with(
    cluster: &mut ClusterHandle,
    scenario: &Scenario,
    workload: Box<dyn Workload>,
) -> anyhow::Result<Report> {
    run_on(cluster, None, scenario, workload).await
}

/// [`run_with`] on a cluster placed on `network` (whose proxies make the network faults).
pub async fn run_on(
    cluster: &mut ClusterHandle,
    network: Option<&FaultNetwork>,
    scenario: &Scenario,
    mut workload: Box<dyn Workload>,
) -> anyhow::Result<Report> {
    if scenario.needs_fault_network() && network.is_none() {
        anyhow::bail!(
            "scenario {} has network faults but the cluster is not on a fault network; \
             run it with `fleet chaos run` (which places it on one) or set network = \"netem\"",
            scenario.name
        );
    }
    let gcs = cluster.client()?;
    workload.prepare().await.context("preparing the workload")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(scenario.seed);
    let mut events: Vec<(Duration, Event)> = scenario
        .faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let jitter = if scenario.jitter_ms > 0 {
                rng.gen_range(0..=scenario.jitter_ms)
            } else {
                0
            };
            (
                Duration::from_secs_f64(f.at_secs) + Duration::from_millis(jitter),
                Event::Fault(i),
            )
        })
        .collect();
    let started = Instant::now();
    let duration = Duration::from_secs_f64(scenario.duration_secs);
    let deadline = started + duration;
    let progress = Arc::new(Progress::default());
    let mut injected = Vec::new();
    let mut detections = Vec::new();
    let schedule = async {
        let mut pending_undo = Vec::new();
        loop {
            events.sort_by_key(|(at, _)| *at);
            if events.is_empty() {
                break;
            }
            let (at, event) = events.remove(0);
            tokio::time::sleep_until((started + at).into()).await;
            match event {
                Event::Fault(i) => {
                    let spec = &scenario.faults[i];
                    match faults::inject(cluster, network, spec).await {
                        Ok(fault) => {
                            tracing::info!(target = %fault.target, "fault injected");
                            if let Some(node_id) = fault.node_id.clone() {
                                let gcs = gcs.clone();
                                let at = fault.at;
                                detections.push((
                                    injected.len(),
                                    tokio::spawn(async move {
                                        faults::detection(&gcs, &node_id, at, DETECTION_LIMIT).await
                                    }),
                                ));
                            }
                            if let Some((after, undo)) = fault.undo.clone() {
                                let when = fault.at.duration_since(started) + after;
                                if when < duration {
                                    events.push((when, Event::Undo(undo)));
                                } else {
                                    pending_undo.push(undo);
                                }
                            }
                            injected.push(fault);
                        }
                        Err(error) => {
                            return Err(
                                error.context(format!("injecting fault {i} ({:?})", spec.kind))
                            )
                        }
                    }
                }
                Event::Undo(undo) => faults::undo(cluster, network, &undo)?,
            }
        }
        Ok::<Vec<Undo>, anyhow::Error>(pending_undo)
    };
    let (ran, scheduled) = tokio::join!(workload.run(deadline, progress.clone()), schedule);
    // End every fault before checking (a paused node must answer the final reads).
    let leftover = scheduled?;
    for undo in leftover {
        faults::undo(cluster, network, &undo)?;
    }
    ran.context("running the workload")?;
    let elapsed = started.elapsed();
    let mut records: Vec<FaultRecord> = injected
        .iter()
        .map(|f| FaultRecord {
            at_ms: Report::duration_ms(f.at.duration_since(started)),
            target: f.target.clone(),
            detected_ms: None,
            recovered_ms: progress.recovered_after(f.at).map(Report::duration_ms),
        })
        .collect();
    for (index, detection) in detections {
        if let Ok(Some(after)) = detection.await {
            records[index].detected_ms = Some(Report::duration_ms(after));
        }
    }
    let (mut invariants, lost) = workload.check().await;
    for (record, fault) in records.iter().zip(&injected) {
        if fault.node_id.is_some() && record.detected_ms.is_none() {
            invariants.push(crate::workloads::Verdict {
                invariant: format!("{} is detected", fault.target),
                passed: false,
                evidence: format!("not declared dead within {DETECTION_LIMIT:?}"),
            });
        }
    }
    let passed = lost == 0 && invariants.iter().all(|v| v.passed);
    Ok(Report {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        workload: workload.name(),
        duration_ms: Report::duration_ms(elapsed),
        detection: Spread::of(records.iter().filter_map(|r| r.detected_ms).collect()),
        recovery: Spread::of(records.iter().filter_map(|r| r.recovered_ms).collect()),
        faults: records,
        acknowledged: progress.total() as u64,
        lost_acknowledged: lost,
        invariants,
        passed,
        network: network.map(|n| {
            let stats = n.stats();
            let load =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            NetworkSummary {
                connections: load(&stats.connections),
                held_at_connect: load(&stats.held_at_connect),
                bytes: load(&stats.bytes),
                lost_chunks: load(&stats.lost_chunks),
            }
        }),
    })
}
