//! Seeded simulation with `turmoil`: three replicas (the real server, driver and state
//! machine; in-memory disks that survive crashes), three clients doing reads and writes on a
//! few keys, and a nemesis that crashes, restarts, wipes (a lost disk) and partitions
//! replicas. The recorded history must be linearizable.
//!
//! `FLEET_SIM_SEEDS=N` runs N seeds (default 12); `FLEET_SIM_SEED=S` replays one. The seed
//! fixes the network, the fault schedule and the workload; raft-rs draws its election jitter
//! from its own thread RNG, so a replay follows the same schedule but not always the same
//! elections.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fleet_gcs::auth::{authed, AuthChannel};
use fleet_gcs::client::ClientOptions;
use fleet_gcs::linearizability::{check_kv, OpKind, Operation};
use fleet_gcs::storage::{MemDisk, RaftDisk};
use fleet_gcs::transport::Connector;
use fleet_gcs::{GcsClient, GcsConfig};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::transport::{Endpoint, Uri};

const REPLICAS: [&str; 3] = ["gcs1", "gcs2", "gcs3"];
const PORT: u16 = 6380;
const CLIENTS: usize = 3;
const OPS_PER_CLIENT: usize = 60;
const KEYS: [&str; 3] = ["a", "b", "c"];

struct SimStream(turmoil::net::TcpStream);

impl Connected for SimStream {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// gRPC channels over turmoil's simulated TCP.
struct SimConnector;

impl Connector for SimConnector {
    fn channel(&self, address: &str) -> Result<AuthChannel, String> {
        let target = address.to_string();
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(500));
        Ok(authed(endpoint.connect_with_connector_lazy(
            tower::service_fn(move |_: Uri| {
                let target = target.clone();
                async move {
                    let stream = turmoil::net::TcpStream::connect(target).await?;
                    Ok::<_, io::Error>(TokioIo::new(stream))
                }
            }),
        )))
    }
}

fn replica_config(id: u64) -> GcsConfig {
    GcsConfig {
        id,
        advertise_address: format!("{}:{PORT}", REPLICAS[id as usize - 1]),
        peers: REPLICAS
            .iter()
            .enumerate()
            .map(|(i, name)| (i as u64 + 1, format!("{name}:{PORT}")))
            .collect(),
        data_dir: format!("/sim/{id}").into(),
        // Small enough that crashed replicas come back through snapshots.
        snapshot_threshold: 30,
        request_timeout: Duration::from_secs(2),
        ..GcsConfig::default()
    }
}

type History = Rc<RefCell<Vec<(String, Operation<String>)>>>;

