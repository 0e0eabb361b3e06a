//! The cluster error type: every variant names the thing that went wrong and the fix.

use std::path::PathBuf;

/// Errors from configuring, starting, inspecting and stopping a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster config is not valid TOML.
    #[error("{origin} is not valid TOML: {reason}")]
    ConfigSyntax {
        /// The file (or "the config").
        origin: String,
        /// The parser's message, with line and column.
        reason: String,
    },

    /// A config key is unknown, of the wrong type, or has an unusable value.
    #[error("{origin}: {key}: {reason}")]
    Config {
        /// The file (or "the config").
        origin: String,
        /// The key's path, e.g. `nodes[1].num_cpus`.
        key: String,
        /// What is wrong and what to write instead.
        reason: String,
    },

    /// A file or directory operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "read", "remove", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// `cluster.json` exists but cannot be decoded.
    #[error(
        "the cluster state file {} is unreadable ({reason}); stop any daemons it names by hand, \
         then delete the file",
        path.display()
    )]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },

    /// `up` of a cluster that is already running.
    #[error(
        "cluster '{name}' is already running at {address} (state in {}); stop it with \
         `fleet cluster down --name {name}` or start another one with --name",
        dir.display()
    )]
    AlreadyRunning {
        /// The cluster's name.
        name: String,
        /// Its GCS address.
        address: String,
        /// Its cluster directory.
        dir: PathBuf,
    },

    /// No running cluster of that name on this machine.
    #[error(
        "no cluster '{name}' is running on this machine (no {}); start one with `fleet cluster up`",
        dir.join("cluster.json").display()
    )]
    NotRunning {
        /// The cluster's name.
        name: String,
        /// Where its state would be.
        dir: PathBuf,
    },

    /// A port the config asks for is taken.
    #[error("{key}: port {address} is already in use; pick another base port or stop what listens there")]
    PortInUse {
        /// The config key that chose the port.
        key: String,
        /// The address.
        address: String,
    },

    /// A daemon could not be started at all.
    #[error("cannot start {daemon} ({}): {source}", binary.display())]
    Spawn {
        /// Which daemon ("gcs-1", "node-2").
        daemon: String,
        /// The program.
        binary: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// The `fleet` binary cannot run a daemon the cluster needs.
    #[error("{} has no `{command}` command; rebuild it (`cargo build -p fleet-cli`) or pass the right binary", binary.display())]
    MissingCommand {
        /// The program.
        binary: PathBuf,
        /// The subcommand (`raylet`).
        command: &'static str,
    },

    /// A daemon exited or did not become ready in time; the cluster was stopped.
    #[error(
        "cluster did not start: {what}; {daemon}'s log ({}) ends with:\n{tail}",
        log.display()
    )]
    NotReady {
        /// What went wrong ("gcs-2 exited with exit status: 1", "no GCS leader after 30000 ms").
        what: String,
        /// The daemon to blame.
        daemon: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// `kill_node` / `restart_node` of a node the cluster does not have.
    #[error("the cluster has no node {index} (it has nodes 0..{count})")]
    NoSuchNode {
        /// The index asked for.
        index: usize,
        /// How many nodes there are.
        count: usize,
    },

    /// `kill_gcs` / `restart_gcs` of a replica the cluster does not have.
    #[error("the cluster has no GCS replica {id}")]
    NoSuchReplica {
        /// The replica id asked for.
        id: u64,
    },

    /// An SSH command of the hosts provider failed.
    #[error("on {host}: `{command}` failed: {reason}; check that `ssh {host}` works without a password and that fleet is installed there")]
    Ssh {
        /// The host.
        host: String,
        /// The command line.
        command: String,
        /// Exit status and stderr.
        reason: String,
    },

    /// The cluster's token file is missing or unusable.
    #[error("the cluster token {}: {reason}", path.display())]
    Token {
        /// The token file.
        path: PathBuf,
        /// Why it cannot be used (with the fix).
        reason: String,
    },

    /// Talking to the GCS failed.
    #[error(transparent)]
    Gcs(#[from] fleet_gcs::Error),
}

impl Error {
    /// Whether trying the same operation again may succeed (no catch-all arm on purpose).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Gcs(error) => error.is_retryable(),
            Error::PortInUse { .. } | Error::NotReady { .. } | Error::Ssh { .. } => true,
            Error::ConfigSyntax { .. }
            | Error::Config { .. }
            | Error::Io { .. }
            | Error::CorruptState { .. }
            | Error::AlreadyRunning { .. }
            | Error::NotRunning { .. }
            | Error::Spawn { .. }
            | Error::MissingCommand { .. }
            | Error::NoSuchNode { .. }
            | Error::NoSuchReplica { .. }
            | Error::Token { .. } => false,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
