//! `fleet bench gcs`: write throughput and p50/p99 latency of the GCS with 1 and 3 replicas
//! (real `fleet gcs` processes, fsync on), N concurrent clients, and the same load against a
//! 3-node etcd on loopback through the same gRPC client stack; then leader failover time for
//! both (SIGKILL the leader under a writer, time until the next acknowledged write).
//!
//! Prints one `name value unit` line per metric: the median over `repeat` rounds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::AuthChannel;
use fleet_proto::etcd::kv_client::KvClient;
use fleet_proto::etcd::PutRequest;

use crate::client::{ClientOptions, GcsClient};
use crate::error::{Error, Result};
use crate::local_cluster::{free_loopback_address, LocalCluster, LocalClusterOptions};
use crate::transport::{Connector, TcpConnector};

/// Which systems to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchSystem {
    /// Fleet's GCS only.
    Fleet,
    /// etcd only.
    Etcd,
    /// Both, side by side.
    Both,
}

impl FromStr for BenchSystem {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fleet" => Ok(BenchSystem::Fleet),
            "etcd" => Ok(BenchSystem::Etcd),
            "both" => Ok(BenchSystem::Both),
            other => Err(format!("unknown system '{other}': use fleet, etcd or both")),
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Systems to measure.
    pub system: BenchSystem,
    /// Concurrent clients (each its own connection and session).
    pub clients: usize,
    /// Measured time per configuration (after a 1 s warm-up).
    pub duration: Duration,
    /// Value size in bytes.
    pub value_size: usize,
    /// Measure leader failover too.
    pub failover: bool,
    /// Where data dirs and logs go (a temporary directory when `None`).
    pub work_dir: Option<PathBuf>,
    /// The etcd binary.
    pub etcd_binary: PathBuf,
    /// fsync the Raft log (off only to find where time goes; etcd always syncs).
    pub fsync: bool,
    /// Rounds; every metric is reported as the median over rounds.
    pub repeat: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            system: BenchSystem::Both,
            clients: 32,
            duration: Duration::from_secs(5),
            value_size: 128,
            failover: true,
            work_dir: None,
            etcd_binary: PathBuf::from("etcd"),
            fsync: true,
            repeat: 3,
        }
    }
}

/// One configuration's result.
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// Acknowledged writes per second.
    pub ops_per_sec: f64,
    /// Median write latency.
    pub p50: Duration,
    /// 99th percentile write latency.
    pub p99: Duration,
    /// Writes that failed.
    pub errors: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Drives `clients` concurrent writers of `put` for `duration` after a warm-up.
