//! The cluster config (`fleet.toml`): what daemons to run, where, with which resources.
//!
//! Parsed with serde (`deny_unknown_fields`) and validated before anything starts; every
//! error names the key (`nodes[1].num_cpus: must be > 0`) and, for an unknown key, the
//! nearest known one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// More GPUs than any machine has (the raylet refuses more, too).
pub const MAX_GPUS: u32 = 1024;

/// Where the daemons run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// On this machine, as detached processes.
    #[default]
    Local,
    /// On the machines named by `gcs.hosts` and `nodes[].host`, over SSH.
    Hosts,
}

/// A whole cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name: its state directory and the GCS's cluster name.
    pub name: String,
    /// Where the daemons run.
    pub provider: Provider,
    /// How long `up` waits for a leader and for every raylet to be ALIVE.
    pub ready_timeout_secs: u64,
    /// The control store.
    pub gcs: GcsSection,
    /// The nodes (one raylet each; `count` repeats an entry).
    pub nodes: Vec<NodeSpec>,
    /// The hosts provider's SSH settings.
    pub ssh: SshSection,
    /// TLS for every connection (required, or `insecure`, by the hosts provider).
    pub tls: Option<TlsSection>,
    /// The hosts provider: accept plaintext on the network (daemons listen on 0.0.0.0
    /// without TLS; only the cluster token guards them).
    pub insecure: bool,
}

/// `[tls]`: PEM files every daemon (and driver) uses; the paths must exist on every host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// This process's certificate chain (one certificate for the whole cluster is fine).
    pub cert: String,
    /// Its private key.
    pub key: String,
    /// The CA that signed every certificate of the cluster.
    pub ca: String,
    /// The name servers' certificates carry (default: the host each client dials).
    pub server_name: Option<String>,
}

impl TlsSection {
    /// Reads the files and uses them for this process's own connections (`fleet cluster
    /// up` checking readiness, a CLI command talking to the cluster).
    pub fn adopt(&self) -> Result<()> {
        let settings =
            fleet_gcs::tls::TlsSettings::load(&self.files()).map_err(|reason| Error::Config {
                origin: "the cluster config".into(),
                key: "tls".into(),
                reason,
            })?;
        fleet_gcs::tls::set(Some(settings));
        Ok(())
    }

    /// The files as the TLS layer takes them.
    pub fn files(&self) -> fleet_gcs::tls::TlsFiles {
        fleet_gcs::tls::TlsFiles {
            cert: self.cert.clone().into(),
            key: self.key.clone().into(),
            ca: self.ca.clone().into(),
            server_name: self.server_name.clone(),
        }
    }
}

/// `[gcs]`: the replicas of the control store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcsSection {
    /// 1, 3 or 5 replicas.
    pub replicas: u32,
    /// Replica `i` (from 1) listens on `base_port + i - 1` (local) or `base_port` on its host
    /// (hosts); 0 picks free ports (local only).
    pub base_port: u16,
    /// The hosts provider: one host per replica.
    pub hosts: Vec<String>,
    /// Raft tick in milliseconds.
    pub tick_ms: u64,
    /// Election timeout in ticks.
    pub election_ticks: u32,
    /// How often the leader checks raylets (the daemon's default when unset).
    pub health_check_ms: Option<u64>,
    /// A raylet silent this long is declared dead (the daemon's default when unset).
    pub node_timeout_ms: Option<u64>,
    /// fsync the Raft log (turn off only for throwaway test clusters).
    pub fsync: bool,
}

