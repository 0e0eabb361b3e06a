//! The fault-injecting network: partitions, latency and loss between chosen daemons without
//! kernel support (no `netem`, no `iptables`, no root).
//!
//! Every daemon of a chaos cluster is a *host*: GCS replica `j` is `gcs-j`, node `i` (its
//! raylet and all its workers, and for node 0 also the harness's driver) is `node-i`. Each host
//! gets its own loopback IP, which its servers bind (`FLEET_NODE_IP`), and its own egress
//! proxy, which all its outgoing connections go through (`FLEET_EGRESS_PROXY`, HTTP
//! CONNECT). The proxy a connection arrives at names its source; the IP it asks for names
//! its destination. So every byte between two hosts crosses exactly one proxy that knows
//! both ends, and the faults in force decide what happens to it:
//!
//! - **partition**: a blackhole, as when a switch drops everything. A new connection is
//!   held unanswered (the caller's connect timeout fires, as for a dropped SYN); an
//!   established one stops moving bytes both ways (its sender's windows fill, its HTTP/2
//!   keepalive times out). When healed, held bytes flow again, as TCP retransmits them.
//! - **latency**: each chunk is delivered `delay` after it was read, in order.
//! - **loss**: above TCP, a lost packet is a retransmission delay and head-of-line
//!   blocking. Each chunk is lost with probability `loss`; a lost chunk waits one
//!   retransmission timeout (200 ms, Linux's minimum RTO), doubling on each further loss
//!   (at most 3), and everything behind it on that connection waits too.
//!
//! Only loopback is used: the proxies listen on 127.0.0.1, hosts bind 127.77.x.y.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_gcs::transport::{NetworkSettings, EGRESS_PROXY_ENV, NODE_IP_ENV};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Linux's minimum retransmission timeout: what one lost packet costs a TCP connection.
pub const RETRANSMISSION_TIMEOUT: Duration = Duration::from_millis(200);
/// Most consecutive losses charged to one chunk (200 + 400 + 800 ms); at loss rates a
/// network survives (under 50%) a fourth in a row is rarer than 1 in 16.
const MAX_LOSSES_PER_CHUNK: u32 = 3;
/// How long the proxy waits for a destination that is not partitioned to accept.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest CONNECT request accepted.
const MAX_REQUEST_BYTES: usize = 8192;
/// Name of connections from or to an address that is no host (the CLI, another program).
pub const OUTSIDE: &str = "outside";

/// What a fault does to the traffic it covers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkEffect {
    /// Nothing gets through (a blackhole).
    pub blocked: bool,
    /// Added one-way delay.
    pub delay: Duration,
    /// Probability that a chunk is lost (and retransmitted), 0 to 1.
    pub loss: f64,
}

impl LinkEffect {
    fn combine(self, other: LinkEffect) -> LinkEffect {
        LinkEffect {
            blocked: self.blocked || other.blocked,
            delay: self.delay + other.delay,
            loss: 1.0 - (1.0 - self.loss) * (1.0 - other.loss),
        }
    }
}

/// Which traffic a fault covers: between a host of `side` and a host of `peers` (every
/// other host, and the outside, when `peers` is None), both ways.
#[derive(Clone, Debug, PartialEq)]
pub struct Cut {
    /// The cut-off hosts ("node-2", "gcs-3").
    pub side: BTreeSet<String>,
    /// The hosts they are cut off from (None: all others).
    pub peers: Option<BTreeSet<String>>,
}

impl Cut {
    fn covers(&self, from: &str, to: &str) -> bool {
        let other = |host: &str| match &self.peers {
            Some(peers) => peers.contains(host),
            None => !self.side.contains(host),
        };
        (self.side.contains(from) && other(to)) || (self.side.contains(to) && other(from))
    }
}

/// Identifies an active fault (to heal it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FaultId(u64);

#[derive(Clone, Debug, Default)]
struct Rules {
    faults: BTreeMap<FaultId, (Cut, LinkEffect)>,
}

impl Rules {
    fn link(&self, from: &str, to: &str) -> LinkEffect {
        self.faults
            .values()
            .filter(|(cut, _)| cut.covers(from, to))
            .fold(LinkEffect::default(), |acc, (_, effect)| {
                acc.combine(*effect)
            })
    }
}

