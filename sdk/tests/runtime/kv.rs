//! `fleet::kv` from real processes: concurrent compare-and-set, listing, limits.

use anyhow::{ensure, Context, Result};

/// Adds 1 to a counter in the KV `times` times with compare-and-set; returns how many of
/// its writes lost a race and were retried.
#[fleet::remote]
async fn increment_with_cas(key: String, times: u32) -> Result<u32, String> {
    let mut retried = 0;
    for _ in 0..times {
        loop {
            let current = fleet::kv::get("kv-test", &key)
                .await
                .map_err(|e| e.to_string())?;
            let (value, version) = match current {
                Some(entry) => {
                    let bytes: [u8; 8] = entry
                        .value
                        .as_slice()
                        .try_into()
                        .map_err(|_| format!("counter {key} is not 8 bytes"))?;
                    (u64::from_le_bytes(bytes), entry.version)
                }
                None => (0, 0),
            };
            let written =
                fleet::kv::compare_and_set("kv-test", &key, &(value + 1).to_le_bytes(), version)
                    .await
                    .map_err(|e| e.to_string())?;
            if written {
                break;
            }
            retried += 1;
        }
    }
    Ok(retried)
}

pub async fn the_kv_store_is_shared_and_compare_and_set_loses_no_update() -> Result<()> {
    fleet::kv::delete_prefix("kv-test", "").await?;
    // Four processes raise one counter together: every increment counts.
    let workers: Vec<_> = (0..4)
        .map(|_| increment_with_cas::remote("counter".to_string(), 10u32))
        .collect();
    let retried: u32 = fleet::get_all(&workers).await?.into_iter().sum();
    let entry = fleet::kv::get("kv-test", "counter")
        .await?
        .context("the counter was never written")?;
    let bytes: [u8; 8] = entry.value.as_slice().try_into()?;
    ensure!(
        u64::from_le_bytes(bytes) == 40,
        "4 writers x 10 increments gave {} ({retried} retried)",
        u64::from_le_bytes(bytes)
    );
    println!("  40 increments from 4 processes, {retried} compare-and-set retries");

    // Versions rise, a stale version is refused, absent means version 0.
    let first = fleet::kv::put("kv-test", "a/1", b"one").await?;
    let second = fleet::kv::put("kv-test", "a/1", b"uno").await?;
    ensure!(second > first, "versions {first} then {second}");
    ensure!(
        !fleet::kv::compare_and_set("kv-test", "a/1", b"stale", first).await?,
        "a write over an old version was taken"
    );
    ensure!(
        !fleet::kv::compare_and_set("kv-test", "a/1", b"new", 0).await?,
        "create-only over an existing key was taken"
    );
    fleet::kv::put("kv-test", "a/2", b"two").await?;
    fleet::kv::put("kv-test", "b", b"other").await?;
    let listed: Vec<(String, Vec<u8>)> = fleet::kv::list("kv-test", "a/")
        .await?
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    ensure!(
        listed
            == vec![
                ("a/1".into(), b"uno".to_vec()),
                ("a/2".into(), b"two".to_vec())
            ],
        "listing a/: {listed:?}"
    );
    fleet::kv::delete_prefix("kv-test", "a/").await?;
    ensure!(
        fleet::kv::get("kv-test", "a/1").await?.is_none(),
        "a/1 survived its prefix's deletion"
    );
    ensure!(
        fleet::kv::get("kv-test", "b").await?.is_some(),
        "b went with a/"
    );
    fleet::kv::delete("kv-test", "b").await?;
    ensure!(
        fleet::kv::get("kv-test", "b").await?.is_none(),
        "b survived its deletion"
    );

    // The runtime's namespaces and oversized values are refused with the fix.
    let reserved = fleet::kv::put("fleet.channels", "x", b"y").await;
    let message = reserved.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(
        message.contains("runtime"),
        "a runtime namespace: {message:?}"
    );
    let big = fleet::kv::put("kv-test", "big", &vec![0u8; fleet::kv::MAX_VALUE_BYTES + 1]).await;
    let message = big.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(
        message.contains("fleet::put"),
        "an oversized value: {message:?}"
    );
    fleet::kv::delete_prefix("kv-test", "").await?;
    Ok(())
}
