//! `fleet::kv`: a small key-value store that every driver, task and actor of a cluster
//! shares, kept in the GCS (Raft-replicated, on disk): what coordination between them needs
//! (a rendezvous, a leader's claim, a committed checkpoint's manifest, a piece of
//! configuration), as Ray's internal KV.
//!
//! - Keys live in namespaces (the library's or application's name); `fleet.`-prefixed
//!   namespaces are the runtime's own and refused here.
//! - Every write is committed through Raft before it returns; a read sees every write
//!   acknowledged before it started.
//! - Every key has a version, raised by each write: [`compare_and_set`] writes only over the
//!   version the caller read (0 for a key that must not exist yet), so that concurrent
//!   read-modify-writes never lose one another's updates.
//! - Small values only ([`MAX_VALUE_BYTES`]): bulk data goes through `fleet::put` or
//!   `fleet::channel`.

use crate::context::CoreWorker;
use crate::error::{Error, Result};
use fleet_proto::gcs::RejectCode;

/// The largest value `put` accepts.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// The longest key.
pub const MAX_KEY_BYTES: usize = 1024;
/// The longest namespace.
pub const MAX_NAMESPACE_BYTES: usize = 128;
/// Namespaces starting with this are the runtime's (channel records, ...).
const RESERVED_PREFIX: &str = "fleet.";
/// What user namespaces are stored under in the GCS, apart from the runtime's.
const STORED_PREFIX: &str = "user:";

/// A key with its value and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key, without its namespace.
    pub key: String,
    /// The value as written.
    pub value: Vec<u8>,
    /// Raised by every write of the key; what [`compare_and_set`] compares.
    pub version: u64,
}

fn invalid(what: String) -> Error {
    Error::InvalidArgument(what)
}

fn stored_namespace(namespace: &str) -> Result<String> {
    if namespace.is_empty() {
        return Err(invalid(
            "fleet::kv: the namespace is empty; name it after your library or application".into(),
        ));
    }
    if namespace.len() > MAX_NAMESPACE_BYTES {
        return Err(invalid(format!(
            "fleet::kv: namespace {namespace:?} is {} bytes, over the {MAX_NAMESPACE_BYTES}-byte limit",
            namespace.len()
        )));
    }
    if namespace.starts_with(RESERVED_PREFIX) {
        return Err(invalid(format!(
            "fleet::kv: namespace {namespace:?} starts with {RESERVED_PREFIX:?}, which is the runtime's; pick another name"
        )));
    }
    Ok(format!("{STORED_PREFIX}{namespace}"))
}

fn check_key(namespace: &str, key: &str) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "fleet::kv: a key of {} bytes in namespace {namespace:?} is over the {MAX_KEY_BYTES}-byte limit",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(namespace: &str, key: &str, value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(invalid(format!(
            "fleet::kv: the value for {namespace}/{key} is {} bytes, over the {MAX_VALUE_BYTES}-byte limit; put bulk data in the object store (fleet::put) and store its reference",
            value.len()
        )));
    }
    Ok(())
}

fn worker() -> Result<std::sync::Arc<CoreWorker>> {
    crate::context::current()
}

fn entry(record: fleet_proto::gcs::Record, namespace: &str) -> Result<Entry> {
    let key = String::from_utf8(record.key).map_err(|e| {
        Error::Internal(format!(
            "fleet::kv: a key in namespace {namespace:?} is not UTF-8: {e}"
        ))
    })?;
    Ok(Entry {
        key,
        value: record.value,
        version: record.mod_version,
    })
}

/// Reads a key; `None` when it does not exist.
pub async fn get(namespace: &str, key: &str) -> Result<Option<Entry>> {
    let stored = stored_namespace(namespace)?;
    check_key(namespace, key)?;
    let record = worker()?.gcs.kv_get(&stored, key.as_bytes()).await?;
    record.map(|r| entry(r, namespace)).transpose()
}

/// Writes a key (creating or replacing it); returns its new version.
pub async fn put(namespace: &str, key: &str, value: &[u8]) -> Result<u64> {
    let stored = stored_namespace(namespace)?;
    check_key(namespace, key)?;
    check_value(namespace, key, value)?;
    // The GCS answers with the commit's index; the key's version is read back from it.
    worker()?.gcs.kv_put(&stored, key.as_bytes(), value).await?;
    Ok(get(namespace, key).await?.map(|e| e.version).unwrap_or(0))
}

/// Writes a key only when its version is still `expected_version` (0: only when the key
/// does not exist). `Ok(true)` when written, `Ok(false)` when another write came first
/// (read it again and retry).
pub async fn compare_and_set(
    namespace: &str,
    key: &str,
    value: &[u8],
    expected_version: u64,
) -> Result<bool> {
    let stored = stored_namespace(namespace)?;
    check_key(namespace, key)?;
    check_value(namespace, key, value)?;
    match worker()?
        .gcs
        .kv_compare_and_set(&stored, key.as_bytes(), value, expected_version)
        .await
    {
        Ok(_) => Ok(true),
        Err(fleet_gcs::Error::Rejected { code, .. })
            if code == RejectCode::CasFailed || code == RejectCode::AlreadyExists =>
        {
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

/// Deletes a key (nothing happens when it does not exist).
pub async fn delete(namespace: &str, key: &str) -> Result<()> {
    let stored = stored_namespace(namespace)?;
    check_key(namespace, key)?;
    worker()?
        .gcs
        .kv_delete(&stored, key.as_bytes(), false)
        .await?;
    Ok(())
}

/// Deletes every key of the namespace that starts with `prefix` ("" deletes them all).
pub async fn delete_prefix(namespace: &str, prefix: &str) -> Result<()> {
    let stored = stored_namespace(namespace)?;
    check_key(namespace, prefix)?;
    worker()?
        .gcs
        .kv_delete(&stored, prefix.as_bytes(), true)
        .await?;
    Ok(())
}

/// The keys of the namespace that start with `prefix`, in key order.
pub async fn list(namespace: &str, prefix: &str) -> Result<Vec<Entry>> {
    let stored = stored_namespace(namespace)?;
    check_key(namespace, prefix)?;
    let records = worker()?.gcs.kv_list(&stored, prefix.as_bytes()).await?;
    let mut entries = records
        .into_iter()
        .map(|r| entry(r, namespace))
        .collect::<Result<Vec<_>>>()?;
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_checked_and_kept_apart_from_the_runtimes() {
        assert_eq!(
            stored_namespace("collective").ok().as_deref(),
            Some("user:collective")
        );
        for bad in ["", "fleet.channels"] {
            let message = stored_namespace(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(message.contains("namespace"), "{bad:?}: {message}");
        }
        assert!(stored_namespace(&"n".repeat(MAX_NAMESPACE_BYTES + 1)).is_err());
    }

    #[test]
    fn oversized_keys_and_values_are_refused_with_the_fix() {
        assert!(check_key("ns", &"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(check_key("ns", &"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        let message = check_value("ns", "k", &vec![0; MAX_VALUE_BYTES + 1])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("fleet::put"), "{message}");
    }
}