/// `[[nodes]]`: one raylet (or `count` identical ones).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSpec {
    /// This many identical nodes.
    pub count: u32,
    /// The hosts provider: the machine to run on.
    pub host: Option<String>,
    /// The raylet's port (0: any free port).
    pub port: u16,
    /// CPUs offered (unset: the raylet detects them).
    pub num_cpus: Option<f64>,
    /// GPUs offered: declared (pinning works without real GPUs) or, unset, detected.
    pub num_gpus: Option<u32>,
    /// Memory offered, in bytes (unset: the raylet's default).
    pub memory_bytes: Option<u64>,
    /// Object store capacity in bytes (unset: the raylet's default).
    pub object_store_bytes: Option<u64>,
    /// Custom resources.
    pub resources: BTreeMap<String, f64>,
    /// Labels for scheduling constraints.
    pub labels: BTreeMap<String, String>,
}

/// `[ssh]`: how the hosts provider reaches its machines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SshSection {
    /// Log in as this user (default: ssh's own choice).
    pub user: Option<String>,
    /// Extra `ssh` arguments, e.g. `["-i", "~/.ssh/fleet"]`.
    pub options: Vec<String>,
    /// The `fleet` program on the remote machines.
    pub fleet_binary: String,
    /// The cluster directory on the remote machines (relative paths start at the login
    /// directory); default `.fleet/clusters/<name>`.
    pub remote_dir: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: "default".into(),
            provider: Provider::Local,
            ready_timeout_secs: 60,
            gcs: GcsSection::default(),
            nodes: Vec::new(),
            ssh: SshSection::default(),
            tls: None,
            insecure: false,
        }
    }
}

impl Default for GcsSection {
    fn default() -> Self {
        GcsSection {
            replicas: 3,
            base_port: 6380,
            hosts: Vec::new(),
            tick_ms: 100,
            election_ticks: 10,
            health_check_ms: None,
            node_timeout_ms: None,
            fsync: true,
        }
    }
}

impl Default for NodeSpec {
    fn default() -> Self {
        NodeSpec {
            count: 1,
            host: None,
            port: 0,
            num_cpus: None,
            num_gpus: None,
            memory_bytes: None,
            object_store_bytes: None,
            resources: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }
}

impl Default for SshSection {
    fn default() -> Self {
        SshSection {
            user: None,
            options: Vec::new(),
            fleet_binary: "fleet".into(),
            remote_dir: None,
        }
    }
}

const ROOT_KEYS: &[&str] = &[
    "name",
    "provider",
    "ready_timeout_secs",
    "gcs",
    "nodes",
    "ssh",
    "tls",
    "insecure",
];
const TLS_KEYS: &[&str] = &["cert", "key", "ca", "server_name"];
const GCS_KEYS: &[&str] = &[
    "replicas",
    "base_port",
    "hosts",
    "tick_ms",
    "election_ticks",
    "health_check_ms",
    "node_timeout_ms",
    "fsync",
];
const NODE_KEYS: &[&str] = &[
    "count",
    "host",
    "port",
    "num_cpus",
    "num_gpus",
    "memory_bytes",
    "object_store_bytes",
    "resources",
    "labels",
];
const SSH_KEYS: &[&str] = &["user", "options", "fleet_binary", "remote_dir"];

/// Resource names that have their own key.
const BUILTIN_RESOURCES: &[(&str, &str)] = &[
    ("CPU", "num_cpus"),
    ("GPU", "num_gpus"),
    ("memory", "memory_bytes"),
    ("object_store_memory", "object_store_bytes"),
];

impl ClusterConfig {
    /// The default local cluster: 3 GCS replicas and 2 raylets splitting this machine's CPUs
    /// (at least 1 CPU each). GPUs are detected by the first node only, so two raylets on one
    /// machine do not both offer the same devices.
    pub fn default_local() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let per_node = (cpus / 2).max(1) as f64;
        let object_store = crate::process::default_object_store_bytes(2);
        let node = |num_gpus: Option<u32>| NodeSpec {
            num_cpus: Some(per_node),
            num_gpus,
            object_store_bytes: Some(object_store),
            ..NodeSpec::default()
        };
        ClusterConfig {
            nodes: vec![node(None), node(Some(0))],
            ..ClusterConfig::default()
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates TOML; `origin` names it in errors (a file name).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let table: toml::Table = toml::from_str(text).map_err(|e| Error::ConfigSyntax {
            origin: origin.into(),
            reason: e.to_string().trim_end().to_string(),
        })?;
        locate_error(&table).map_err(|(key, reason)| Error::Config {
            origin: origin.into(),
            key,
            reason,
        })?;
        let config: ClusterConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| Error::Config {
                    origin: origin.into(),
                    key: "(root)".into(),
                    reason: e.message().to_string(),
                })?;
        config.validate_as(origin)?;
        Ok(config)
    }

