//! Runs a scenario: start the cluster, prepare the workload, run it while the faults happen
//! on schedule, end every fault, check the invariants, stop the cluster.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_cluster::{ClusterHandle, LocalCluster};
use rand::{Rng, SeedableRng};

use crate::faults::{self, Undo};
use crate::report::{FaultRecord, Report, Spread};
use crate::scenario::{Scenario, WorkloadKind};
use crate::workloads::{Counters, FanOut, Progress, Register, Workload};

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
    let mut cluster = LocalCluster::up(&config, fleet_binary, &work_dir.join("cluster"))
        .await
        .context("starting the scenario's cluster")?;
    cluster.set_stop_on_drop(true);
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
            work_dir.join("checkpoints"),
        )),
        WorkloadKind::Fanout => Box::new(FanOut::new(scenario.workload.tasks)),
        WorkloadKind::Register => Box::new(Register::new(
            cluster.client()?,
            scenario.workload.clients,
            scenario.workload.keys,
        )),
    };
    let report = run_with(&mut cluster, scenario, workload).await;
    fleet::shutdown().await;
    cluster.set_stop_on_drop(false);
    cluster
        .down(Duration::from_secs(3))
        .context("stopping the scenario's cluster")?;
    report
}

enum Event {
    Fault(usize),
    Undo(Undo),
}

/// Runs `workload` on a started cluster (this process already attached as its driver)
/// with `scenario`'s faults; a user's own workload plugs in here.
pub async fn run_with(
    cluster: &mut ClusterHandle,
    scenario: &Scenario,
    mut workload: Box<dyn Workload>,
) -> anyhow::Result<Report> {
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
                    match faults::inject(cluster, spec).await {
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
                Event::Undo(undo) => faults::undo(cluster, &undo)?,
            }
        }
        Ok::<Vec<Undo>, anyhow::Error>(pending_undo)
    };
    let (ran, scheduled) = tokio::join!(workload.run(deadline, progress.clone()), schedule);
    // End every fault before checking (a paused node must answer the final reads).
    let leftover = scheduled?;
    for undo in leftover {
        faults::undo(cluster, &undo)?;
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
    })
}