async fn drive<F, Fut>(clients: usize, duration: Duration, put: F) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let put = Arc::new(put);
    let warmup = Duration::from_secs(1);
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let put = put.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let ok = put(client, i).await;
                i += 1;
                if began >= start {
                    if ok {
                        latencies.push(began.elapsed());
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(Ok((latencies, e))) = tasks.join_next().await {
        all.extend(latencies);
        errors += e;
    }
    all.sort();
    LoadResult {
        ops_per_sec: all.len() as f64 / duration.as_secs_f64(),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        errors,
    }
}

/// Metric samples across repeated rounds; reported as medians.
#[derive(Default)]
struct Metrics {
    samples: Vec<(String, String, Vec<f64>)>,
}

impl Metrics {
    fn record(&mut self, name: &str, unit: &str, value: f64) {
        match self.samples.iter_mut().find(|(n, _, _)| n == name) {
            Some((_, _, values)) => values.push(value),
            None => self.samples.push((name.into(), unit.into(), vec![value])),
        }
    }

    fn record_load(&mut self, prefix: &str, result: &LoadResult) {
        self.record(
            &format!("{prefix}_write_throughput"),
            "ops/s",
            result.ops_per_sec,
        );
        self.record(
            &format!("{prefix}_write_p50"),
            "ms",
            result.p50.as_secs_f64() * 1e3,
        );
        self.record(
            &format!("{prefix}_write_p99"),
            "ms",
            result.p99.as_secs_f64() * 1e3,
        );
        self.record(
            &format!("{prefix}_write_errors"),
            "count",
            result.errors as f64,
        );
    }

    fn median(&self, name: &str) -> Option<f64> {
        let (_, _, values) = self.samples.iter().find(|(n, _, _)| n == name)?;
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        Some(sorted[sorted.len() / 2])
    }

    fn print(&self) {
        for (name, unit, values) in &self.samples {
            let median = self.median(name).unwrap_or_default();
            let runs: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
            println!("{name} {median:.3} {unit}  # runs: {}", runs.join(" "));
        }
        for replicas in [1, 3] {
            let fleet = self.median(&format!("fleet_gcs_{replicas}r_write_throughput"));
            let etcd = self.median(&format!("etcd_{replicas}r_write_throughput"));
            if let (Some(fleet), Some(etcd)) = (fleet, etcd) {
                println!(
                    "ratio_fleet_over_etcd_{replicas}r_write_throughput {:.2} x",
                    fleet / etcd
                );
            }
        }
        if let (Some(fleet), Some(etcd)) = (
            self.median("fleet_gcs_3r_leader_failover"),
            self.median("etcd_3r_leader_failover"),
        ) {
            println!(
                "ratio_fleet_over_etcd_3r_leader_failover {:.2} x",
                fleet / etcd
            );
        }
    }
}

async fn fleet_load(cluster: &LocalCluster, options: &BenchOptions) -> Result<LoadResult> {
    let clients: Vec<GcsClient> = (0..options.clients)
        .map(|_| cluster.client())
        .collect::<Result<_>>()?;
    let clients = Arc::new(clients);
    let value = vec![b'x'; options.value_size];
    Ok(drive(options.clients, options.duration, move |c, i| {
        let client = clients[c].clone();
        let value = value.clone();
        async move {
            let key = format!("bench/{c}/{}", i % 1000);
            client.kv_put("bench", key.as_bytes(), &value).await.is_ok()
        }
    })
    .await)
}

struct EtcdCluster {
    children: Vec<(u64, Child)>,
    client_addresses: Vec<String>,
}

impl EtcdCluster {
    fn start(binary: &Path, dir: &Path, n: usize) -> Result<Self> {
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        for _ in 1..=n {
            peers.push(free_loopback_address()?);
            clients.push(free_loopback_address()?);
        }
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("e{}=http://{p}", i + 1))
            .collect();
        let mut children = Vec::new();
        for i in 0..n {
            let name = format!("e{}", i + 1);
            let log = std::fs::File::create(dir.join(format!("{name}.log"))).map_err(|e| {
                Error::StorageWrite {
                    path: dir.to_path_buf(),
                    reason: e.to_string(),
                }
            })?;
            let child = Command::new(binary)
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.join(&name))
                .args(["--listen-client-urls", &format!("http://{}", clients[i])])
                .args(["--advertise-client-urls", &format!("http://{}", clients[i])])
                .args(["--listen-peer-urls", &format!("http://{}", peers[i])])
                .args(["--initial-advertise-peer-urls", &format!("http://{}", peers[i])])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", "fleet-bench"])
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| Error::InvalidConfig {
                    field: "--etcd-binary",
                    reason: format!(
                        "cannot start {}: {e}; install Debian's etcd-server (apt-get install etcd-server) or pass --system fleet",
                        binary.display()
                    ),
                })?;
            children.push(((i + 1) as u64, child));
        }
        Ok(EtcdCluster {
            children,
            client_addresses: clients,
        })
    }

    fn channels(&self) -> Result<Vec<AuthChannel>> {
        self.client_addresses
            .iter()
            .map(|a| TcpConnector.channel(a).map_err(Error::InvalidRequest))
            .collect()
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let channels = self.channels()?;
        loop {
            let mut client = KvClient::new(channels[0].clone());
            let put = PutRequest {
                key: b"ready".to_vec(),
                value: b"1".to_vec(),
                ..PutRequest::default()
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), client.put(put)).await {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: "etcd to serve writes",
                    millis: timeout.as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index (into `children`) of the leader, asked with `etcdctl endpoint status`.
    fn leader(&self) -> Option<usize> {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.client_addresses.join(","),
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output()
            .ok()?;
        let statuses: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        for status in statuses.as_array()? {
            let endpoint = status["Endpoint"].as_str()?;
            let header = &status["Status"]["header"];
            if header["member_id"] == status["Status"]["leader"] {
                return self
                    .client_addresses
                    .iter()
                    .position(|a| endpoint.ends_with(a.as_str()));
            }
        }
        None
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn etcd_load(cluster: &EtcdCluster, options: &BenchOptions) -> Result<LoadResult> {
    // One channel (connection) per client, spread over the members like etcd's own benchmark
    // tool spreads its clients; followers forward to the leader.
    let mut clients = Vec::new();
    for c in 0..options.clients {
        let address = &cluster.client_addresses[c % cluster.client_addresses.len()];
        clients.push(KvClient::new(
            TcpConnector
                .channel(address)
                .map_err(Error::InvalidRequest)?,
        ));
    }
    let clients = Arc::new(clients);
    let value = vec![b'x'; options.value_size];
    Ok(drive(options.clients, options.duration, move |c, i| {
        let mut client = clients[c].clone();
        let value = value.clone();
        async move {
            let key = format!("bench/{c}/{}", i % 1000).into_bytes();
            client
                .put(PutRequest {
                    key,
                    value,
                    ..PutRequest::default()
                })
                .await
                .is_ok()
        }
    })
    .await)
}

/// Kills the leader under a writer; returns the time from SIGKILL to the next acknowledged
/// write.
async fn fleet_failover(cluster: &mut LocalCluster) -> Result<Duration> {
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let client = GcsClient::with_connector(
        cluster.addresses().split(',').map(str::to_string).collect(),
        Arc::new(TcpConnector),
        ClientOptions {
            rpc_timeout: Duration::from_millis(300),
            initial_backoff: Duration::from_millis(5),
            ..ClientOptions::default()
        },
    );
    client.kv_put("bench", b"failover", b"before").await?;
    let killed = Instant::now();
    cluster.kill(leader);
    client.kv_put("bench", b"failover", b"after").await?;
    Ok(killed.elapsed())
}

async fn etcd_failover(cluster: &mut EtcdCluster) -> Result<Duration> {
    let leader = cluster
        .leader()
        .ok_or_else(|| Error::InvalidRequest("could not find etcd's leader with etcdctl".into()))?;
    let channels = cluster.channels()?;
    let killed = Instant::now();
    let (_, child) = &mut cluster.children[leader];
    let _ = child.kill();
    let _ = child.wait();
    let mut i = 0usize;
    loop {
        let target = i % channels.len();
        i += 1;
        if target == leader {
            continue;
        }
        let mut client = KvClient::new(channels[target].clone());
        let put = PutRequest {
            key: b"failover".to_vec(),
            value: b"after".to_vec(),
            ..PutRequest::default()
        };
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), client.put(put)).await {
            return Ok(killed.elapsed());
        }
        if killed.elapsed() > Duration::from_secs(30) {
            return Err(Error::Timeout {
                what: "etcd to elect a new leader",
                millis: 30_000,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the benchmark with `binary` as the `fleet` executable: `repeat` rounds, each
/// measuring every configuration once (so the systems alternate under the same conditions);
/// prints each metric's median and the runs.
pub async fn run(options: BenchOptions, binary: &Path) -> Result<()> {
    let dir = match &options.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("fleet-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::StorageWrite {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    println!(
        "# clients={} value_size={} duration={:?} rounds={} fleet_fsync={} (etcd always fsyncs)",
        options.clients, options.value_size, options.duration, options.repeat, options.fsync
    );
    let mut metrics = Metrics::default();
    for round in 0..options.repeat.max(1) {
        eprintln!("round {}/{}", round + 1, options.repeat.max(1));
        if options.system != BenchSystem::Etcd {
            for replicas in [1u64, 3] {
                let run_dir = fresh_dir(&dir, &format!("fleet-{replicas}"))?;
                let mut cluster = LocalCluster::start(
                    binary,
                    &run_dir,
                    replicas,
                    LocalClusterOptions {
                        fsync: options.fsync,
                        ..LocalClusterOptions::default()
                    },
                )?;
                cluster.wait_for_leader(Duration::from_secs(15)).await?;
                let result = fleet_load(&cluster, &options).await?;
                metrics.record_load(&format!("fleet_gcs_{replicas}r"), &result);
                if options.failover && replicas == 3 {
                    let took = fleet_failover(&mut cluster).await?;
                    metrics.record(
                        "fleet_gcs_3r_leader_failover",
                        "ms",
                        took.as_secs_f64() * 1e3,
                    );
                }
            }
        }
        if options.system != BenchSystem::Fleet {
            for replicas in [1usize, 3] {
                let run_dir = fresh_dir(&dir, &format!("etcd-{replicas}"))?;
                let mut cluster = EtcdCluster::start(&options.etcd_binary, &run_dir, replicas)?;
                cluster.wait_ready(Duration::from_secs(20)).await?;
                let result = etcd_load(&cluster, &options).await?;
                metrics.record_load(&format!("etcd_{replicas}r"), &result);
                if options.failover && replicas == 3 {
                    let took = etcd_failover(&mut cluster).await?;
                    metrics.record("etcd_3r_leader_failover", "ms", took.as_secs_f64() * 1e3);
                }
            }
        }
    }
    metrics.print();
    if options.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn fresh_dir(parent: &Path, name: &str) -> Result<PathBuf> {
    let dir = parent.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::StorageWrite {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    Ok(dir)
}