    /// The config as TOML (what `cluster.json` keeps, and what docs show).
    pub fn to_toml_string(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every value; the error names the key and the fix.
    pub fn validate(&self) -> Result<()> {
        self.validate_as("the cluster config")
    }

    fn validate_as(&self, origin: &str) -> Result<()> {
        self.check().map_err(|(key, reason)| Error::Config {
            origin: origin.into(),
            key,
            reason,
        })
    }

    /// The nodes with `count` expanded: one entry per raylet.
    pub fn expanded_nodes(&self) -> Vec<NodeSpec> {
        self.nodes
            .iter()
            .flat_map(|spec| {
                let one = NodeSpec {
                    count: 1,
                    ..spec.clone()
                };
                std::iter::repeat_n(one, spec.count as usize)
            })
            .collect()
    }

    fn check(&self) -> std::result::Result<(), (String, String)> {
        let fail = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return fail(
                "name",
                &format!(
                    "'{}' is not a usable cluster name; use 1 to 64 letters, digits, '-' or '_'",
                    self.name
                ),
            );
        }
        if self.ready_timeout_secs == 0 {
            return fail("ready_timeout_secs", "must be > 0 (e.g. 60)");
        }
        let gcs = &self.gcs;
        if ![1, 3, 5].contains(&gcs.replicas) {
            return fail(
                "gcs.replicas",
                &format!(
                    "{} replicas cannot form a useful Raft group; use 1, 3 or 5",
                    gcs.replicas
                ),
            );
        }
        if gcs.tick_ms == 0 {
            return fail("gcs.tick_ms", "must be > 0 (e.g. 100)");
        }
        if gcs.election_ticks < 3 {
            return fail(
                "gcs.election_ticks",
                "must be >= 3 (the Raft heartbeat is 1 tick; e.g. 10)",
            );
        }
        if gcs.health_check_ms == Some(0) {
            return fail("gcs.health_check_ms", "must be > 0 (e.g. 500)");
        }
        if let Some(timeout) = gcs.node_timeout_ms {
            let check = gcs.health_check_ms.unwrap_or(500);
            if timeout <= check {
                return fail(
                    "gcs.node_timeout_ms",
                    &format!(
                        "{timeout} ms must be longer than the health-check interval ({check} ms); e.g. 3000"
                    ),
                );
            }
        }
        match self.provider {
            Provider::Local => {
                if !gcs.hosts.is_empty() {
                    return fail(
                        "gcs.hosts",
                        "only the hosts provider places replicas on hosts; remove it or set provider = \"hosts\"",
                    );
                }
                if gcs.base_port != 0 && u32::from(gcs.base_port) + gcs.replicas - 1 > 65535 {
                    return fail("gcs.base_port", "the replicas' ports run past 65535");
                }
            }
            Provider::Hosts => {
                if gcs.hosts.len() != gcs.replicas as usize {
                    return fail(
                        "gcs.hosts",
                        &format!(
                            "the hosts provider needs one host per replica: {} hosts for {} replicas",
                            gcs.hosts.len(),
                            gcs.replicas
                        ),
                    );
                }
                if let Some(i) = gcs.hosts.iter().position(|h| !is_host(h)) {
                    return fail(
                        &format!("gcs.hosts[{i}]"),
                        "is not a host name or IP address",
                    );
                }
                if gcs.base_port == 0 {
                    return fail(
                        "gcs.base_port",
                        "the hosts provider needs a fixed port (e.g. 6380): clients must know it",
                    );
                }
                if self.ssh.fleet_binary.is_empty() {
                    return fail("ssh.fleet_binary", "must name the remote fleet program");
                }
            }
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [
                ("tls.cert", &tls.cert),
                ("tls.key", &tls.key),
                ("tls.ca", &tls.ca),
            ] {
                if path.is_empty() {
                    return fail(key, "is required with [tls]: the path of a PEM file");
                }
                if !Path::new(path).is_absolute() {
                    return fail(
                        key,
                        &format!("'{path}' is not an absolute path; daemons start in other directories, so give the full path"),
                    );
                }
            }
            if tls.server_name.as_deref() == Some("") {
                return fail(
                    "tls.server_name",
                    "must not be empty (omit it to check each dialled host)",
                );
            }
        }
        let mut total = 0u64;
        for (i, node) in self.nodes.iter().enumerate() {
            let key = |k: &str| format!("nodes[{i}].{k}");
            if node.count == 0 {
                return fail(&key("count"), "must be >= 1 (remove the entry for no node)");
            }
            total += u64::from(node.count);
            match (self.provider, &node.host) {
                (Provider::Local, Some(_)) => {
                    return fail(
                        &key("host"),
                        "only the hosts provider places nodes on hosts; remove it or set provider = \"hosts\"",
                    )
                }
                (Provider::Hosts, None) => {
                    return fail(&key("host"), "the hosts provider needs the node's host")
                }
                (Provider::Hosts, Some(host)) if !is_host(host) => {
                    return fail(&key("host"), "is not a host name or IP address")
                }
                _ => {}
            }
            if let Some(cpus) = node.num_cpus {
                if !cpus.is_finite() || cpus <= 0.0 {
                    return fail(&key("num_cpus"), "must be > 0 (omit it to detect the CPUs)");
                }
            }
            if let Some(gpus) = node.num_gpus {
                if gpus > MAX_GPUS {
                    return fail(
                        &key("num_gpus"),
                        &format!("{gpus} is more than {MAX_GPUS}; declare the GPUs the node has"),
                    );
                }
            }
            if node.memory_bytes == Some(0) {
                return fail(
                    &key("memory_bytes"),
                    "must be > 0 (omit it for the default)",
                );
            }
            if let Some(bytes) = node.object_store_bytes {
                if bytes < 1 << 20 {
                    return fail(
                        &key("object_store_bytes"),
                        "must be at least 1 MiB (1048576); e.g. 1073741824 for 1 GiB",
                    );
                }
            }
            for (name, amount) in &node.resources {
                if let Some((_, own)) = BUILTIN_RESOURCES.iter().find(|(r, _)| r == name) {
                    return fail(
                        &format!("nodes[{i}].resources.{name}"),
                        &format!("set it with nodes[{i}].{own} instead"),
                    );
                }
                if name.is_empty() || name.contains(['=', ',']) {
                    return fail(
                        &format!("nodes[{i}].resources.{name}"),
                        "a resource name must be non-empty without '=' or ','",
                    );
                }
                if !amount.is_finite() || *amount < 0.0 {
                    return fail(
                        &format!("nodes[{i}].resources.{name}"),
                        "must be a number >= 0",
                    );
                }
            }
            for label in node.labels.keys() {
                if label.is_empty() || label.contains(['=', ',']) {
                    return fail(
                        &format!("nodes[{i}].labels.{label}"),
                        "a label key must be non-empty without '=' or ','",
                    );
                }
            }
        }
        if total > 1000 {
            return fail("nodes", &format!("{total} nodes is more than 1000"));
        }
        if self.provider == Provider::Hosts && self.tls.is_none() && !self.insecure {
            return fail(
                "tls",
                "the hosts provider's daemons listen on 0.0.0.0: add [tls] with cert, key and ca (PEM files on every host), or set insecure = true to accept plaintext on the network",
            );
        }
        Ok(())
    }
}

fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:[]@".contains(c))
}

/// Finds the first unknown key or ill-typed value, as (key path, reason).
fn locate_error(root: &toml::Table) -> std::result::Result<(), (String, String)> {
    check_table::<ClusterConfig>(root, "", ROOT_KEYS, &["gcs", "nodes", "ssh", "tls"])?;
    if let Some(value) = root.get("tls") {
        let table = section(value, "tls")?;
        check_table::<TlsSection>(table, "tls.", TLS_KEYS, &[])?;
    }
    if let Some(value) = root.get("gcs") {
        let table = section(value, "gcs")?;
        check_table::<GcsSection>(table, "gcs.", GCS_KEYS, &[])?;
    }
    if let Some(value) = root.get("ssh") {
        let table = section(value, "ssh")?;
        check_table::<SshSection>(table, "ssh.", SSH_KEYS, &[])?;
    }
    if let Some(value) = root.get("nodes") {
        let Some(nodes) = value.as_array() else {
            return Err((
                "nodes".into(),
                "must be an array of tables: write each node as [[nodes]]".into(),
            ));
        };
        for (i, node) in nodes.iter().enumerate() {
            let prefix = format!("nodes[{i}]");
            let table = section(node, &prefix)?;
            for map in ["resources", "labels"] {
                if let Some(toml::Value::Table(entries)) = table.get(map) {
                    for (name, value) in entries {
                        let ok = if map == "resources" {
                            value.as_float().is_some() || value.as_integer().is_some()
                        } else {
                            value.as_str().is_some()
                        };
                        if !ok {
                            let want = if map == "resources" {
                                "a number"
                            } else {
                                "a string"
                            };
                            return Err((
                                format!("{prefix}.{map}.{name}"),
                                format!("must be {want}, not {}", value.type_str()),
                            ));
                        }
                    }
                }
            }
            check_table::<NodeSpec>(table, &format!("{prefix}."), NODE_KEYS, &[])?;
        }
    }
    Ok(())
}

