//! A typed table: rows keyed by bytes, each with the versions of its creation and last change,
//! emitting a watch event for every change.

use std::collections::BTreeMap;

use fleet_proto::gcs::{
    ActorInfo, CheckpointInfo, EventKind, JobInfo, NodeInfo, ObjectInfo, PlacementGroupInfo,
    Record, Table as TableKind, TaskEvent, WatchEvent,
};
use prost::Message;

/// A value a table can hold, with its wire encoding inside a [`Record`].
pub trait TableValue: Clone + Sized {
    /// Encodes the value for a record.
    fn encode_value(&self) -> Vec<u8>;
    /// Decodes a record's value.
    fn decode_value(bytes: &[u8]) -> Result<Self, String>;
}

macro_rules! prost_table_value {
    ($($ty:ty),*) => {$(
        impl TableValue for $ty {
            fn encode_value(&self) -> Vec<u8> {
                self.encode_to_vec()
            }
            fn decode_value(bytes: &[u8]) -> Result<Self, String> {
                <$ty>::decode(bytes).map_err(|e| format!("undecodable {}: {e}", stringify!($ty)))
            }
        }
    )*};
}

prost_table_value!(
    NodeInfo,
    JobInfo,
    ActorInfo,
    PlacementGroupInfo,
    ObjectInfo,
    TaskEvent,
    CheckpointInfo
);

impl TableValue for Vec<u8> {
    fn encode_value(&self) -> Vec<u8> {
        self.clone()
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, String> {
        Ok(bytes.to_vec())
    }
}

/// One row.
#[derive(Clone, Debug)]
pub struct Row<V> {
    /// The value.
    pub value: V,
    /// Log index of the write that created the row.
    pub create_version: u64,
    /// Log index of the write that last changed it.
    pub mod_version: u64,
}

/// Splits a KV table key (`namespace \0 key`) into its parts.
pub fn split_kv_key(key: &[u8]) -> (String, Vec<u8>) {
    match key.iter().position(|b| *b == 0) {
        Some(at) => (
            String::from_utf8_lossy(&key[..at]).into_owned(),
            key[at + 1..].to_vec(),
        ),
        None => (String::new(), key.to_vec()),
    }
}

/// Joins a namespace and key into a KV table key. Namespaces cannot contain NUL.
pub fn kv_key(namespace: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(namespace.len() + 1 + key.len());
    out.extend_from_slice(namespace.as_bytes());
    out.push(0);
    out.extend_from_slice(key);
    out
}

/// A typed table.
#[derive(Clone, Debug)]
pub struct Table<V> {
    kind: TableKind,
    rows: BTreeMap<Vec<u8>, Row<V>>,
}

impl<V: TableValue> Table<V> {
    /// An empty table of `kind`.
    pub fn new(kind: TableKind) -> Self {
        Table {
            kind,
            rows: BTreeMap::new(),
        }
    }

    /// The row at `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Row<V>> {
        self.rows.get(key)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Rows in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Row<V>)> {
        self.rows.iter()
    }

    /// Rows whose key starts with `prefix`.
    pub fn scan_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Row<V>)> + 'a {
        self.rows
            .range(prefix.to_vec()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Inserts or replaces the row, recording the change.
    pub fn put(&mut self, key: Vec<u8>, value: V, version: u64, events: &mut Vec<WatchEvent>) {
        let create_version = self
            .rows
            .get(&key)
            .map_or(version, |row| row.create_version);
        let row = Row {
            value,
            create_version,
            mod_version: version,
        };
        events.push(WatchEvent {
            version,
            kind: EventKind::Put as i32,
            record: Some(self.record(&key, &row)),
        });
        self.rows.insert(key, row);
    }

    /// Removes the row, recording the change; returns it.
    pub fn delete(
        &mut self,
        key: &[u8],
        version: u64,
        events: &mut Vec<WatchEvent>,
    ) -> Option<Row<V>> {
        let row = self.rows.remove(key)?;
        let mut record = self.record(key, &row);
        record.mod_version = version;
        events.push(WatchEvent {
            version,
            kind: EventKind::Delete as i32,
            record: Some(record),
        });
        Some(row)
    }

    /// The wire form of a row.
    pub fn record(&self, key: &[u8], row: &Row<V>) -> Record {
        let (namespace, key) = if self.kind == TableKind::Kv {
            split_kv_key(key)
        } else {
            (String::new(), key.to_vec())
        };
        Record {
            table: self.kind as i32,
            namespace,
            key,
            value: row.value.encode_value(),
            create_version: row.create_version,
            mod_version: row.mod_version,
        }
    }

    /// Restores a row from a snapshot record.
    pub fn restore(&mut self, record: &Record) -> Result<(), String> {
        let key = if self.kind == TableKind::Kv {
            kv_key(&record.namespace, &record.key)
        } else {
            record.key.clone()
        };
        self.rows.insert(
            key,
            Row {
                value: V::decode_value(&record.value)?,
                create_version: record.create_version,
                mod_version: record.mod_version,
            },
        );
        Ok(())
    }
}
