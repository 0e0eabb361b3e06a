//! `fleet bench` (runtime): Ray's microbenchmark, metric for metric, on an embedded
//! single-node cluster started by this process (the `fleet` binary is also the worker).
//!
//! Each metric runs for a fixed time after a warm-up and is reported as a rate; with
//! `--repeat N` the median of N runs (the runs are listed too).

use std::future::Future;
use std::time::{Duration, Instant};

use fleet::ObjectRef;

#[fleet::remote]
fn noop() -> u8 {
    0
}

#[fleet::actor]
pub struct Sink {
    calls: u64,
}

#[fleet::actor]
impl Sink {
    pub fn new() -> Self {
        Sink { calls: 0 }
    }

    pub fn call(&mut self) -> u8 {
        self.calls += 1;
        0
    }

    pub fn call_with_arg(&mut self, arg: Vec<u8>) -> usize {
        self.calls += 1;
        arg.len()
    }

    pub async fn call_async(&mut self) -> u8 {
        self.calls += 1;
        0
    }
}

/// Runs `body` repeatedly for `duration` (after a short warm-up); `body` returns how many
/// operations (or bytes) it did; returns the rate per second.
async fn rate<F, Fut>(duration: Duration, mut body: F) -> fleet::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = fleet::Result<u64>>,
{
    let warmup = Instant::now();
    while warmup.elapsed() < duration / 5 {
        body().await?;
    }
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < duration {
        done += body().await?;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// The floor of a synchronous call, measured in the same run: round trips of 8 bytes over
/// a Unix socket between this process and a child process (`fleet bench unix-echo`), both
/// with plain blocking I/O and no runtime. Returns round trips per second.
pub fn unix_round_trips(duration: Duration) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    use std::os::linux::net::SocketAddrExt;
    let name = format!("fleet-bench-echo-{}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&address)?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "unix-echo", &name])
        .spawn()?;
    let (mut stream, _) = listener.accept()?;
    let mut message = [0u8; 8];
    let mut round_trip = |message: &mut [u8; 8]| -> std::io::Result<()> {
        stream.write_all(message)?;
        stream.read_exact(message)
    };
    let warmup = Instant::now();
    while warmup.elapsed() < duration / 5 {
        round_trip(&mut message)?;
    }
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < duration {
        round_trip(&mut message)?;
        done += 1;
    }
    let rate = done as f64 / started.elapsed().as_secs_f64();
    drop(stream);
    let _ = child.wait();
    Ok(rate)
}

/// The child of [`unix_round_trips`]: echoes 8-byte messages until the parent hangs up.
pub fn unix_echo(name: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let mut stream = std::os::unix::net::UnixStream::connect_addr(&address)?;
    let mut message = [0u8; 8];
    while stream.read_exact(&mut message).is_ok() {
        stream.write_all(&message)?;
    }
    Ok(())
}

/// One metric's name, unit and measurement.
pub struct Measured {
    /// Ray's metric name.
    pub name: &'static str,
    /// "ops/s" or "GB/s".
    pub unit: &'static str,
    /// The rate.
    pub value: f64,
}

/// Runs every metric once; `only` filters by substring.
pub async fn run_all(duration: Duration, only: Option<&str>) -> fleet::Result<Vec<Measured>> {
    let mut out = Vec::new();
    let wanted = |name: &str| only.is_none_or(|f| name.contains(f));
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    macro_rules! metric {
        ($name:expr, $unit:expr, $body:expr) => {
            if wanted($name) {
                let value = $body;
                eprintln!("{} {:.1} {}", $name, value, $unit);
                out.push(Measured {
                    name: $name,
                    unit: $unit,
                    value,
                });
            }
        };
    }
    if wanted("raw_unix_socket_round_trip") {
        let value = tokio::task::spawn_blocking(move || unix_round_trips(duration))
            .await
            .map_err(|e| fleet::Error::Internal(e.to_string()))?
            .map_err(|e| fleet::Error::Internal(format!("the Unix-socket floor: {e:#}")))?;
        eprintln!("raw_unix_socket_round_trip {value:.1} ops/s");
        out.push(Measured {
            name: "raw_unix_socket_round_trip",
            unit: "ops/s",
            value,
        });
    }
    metric!(
        "single_client_tasks_sync",
        "ops/s",
        rate(duration, || async { noop::remote().await.map(|_| 1) }).await?
    );
    metric!(
        "single_client_tasks_async",
        "ops/s",
        rate(duration, || async {
            let refs: Vec<_> = (0..1000).map(|_| noop::remote()).collect();
            fleet::get_all(&refs).await.map(|v| v.len() as u64)
        })
        .await?
    );
    metric!(
        "multi_client_tasks_async",
        "ops/s",
        rate(duration, || async {
            let clients: Vec<_> = (0..cpus)
                .map(|_| {
                    tokio::spawn(async {
                        let refs: Vec<_> = (0..1000).map(|_| noop::remote()).collect();
                        fleet::get_all(&refs).await.map(|v| v.len() as u64)
                    })
                })
                .collect();
            let mut total = 0;
            for client in clients {
                total += client
                    .await
                    .map_err(|e| fleet::Error::Internal(e.to_string()))??;
            }
            Ok(total)
        })
        .await?
    );
    let actor = Sink::remote().spawn().await?;
    metric!(
        "1_1_actor_calls_sync",
        "ops/s",
        rate(duration, || async { actor.call().await.map(|_| 1) }).await?
    );
    metric!(
        "1_1_actor_calls_async",
        "ops/s",
        rate(duration, || async {
            let refs: Vec<_> = (0..1000).map(|_| actor.call()).collect();
            fleet::get_all(&refs).await.map(|v| v.len() as u64)
        })
        .await?
    );
    metric!(
        "1_1_actor_calls_concurrent",
        "ops/s",
        rate(duration, || async {
            let callers: Vec<_> = (0..4)
                .map(|_| {
                    let actor = actor.clone();
                    tokio::spawn(async move {
                        let refs: Vec<_> = (0..250).map(|_| actor.call()).collect();
                        fleet::get_all(&refs).await.map(|v| v.len() as u64)
                    })
                })
                .collect();
            let mut total = 0;
            for caller in callers {
                total += caller
                    .await
                    .map_err(|e| fleet::Error::Internal(e.to_string()))??;
            }
            Ok(total)
        })
        .await?
    );
    metric!(
        "1_1_async_actor_calls_async",
        "ops/s",
        rate(duration, || async {
            let refs: Vec<_> = (0..1000).map(|_| actor.call_async()).collect();
            fleet::get_all(&refs).await.map(|v| v.len() as u64)
        })
        .await?
    );
    let mut actors = Vec::new();
    for _ in 0..cpus {
        actors.push(Sink::remote().spawn().await?);
    }
    metric!(
        "1_n_actor_calls_async",
        "ops/s",
        rate(duration, || async {
            let refs: Vec<_> = (0..1000).map(|i| actors[i % actors.len()].call()).collect();
            fleet::get_all(&refs).await.map(|v| v.len() as u64)
        })
        .await?
    );
    let n_n = |with_arg: bool| {
        let actors = actors.clone();
        async move {
            let callers: Vec<_> = (0..actors.len())
                .map(|c| {
                    let actors = actors.clone();
                    tokio::spawn(async move {
                        if with_arg {
                            let arg = fleet::put(&vec![0u8; 1024])?;
                            let refs: Vec<ObjectRef<usize>> = (0..500)
                                .map(|i| actors[(c + i) % actors.len()].call_with_arg(&arg))
                                .collect();
                            fleet::get_all(&refs).await.map(|v| v.len() as u64)
                        } else {
                            let refs: Vec<_> = (0..500)
                                .map(|i| actors[(c + i) % actors.len()].call())
                                .collect();
                            fleet::get_all(&refs).await.map(|v| v.len() as u64)
                        }
                    })
                })
                .collect();
            let mut total = 0;
            for caller in callers {
                total += caller
                    .await
                    .map_err(|e| fleet::Error::Internal(e.to_string()))??;
            }
            Ok(total)
        }
    };
    metric!(
        "n_n_actor_calls_async",
        "ops/s",
        rate(duration, || n_n(false)).await?
    );
    metric!(
        "n_n_actor_calls_with_arg_async",
        "ops/s",
        rate(duration, || n_n(true)).await?
    );
    metric!(
        "single_client_put_calls",
        "ops/s",
        rate(duration, || async { fleet::put(&0u64).map(|_| 1) }).await?
    );
    let small = fleet::put(&0u64)?;
    metric!(
        "single_client_get_calls",
        "ops/s",
        rate(duration, || async { small.get().await.map(|_| 1) }).await?
    );
    let big = vec![0u8; 100 << 20];
    metric!(
        "single_client_put_gigabytes",
        "GB/s",
        rate(duration, || async {
            fleet::put(&big).map(|_| big.len() as u64)
        })
        .await?
            / 1e9
    );
    let shared = std::sync::Arc::new(vec![0u8; 50 << 20]);
    metric!(
        "multi_client_put_gigabytes",
        "GB/s",
        rate(duration, || async {
            let clients: Vec<_> = (0..cpus)
                .map(|_| {
                    let data = shared.clone();
                    tokio::task::spawn_blocking(move || fleet::put(&*data))
                })
                .collect();
            let mut objects = Vec::new();
            for client in clients {
                objects.push(
                    client
                        .await
                        .map_err(|e| fleet::Error::Internal(e.to_string()))??,
                );
            }
            fleet::wait(&objects, objects.len(), None).await?;
            Ok((objects.len() * shared.len()) as u64)
        })
        .await?
            / 1e9
    );
    metric!(
        "single_client_wait_1k_refs",
        "ops/s",
        rate(duration, || async {
            let refs: Vec<_> = (0..1000).map(|_| noop::remote()).collect();
            let (ready, _) = fleet::wait(&refs, refs.len(), None).await?;
            Ok(u64::from(!ready.is_empty()))
        })
        .await?
    );
    let refs: Vec<ObjectRef<u64>> = (0..10_000u64)
        .map(|i| fleet::put(&i))
        .collect::<fleet::Result<_>>()?;
    let container = fleet::put(&refs)?;
    metric!(
        "single_client_get_object_containing_10k_refs",
        "ops/s",
        rate(duration, || async {
            container.get().await.map(|v| u64::from(v.len() == 10_000))
        })
        .await?
    );
    for a in actors {
        let _ = a.raw().kill().await;
    }
    let _ = actor.raw().kill().await;
    Ok(out)
}