fn section<'a>(
    value: &'a toml::Value,
    key: &str,
) -> std::result::Result<&'a toml::Table, (String, String)> {
    value.as_table().ok_or_else(|| {
        (
            key.to_string(),
            format!("must be a table, not {}", value.type_str()),
        )
    })
}

/// Each key of `table` alone must deserialize into `T` (all of whose fields have defaults):
/// the first that does not is the bad one. Keys in `nested` are checked by the caller.
fn check_table<T: DeserializeOwned>(
    table: &toml::Table,
    prefix: &str,
    known: &[&str],
    nested: &[&str],
) -> std::result::Result<(), (String, String)> {
    for (key, value) in table {
        if !known.contains(&key.as_str()) {
            let hint = match nearest(key, known) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("known keys: {}", known.join(", ")),
            };
            return Err((format!("{prefix}{key}"), format!("unknown key; {hint}")));
        }
        if nested.contains(&key.as_str()) {
            continue;
        }
        let mut single = toml::Table::new();
        single.insert(key.clone(), value.clone());
        if let Err(error) = toml::Value::Table(single).try_into::<T>() {
            return Err((format!("{prefix}{key}"), error.message().to_string()));
        }
    }
    Ok(())
}

/// The known key closest to `key` (shares a word, or a small edit distance).
fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    let by_distance = known
        .iter()
        .map(|k| (edit_distance(&key, k), *k))
        .min()
        .filter(|(d, _)| *d <= 3)
        .map(|(_, k)| k);
    by_distance.or_else(|| {
        known.iter().copied().find(|k| {
            k.split('_')
                .any(|word| word.len() > 2 && (key.contains(word) || word.contains(key.as_str())))
        })
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