enum Fault {
    Crashed(&'static str),
    /// Crashed, and its disk lost: it restarts empty under its old id.
    Wiped(&'static str),
    Partitioned(&'static str),
}

/// Runs one seed: (operations completed, faults, of which wipes, simulated time).
fn run_seed(seed: u64) -> Result<(usize, usize, usize, Duration), String> {
    // Replicas and clients share this process's token. Channels take the token that exists
    // when they are made, and the clients start before the replicas serve.
    fleet_gcs::auth::ensure_process_token();
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(5))
        .build();
    let disks: BTreeMap<&'static str, MemDisk> = REPLICAS
        .iter()
        .map(|name| (*name, MemDisk::default()))
        .collect();
    for (i, name) in REPLICAS.iter().enumerate() {
        let disk = disks[name].clone();
        let id = i as u64 + 1;
        sim.host(*name, move || {
            let disk = disk.clone();
            async move {
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                let incoming = futures::stream::unfold(listener, |listener| async move {
                    let accepted = listener.accept().await.map(|(stream, _)| SimStream(stream));
                    Some((accepted, listener))
                });
                fleet_gcs::server::run(
                    replica_config(id),
                    Box::new(disk),
                    incoming,
                    Arc::new(SimConnector),
                    CancellationToken::new(),
                )
                .await?;
                Ok(())
            }
        });
    }

    let history: History = Rc::default();
    let start = tokio::time::Instant::now();
    for c in 0..CLIENTS {
        let history = history.clone();
        let mut rng =
            StdRng::seed_from_u64(seed ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        sim.client(format!("client{c}"), async move {
            let client = GcsClient::with_connector(
                REPLICAS.iter().map(|r| format!("{r}:{PORT}")).collect(),
                Arc::new(SimConnector),
                ClientOptions {
                    deadline: Duration::from_secs(4),
                    rpc_timeout: Duration::from_secs(1),
                    initial_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(200),
                },
            );
            let now = move || (tokio::time::Instant::now() - start).as_nanos() as u64;
            for i in 0..OPS_PER_CLIENT {
                let key = KEYS[rng.gen_range(0..KEYS.len())];
                let call = now();
                if rng.gen_bool(0.5) {
                    let value = format!("c{c}-{i}");
                    let outcome = client.kv_put("sim", key.as_bytes(), value.as_bytes()).await;
                    let ret = outcome.is_ok().then(now);
                    history.borrow_mut().push((
                        key.into(),
                        Operation {
                            client: c,
                            call,
                            ret,
                            kind: OpKind::Write(value),
                        },
                    ));
                } else if let Ok(record) = client.kv_get("sim", key.as_bytes()).await {
                    let value = record.map(|r| String::from_utf8_lossy(&r.value).into_owned());
                    history.borrow_mut().push((
                        key.into(),
                        Operation {
                            client: c,
                            call,
                            ret: Some(now()),
                            kind: OpKind::Read(value),
                        },
                    ));
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
            }
            Ok(())
        });
    }

    let mut nemesis = StdRng::seed_from_u64(seed);
    let mut next_fault = Duration::from_millis(nemesis.gen_range(500..1_500));
    let mut fault: Option<Fault> = None;
    let mut faults = 0;
    let mut wipes = 0;
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => return Err(format!("simulation failed: {error}")),
        }
        if sim.elapsed() < next_fault {
            continue;
        }
        match fault.take() {
            Some(Fault::Crashed(host)) => sim.bounce(host),
            Some(Fault::Wiped(host)) => {
                disks[host].wipe();
                sim.bounce(host);
            }
            Some(Fault::Partitioned(host)) => {
                for other in REPLICAS.iter().filter(|r| **r != host) {
                    sim.repair(host, *other);
                }
            }
            None => {
                let host = REPLICAS[nemesis.gen_range(0..REPLICAS.len())];
                faults += 1;
                let kind = nemesis.gen_range(0..3);
                // Raft survives one lost disk at a time: a replica is wiped only while the
                // others hold their state (none is empty or still catching up).
                let others_whole = REPLICAS.iter().filter(|r| **r != host).all(|r| {
                    disks[r].load().is_ok_and(|state| {
                        !state.catching_up && state.snapshot.get_metadata().index > 0
                    })
                });
                if kind == 0 || (kind == 1 && !others_whole) {
                    sim.crash(host);
                    fault = Some(Fault::Crashed(host));
                } else if kind == 1 {
                    wipes += 1;
                    sim.crash(host);
                    fault = Some(Fault::Wiped(host));
                } else {
                    for other in REPLICAS.iter().filter(|r| **r != host) {
                        sim.partition(host, *other);
                    }
                    fault = Some(Fault::Partitioned(host));
                }
            }
        }
        next_fault = sim.elapsed() + Duration::from_millis(nemesis.gen_range(300..2_500));
    }
    if faults < 3 {
        return Err(format!(
            "the workload ended after only {faults} faults; lengthen it"
        ));
    }
    let history = history.borrow().clone();
    let completed = history.iter().filter(|(_, op)| op.ret.is_some()).count();
    if completed < CLIENTS * OPS_PER_CLIENT / 4 {
        return Err(format!(
            "only {completed} operations completed; the cluster barely served ({faults} faults)"
        ));
    }
    check_kv(&history).map_err(|violation| {
        let mut by_key: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (key, op) in &history {
            by_key.entry(key).or_default().push(format!("{op:?}"));
        }
        format!("history not linearizable: {violation}\nhistory: {by_key:#?}")
    })?;
    Ok((completed, faults, wipes, sim.elapsed()))
}

#[test]
fn three_replicas_stay_linearizable_under_crashes_and_partitions() {
    // FLEET_SIM_LOG=info (a tracing filter) shows the replicas' logs, e.g. to follow a seed.
    if let Ok(filter) = std::env::var("FLEET_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let seeds: Vec<u64> = match std::env::var("FLEET_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("FLEET_SIM_SEED is a number")],
        Err(_) => {
            let count: u64 = std::env::var("FLEET_SIM_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(12);
            let base: u64 = std::env::var("FLEET_SIM_BASE_SEED")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            (base..base + count).collect()
        }
    };
    for seed in seeds {
        match run_seed(seed) {
            Ok((completed, faults, wipes, elapsed)) => {
                eprintln!("seed {seed}: {completed} operations under {faults} faults ({wipes} lost disks) in {elapsed:?} simulated, linearizable")
            }
            Err(error) => panic!("seed {seed} failed (replay with FLEET_SIM_SEED={seed}): {error}"),
        }
    }
}
