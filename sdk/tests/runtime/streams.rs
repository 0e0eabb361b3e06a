//! Streaming returns on real workers: items as they are made, backpressure, a re-run after a
//! SIGKILL delivering nothing twice, errors as the last item, actor methods that stream, a
//! consumer that leaves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use fleet::{Emitter, Error};
use futures::StreamExt;

/// Emits `0..count`, each `pause_ms` apart, and records how far it got in `progress`.
#[fleet::remote]
async fn count_to(
    count: u64,
    pause_ms: u64,
    progress: String,
    mut out: Emitter<u64>,
) -> Result<(), String> {
    for i in 0..count {
        out.emit(i).await.map_err(|e| e.to_string())?;
        let _ = std::fs::write(&progress, (i + 1).to_string());
        if pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
    }
    Ok(())
}

/// Emits `0..count`; the first run kills its own worker after `crash_after` items.
#[fleet::remote]
async fn count_then_crash_once(
    count: u64,
    crash_after: u64,
    marker: String,
    mut out: Emitter<u64>,
) -> Result<(), String> {
    for i in 0..count {
        if i == crash_after && !Path::new(&marker).exists() {
            let _ = std::fs::write(&marker, b"crashed");
            std::process::abort();
        }
        out.emit(i).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Emits two items, then fails.
#[fleet::remote]
async fn two_then_fail(mut out: Emitter<String>) -> Result<(), String> {
    out.emit("a".to_string()).await.map_err(|e| e.to_string())?;
    out.emit("b".to_string()).await.map_err(|e| e.to_string())?;
    Err("the producer gave up after two items".into())
}

/// Emits large items (through the object store).
#[fleet::remote]
async fn big_items(count: u64, len: usize, mut out: Emitter<Vec<u8>>) -> Result<(), String> {
    for i in 0..count {
        out.emit(vec![i as u8; len])
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Emits until its consumer leaves; reports why it stopped in `stopped`.
#[fleet::remote]
async fn until_nobody_reads(stopped: String, mut out: Emitter<u64>) -> u64 {
    let mut i = 0;
    loop {
        if let Err(error) = out.emit(i).await {
            let _ = std::fs::write(&stopped, error.to_string());
            return i;
        }
        i += 1;
    }
}

/// A streaming function written as a stream: the squares of 0..n.
#[fleet::remote]
fn squares(n: u64) -> impl futures::Stream<Item = u64> {
    futures::stream::iter((0..n).map(|i| i * i))
}

#[fleet::actor]
pub struct Tokenizer {
    prefix: String,
}

#[fleet::actor]
impl Tokenizer {
    pub fn new(prefix: String) -> Self {
        Tokenizer { prefix }
    }

    /// Streams the letters of `word`, each with the actor's prefix (as a returned stream).
    pub fn letters(&self, word: String) -> impl futures::Stream<Item = String> + '_ {
        let letters: Vec<char> = word.chars().collect();
        futures::stream::iter(letters).map(move |c| format!("{}{c}", self.prefix))
    }

    /// Streams the words of `text`, each with the actor's prefix.
    pub async fn words(&self, text: String, mut out: Emitter<String>) -> Result<usize, String> {
        let mut n = 0;
        for word in text.split_whitespace() {
            out.emit(format!("{}{word}", self.prefix))
                .await
                .map_err(|e| e.to_string())?;
            n += 1;
        }
        Ok(n)
    }
}

fn fresh_dir(name: &str) -> Result<PathBuf> {
    let dir = super::scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn read_count(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

pub async fn items_arrive_while_the_task_runs_with_backpressure() -> Result<()> {
    let dir = fresh_dir("stream-basic")?;
    let progress = dir.join("progress");
    // Items come before the task ends: the first is here long before the 50th is made.
    let started = Instant::now();
    let mut slow = count_to::remote(50u64, 20u64, progress.to_string_lossy().to_string());
    let first = slow.next_value().await.context("no first item")??;
    let first_after = started.elapsed();
    ensure!(first == 0);
    let rest = slow.collect_values().await?;
    ensure!(
        rest == (1..50).collect::<Vec<u64>>(),
        "items out of order or missing: {rest:?}"
    );
    ensure!(
        first_after < started.elapsed() / 2,
        "the first item came after {first_after:?}, the whole stream took {:?}",
        started.elapsed()
    );
    // Backpressure: nobody reads, so the producer stops one window ahead.
    let window = fleet::STREAM_WINDOW;
    let fast = count_to::remote(10 * window, 0u64, progress.to_string_lossy().to_string());
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_count(&progress) < window {
        ensure!(
            Instant::now() < deadline,
            "the producer never reached the window"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let made = read_count(&progress);
    ensure!(
        made <= window,
        "with nothing read, the producer made {made} items (window {window})"
    );
    // Reading lets it go on, to the end.
    let values = fast.collect_values().await?;
    ensure!(values.len() as u64 == 10 * window);
    println!(
        "  first item after {first_after:?}; unread, the producer stopped at {made} (window {window})"
    );
    Ok(())
}

pub async fn a_sigkilled_producer_is_rerun_and_no_item_comes_twice() -> Result<()> {
    let dir = fresh_dir("stream-crash")?;
    let marker = dir.join("crashed");
    let stream = count_then_crash_once::remote(30u64, 12u64, marker.to_string_lossy().to_string());
    let values = stream.collect_values().await?;
    ensure!(marker.exists(), "the producer never crashed");
    ensure!(
        values == (0..30).collect::<Vec<u64>>(),
        "after the re-run: {values:?}"
    );
    Ok(())
}

pub async fn a_failing_producer_ends_its_stream_with_the_error() -> Result<()> {
    let mut stream = two_then_fail::remote();
    ensure!(stream.next_value().await.context("a")?? == "a");
    ensure!(stream.next_value().await.context("b")?? == "b");
    match stream.next_value().await {
        Some(Err(Error::Task(remote))) if remote.message.contains("gave up") => {}
        other => return Err(anyhow!("expected the producer's error, got {other:?}")),
    }
    ensure!(stream.next().await.is_none(), "nothing after the error");
    Ok(())
}

pub async fn large_items_travel_through_the_object_store() -> Result<()> {
    let len = 2 << 20;
    let stream = big_items::remote(5u64, len);
    let values = stream.collect_values().await?;
    ensure!(values.len() == 5);
    for (i, value) in values.iter().enumerate() {
        ensure!(value.len() == len && value.iter().all(|b| *b == i as u8));
    }
    Ok(())
}

pub async fn an_actor_method_streams_and_a_consumer_may_leave() -> Result<()> {
    let tokenizer = Tokenizer::remote("#".to_string()).spawn().await?;
    let words = tokenizer
        .words("the quick brown fox".to_string())
        .collect_values()
        .await?;
    ensure!(
        words == vec!["#the", "#quick", "#brown", "#fox"],
        "{words:?}"
    );
    // Written as returned streams, a function's and a method's items arrive the same way.
    let letters = tokenizer
        .letters("abc".to_string())
        .collect_values()
        .await?;
    ensure!(letters == vec!["#a", "#b", "#c"], "{letters:?}");
    let squares = squares::remote(6u64).collect_values().await?;
    ensure!(squares == vec![0, 1, 4, 9, 16, 25], "{squares:?}");
    // A consumer that drops its stream stops the producer (its next emit fails).
    let dir = fresh_dir("stream-leave")?;
    let stopped = dir.join("stopped");
    let mut endless = until_nobody_reads::remote(stopped.to_string_lossy().to_string());
    for expected in 0..3u64 {
        ensure!(endless.next_value().await.context("item")?? == expected);
    }
    drop(endless);
    let deadline = Instant::now() + Duration::from_secs(20);
    let why = loop {
        if let Ok(why) = std::fs::read_to_string(&stopped) {
            break why;
        }
        ensure!(
            Instant::now() < deadline,
            "the producer did not stop after its consumer left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(why.contains("no consumer"), "stopped with: {why}");
    // A stream can be cancelled like a task.
    let progress = dir.join("progress");
    let mut slow = count_to::remote(1000u64, 50u64, progress.to_string_lossy().to_string());
    ensure!(slow.next_value().await.context("first")?? == 0);
    slow.cancel().await?;
    let mut ended_with = None;
    while let Some(item) = slow.next().await {
        if let Err(error) = item {
            ended_with = Some(error);
        }
    }
    ensure!(
        matches!(ended_with, Some(Error::Cancelled { .. })),
        "a cancelled stream ends with Cancelled, got {ended_with:?}"
    );
    tokenizer.raw().kill().await?;
    Ok(())
}

/// Three return values, the last one large (through the object store).
#[fleet::remote(num_returns = 3)]
fn split_three(x: u64) -> (u64, String, Vec<u8>) {
    (x * 2, format!("#{x}"), vec![x as u8; 2 << 20])
}

/// Two return values, or an error for both.
#[fleet::remote(num_returns = 2)]
async fn pair_or_fail(fail: bool, wait_ms: u64) -> Result<(u64, u64), String> {
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    if fail {
        Err("no pair today".into())
    } else {
        Ok((1, 2))
    }
}

pub async fn multiple_returns_are_objects_of_their_own() -> Result<()> {
    let (doubled, name, big) = split_three::remote(7u64);
    ensure!(name.get().await? == "#7");
    drop(name);
    ensure!(doubled.get().await? == 14);
    let bytes = big.get().await?;
    ensure!(bytes.len() == 2 << 20 && bytes.iter().all(|b| *b == 7));
    // A failure reaches every return value.
    let (left, right) = pair_or_fail::remote(true, 0u64);
    for side in [&left, &right] {
        match side.get().await {
            Err(Error::Task(remote)) if remote.message.contains("no pair today") => {}
            other => return Err(anyhow!("expected the task's error, got {other:?}")),
        }
    }
    // Either return value cancels the task.
    let (left, right) = pair_or_fail::remote(false, 60_000u64);
    fleet::cancel(&right).await?;
    for side in [&left, &right] {
        match fleet::get_timeout(side, Duration::from_secs(10)).await {
            Err(Error::Cancelled { .. }) => {}
            other => return Err(anyhow!("expected Cancelled, got {other:?}")),
        }
    }
    let (one, two) = pair_or_fail::remote(false, 0u64);
    ensure!((one.get().await?, two.get().await?) == (1, 2));
    Ok(())
}