/// Traffic counters.
#[derive(Debug, Default)]
pub struct NetworkStats {
    /// Connections tunnelled.
    pub connections: AtomicU64,
    /// Connections held unanswered at connect by a partition (at least once).
    pub held_at_connect: AtomicU64,
    /// Bytes delivered.
    pub bytes: AtomicU64,
    /// Chunks charged a retransmission.
    pub lost_chunks: AtomicU64,
}

/// The proxies of one chaos cluster, and the faults in force.
pub struct FaultNetwork {
    rules: watch::Sender<Arc<Rules>>,
    egress: BTreeMap<String, SocketAddr>,
    ips: BTreeMap<String, IpAddr>,
    next_fault: AtomicU64,
    stats: Arc<NetworkStats>,
    stop: CancellationToken,
}

impl Drop for FaultNetwork {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The loopback IP of host `gcs-j` or `node-i`.
pub fn host_ip(host: &str) -> Option<IpAddr> {
    let (third, last) = if let Some(id) = host.strip_prefix("gcs-") {
        (1u8, id.parse::<u8>().ok()?)
    } else if let Some(index) = host.strip_prefix("node-") {
        (2u8, index.parse::<u8>().ok()?.checked_add(1)?)
    } else {
        return None;
    };
    Some(IpAddr::V4(Ipv4Addr::new(127, 77, third, last)))
}

impl FaultNetwork {
    /// Starts an egress proxy for each host (`gcs-1`.., `node-0`..). `seed` seeds the loss.
    pub async fn start(hosts: &[String], seed: u64) -> std::io::Result<Self> {
        let (rules, _) = watch::channel(Arc::new(Rules::default()));
        let stop = CancellationToken::new();
        let stats = Arc::new(NetworkStats::default());
        let mut ips = BTreeMap::new();
        for host in hosts {
            let ip = host_ip(host).ok_or_else(|| {
                std::io::Error::other(format!(
                    "{host} is not a host name the fault network knows (gcs-J or node-I, I < 255)"
                ))
            })?;
            ips.insert(host.clone(), ip);
        }
        let by_ip: Arc<HashMap<IpAddr, String>> =
            Arc::new(ips.iter().map(|(h, ip)| (*ip, h.clone())).collect());
        let mut egress = BTreeMap::new();
        let connection_ids = Arc::new(AtomicU64::new(0));
        for host in hosts {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            egress.insert(host.clone(), listener.local_addr()?);
            let proxy = EgressProxy {
                host: host.clone(),
                by_ip: by_ip.clone(),
                rules: rules.subscribe(),
                stats: stats.clone(),
                seed,
                connection_ids: connection_ids.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(proxy.serve(listener));
        }
        Ok(FaultNetwork {
            rules,
            egress,
            ips,
            next_fault: AtomicU64::new(1),
            stats,
            stop,
        })
    }

    /// The hosts.
    pub fn hosts(&self) -> impl Iterator<Item = &String> {
        self.ips.keys()
    }

    /// Host `host`'s IP.
    pub fn ip(&self, host: &str) -> Option<IpAddr> {
        self.ips.get(host).copied()
    }

    /// The network settings of a process on `host`.
    pub fn settings(&self, host: &str) -> Option<NetworkSettings> {
        Some(NetworkSettings {
            node_ip: Some(self.ip(host)?),
            egress_proxy: Some(self.egress.get(host)?.to_string()),
        })
    }

    /// The environment that puts a daemon (and its children) on `host`.
    pub fn env(&self, host: &str) -> Vec<(String, String)> {
        let Some(settings) = self.settings(host) else {
            return Vec::new();
        };
        let mut env = Vec::new();
        if let Some(ip) = settings.node_ip {
            env.push((NODE_IP_ENV.to_string(), ip.to_string()));
        }
        if let Some(proxy) = settings.egress_proxy {
            env.push((EGRESS_PROXY_ENV.to_string(), proxy));
        }
        env
    }

    /// Puts `effect` on the traffic `cut` covers until [`heal`](Self::heal).
    pub fn inject(&self, cut: Cut, effect: LinkEffect) -> FaultId {
        let id = FaultId(self.next_fault.fetch_add(1, Ordering::Relaxed));
        self.rules.send_modify(|rules| {
            let mut next = (**rules).clone();
            next.faults.insert(id, (cut, effect));
            *rules = Arc::new(next);
        });
        id
    }

    /// Ends a fault.
    pub fn heal(&self, id: FaultId) {
        self.rules.send_modify(|rules| {
            let mut next = (**rules).clone();
            next.faults.remove(&id);
            *rules = Arc::new(next);
        });
    }

    /// The effect in force from `from` to `to` now.
    pub fn link(&self, from: &str, to: &str) -> LinkEffect {
        self.rules.borrow().link(from, to)
    }

    /// Traffic so far.
    pub fn stats(&self) -> &NetworkStats {
        &self.stats
    }
}

struct EgressProxy {
    host: String,
    by_ip: Arc<HashMap<IpAddr, String>>,
    rules: watch::Receiver<Arc<Rules>>,
    stats: Arc<NetworkStats>,
    seed: u64,
    connection_ids: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl EgressProxy {
    async fn serve(self, listener: TcpListener) {
        let this = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                _ = this.stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((client, _)) => {
                    let this = this.clone();
                    tokio::spawn(async move {
                        let stop = this.stop.clone();
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            result = this.tunnel(client) => if let Err(error) = result {
                                tracing::debug!(host = %this.host, %error, "tunnel ended");
                            },
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(host = %this.host, %error, "egress proxy cannot accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn tunnel(&self, mut client: TcpStream) -> std::io::Result<()> {
        client.set_nodelay(true)?;
        let target = read_connect_request(&mut client).await?;
        let destination = target
            .parse::<SocketAddr>()
            .ok()
            .and_then(|a| self.by_ip.get(&a.ip()).cloned())
            .unwrap_or_else(|| OUTSIDE.to_string());
        let mut rules = self.rules.clone();
        // A partitioned destination: say nothing, as a dropped SYN does. The caller's
        // connect timeout ends it, or the heal lets it through.
        if rules.borrow().link(&self.host, &destination).blocked {
            self.stats.held_at_connect.fetch_add(1, Ordering::Relaxed);
            loop {
                if !rules
                    .borrow_and_update()
                    .link(&self.host, &destination)
                    .blocked
                {
                    break;
                }
                let mut probe = [0u8; 1];
                tokio::select! {
                    changed = rules.changed() => if changed.is_err() { return Ok(()) },
                    // The caller gave up (closed) while held.
                    peeked = client.peek(&mut probe) => match peeked {
                        Ok(0) | Err(_) => return Ok(()),
                        // Early bytes (no client of Fleet's sends them): only the heal
                        // matters now.
                        Ok(_) => if rules.changed().await.is_err() { return Ok(()) },
                    },
                }
            }
        }
        let upstream =
            match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(&target)).await
            {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(error)) => {
                    let reply =
                        format!("HTTP/1.1 502 Bad Gateway\r\nX-Fleet-Error: {error}\r\n\r\n");
                    client.write_all(reply.as_bytes()).await?;
                    return Ok(());
                }
                Err(_) => {
                    client
                        .write_all(b"HTTP/1.1 504 Gateway Timeout\r\n\r\n")
                        .await?;
                    return Ok(());
                }
            };
        upstream.set_nodelay(true)?;
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let id = self.connection_ids.fetch_add(1, Ordering::Relaxed);
        let (client_read, client_write) = client.into_split();
        let (upstream_read, upstream_write) = upstream.into_split();
        let outbound = Pump {
            from: self.host.clone(),
            to: destination.clone(),
            rules: self.rules.clone(),
            stats: self.stats.clone(),
            rng: StdRng::seed_from_u64(self.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        };
        let inbound = Pump {
            from: destination,
            to: self.host.clone(),
            rules: self.rules.clone(),
            stats: self.stats.clone(),
            rng: StdRng::seed_from_u64(!self.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        };
        let _ = tokio::join!(
            outbound.run(client_read, upstream_write),
            inbound.run(upstream_read, client_write)
        );
        Ok(())
    }
}

/// Reads `CONNECT HOST:PORT HTTP/1.1` and its headers; returns `HOST:PORT`. Nothing past the
/// blank line is read (the client sends nothing before the proxy's answer).
async fn read_connect_request(client: &mut TcpStream) -> std::io::Result<String> {
    let mut request = Vec::with_capacity(128);
    let read = async {
        while !request.ends_with(b"\r\n\r\n") {
            if request.len() >= MAX_REQUEST_BYTES {
                return Err(std::io::Error::other("CONNECT request too long"));
            }
            let mut byte = [0u8; 1];
            if client.read(&mut byte).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before its CONNECT request ended",
                ));
            }
            request.push(byte[0]);
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::other("no CONNECT request within 5 s"))??;
    let text = String::from_utf8_lossy(&request);
    let mut words = text.lines().next().unwrap_or_default().split_whitespace();
    match (words.next(), words.next()) {
        (Some("CONNECT"), Some(target)) => Ok(target.to_string()),
        _ => {
            client
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                .await?;
            Err(std::io::Error::other("not a CONNECT request"))
        }
    }
}

/// One direction of a tunnel.
struct Pump {
    from: String,
    to: String,
    rules: watch::Receiver<Arc<Rules>>,
    stats: Arc<NetworkStats>,
    rng: StdRng,
}

/// Waits while the link is blocked.
async fn wait_open(rules: &mut watch::Receiver<Arc<Rules>>, from: &str, to: &str) -> bool {
    loop {
        if !rules.borrow_and_update().link(from, to).blocked {
            return true;
        }
        if rules.changed().await.is_err() {
            return false;
        }
    }
}

impl Pump {
    async fn run(
        mut self,
        mut source: impl AsyncRead + Unpin,
        mut sink: impl AsyncWrite + Unpin,
    ) -> std::io::Result<()> {
        // Chunks in flight, each with when it is due; bounded, so a slow link pushes back.
        let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(64);
        let mut writer_rules = self.rules.clone();
        let (from, to) = (self.from.clone(), self.to.clone());
        let stats = self.stats.clone();
        let writer = async move {
            while let Some((due, chunk)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                // Bytes in flight when a partition starts are held until it heals.
                if !wait_open(&mut writer_rules, &from, &to).await {
                    return Ok(());
                }
                match chunk {
                    Some(bytes) => {
                        sink.write_all(&bytes).await?;
                        stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    }
                    None => {
                        sink.shutdown().await?;
                        return Ok(());
                    }
                }
            }
            Ok::<(), std::io::Error>(())
        };
        let reader = async move {
            let mut last_due = Instant::now();
            let mut buffer = vec![0u8; 64 << 10];
            loop {
                // Partitioned: stop reading, so the sender's windows fill as in a blackhole.
                if !wait_open(&mut self.rules, &self.from, &self.to).await {
                    return Ok(());
                }
                let n = source.read(&mut buffer).await?;
                let chunk = (n > 0).then(|| buffer[..n].to_vec());
                let effect = self.rules.borrow().link(&self.from, &self.to);
                let mut due = Instant::now() + effect.delay;
                if chunk.is_some() && effect.loss > 0.0 {
                    let mut timeout = RETRANSMISSION_TIMEOUT;
                    let mut losses = 0;
                    while losses < MAX_LOSSES_PER_CHUNK && self.rng.gen_bool(effect.loss.min(1.0)) {
                        due += timeout;
                        timeout *= 2;
                        losses += 1;
                    }
                    if losses > 0 {
                        self.stats.lost_chunks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // In order: nothing overtakes a delayed chunk (TCP's head-of-line blocking).
                due = due.max(last_due);
                last_due = due;
                let end = chunk.is_none();
                if tx.send((due, chunk)).await.is_err() || end {
                    return Ok::<(), std::io::Error>(());
                }
            }
        };
        let (read, written) = tokio::join!(reader, writer);
        read.and(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(side: &[&str], peers: Option<&[&str]>) -> Cut {
        Cut {
            side: side.iter().map(|s| s.to_string()).collect(),
            peers: peers.map(|p| p.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn a_cut_covers_both_directions_between_its_sides_only() {
        let isolate = cut(&["node-2", "gcs-3"], None);
        assert!(isolate.covers("node-2", "gcs-1"));
        assert!(isolate.covers("gcs-1", "node-2"));
        assert!(isolate.covers("node-0", "gcs-3"));
        assert!(isolate.covers("node-2", OUTSIDE));
        // Inside one side, traffic flows.
        assert!(!isolate.covers("node-2", "gcs-3"));
        assert!(!isolate.covers("node-0", "gcs-1"));
        let between = cut(&["node-1"], Some(&["node-2"]));
        assert!(between.covers("node-2", "node-1"));
        assert!(!between.covers("node-1", "gcs-1"));
    }

    #[test]
    fn effects_of_overlapping_faults_add_up() {
        let mut rules = Rules::default();
        let slow = LinkEffect {
            delay: Duration::from_millis(30),
            loss: 0.5,
            ..Default::default()
        };
        rules
            .faults
            .insert(FaultId(1), (cut(&["node-1"], None), slow));
        rules
            .faults
            .insert(FaultId(2), (cut(&["node-1", "node-2"], None), slow));
        let link = rules.link("node-1", "gcs-1");
        assert_eq!(link.delay, Duration::from_millis(60));
        assert!((link.loss - 0.75).abs() < 1e-9);
        assert!(!link.blocked);
        assert_eq!(
            rules.link("node-1", "node-2").delay,
            Duration::from_millis(30)
        );
        assert_eq!(rules.link("node-0", "gcs-1"), LinkEffect::default());
    }

    #[test]
    fn hosts_get_distinct_loopback_ips() {
        assert_eq!(host_ip("gcs-3"), Some("127.77.1.3".parse().expect("ip")));
        assert_eq!(host_ip("node-0"), Some("127.77.2.1".parse().expect("ip")));
        assert_eq!(
            host_ip("node-254"),
            Some("127.77.2.255".parse().expect("ip"))
        );
        assert_eq!(host_ip("node-255"), None);
        assert_eq!(host_ip("driver"), None);
    }

    async fn echo_server(ip: IpAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let address = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(address)
    }

    async fn round_trip(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(payload).await?;
        let mut back = vec![0u8; payload.len()];
        stream.read_exact(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn partitions_blackhole_and_heal_delay_and_loss_slow_down(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let hosts = vec!["node-0".to_string(), "node-1".to_string()];
        let network = FaultNetwork::start(&hosts, 7).await?;
        let server = echo_server(network.ip("node-1").ok_or("ip")?).await?;
        let proxy = network
            .settings("node-0")
            .and_then(|s| s.egress_proxy)
            .ok_or("proxy")?;
        let target = server.to_string();

        // Healthy: bytes go through.
        let mut stream = fleet_gcs::transport::connect_via_proxy(&proxy, &target).await?;
        assert_eq!(round_trip(&mut stream, b"hello").await?, b"hello");

        // Partitioned: an established connection moves nothing, a new one is not answered.
        let partition = network.inject(
            cut(&["node-1"], None),
            LinkEffect {
                blocked: true,
                ..Default::default()
            },
        );
        let stalled =
            tokio::time::timeout(Duration::from_millis(300), round_trip(&mut stream, b"held"))
                .await;
        assert!(stalled.is_err(), "bytes crossed a partition");
        let connecting = tokio::time::timeout(
            Duration::from_millis(300),
            fleet_gcs::transport::connect_via_proxy(&proxy, &target),
        )
        .await;
        assert!(
            connecting.is_err(),
            "a connection was answered across a partition"
        );
        assert!(network.stats().held_at_connect.load(Ordering::Relaxed) >= 1);

        // Healed: the held bytes arrive (as retransmitted), new connections work.
        network.heal(partition);
        let mut held = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut held)).await??;
        assert_eq!(&held, b"held");
        let mut fresh = fleet_gcs::transport::connect_via_proxy(&proxy, &target).await?;
        assert_eq!(round_trip(&mut fresh, b"again").await?, b"again");

        // Latency: a round trip crosses the proxy twice, so takes at least twice the delay.
        let delay = network.inject(
            cut(&["node-1"], None),
            LinkEffect {
                delay: Duration::from_millis(40),
                ..Default::default()
            },
        );
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut fresh, b"slow").await?, b"slow");
        assert!(started.elapsed() >= Duration::from_millis(80));
        network.heal(delay);

        // Certain loss: every chunk waits out retransmission timeouts.
        let loss = network.inject(
            cut(&["node-1"], None),
            LinkEffect {
                loss: 1.0,
                ..Default::default()
            },
        );
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut fresh, b"lossy").await?, b"lossy");
        assert!(started.elapsed() >= RETRANSMISSION_TIMEOUT * 2);
        assert!(network.stats().lost_chunks.load(Ordering::Relaxed) >= 2);
        network.heal(loss);

        // A destination that refuses: the caller gets the proxy's error, naming it.
        let closed = TcpListener::bind("127.77.2.2:0").await?;
        let refused_at = closed.local_addr()?.to_string();
        drop(closed);
        let error = fleet_gcs::transport::connect_via_proxy(&proxy, &refused_at)
            .await
            .expect_err("refused");
        assert!(error.to_string().contains("502"), "{error}");
        Ok(())
    }
}
