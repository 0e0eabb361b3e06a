//! `fleet`: the operator's command. Thin: parses flags, installs tracing, calls library code.
//!
//! - `cmd::gcs`: `fleet gcs` (run a replica), `fleet gcs status`, `fleet gcs member add|remove`.
//! - `cmd::raylet`: `fleet raylet` (run a node).
//! - `cmd::kv`: `fleet kv put|get|list|delete`.
//! - `cmd::chaos`: `fleet chaos run SCENARIO.toml` (the chaos harness).
//! - `cmd::bench`: `fleet bench` (runtime microbenchmark) and `fleet bench gcs`.
//! - `cmd::cluster`: `fleet cluster up|down|status` (over `fleet_cluster`).
//! - `cmd::status`: `fleet status` (nodes, GCS members and leader, jobs).
//! - `cmd::list`: `fleet list nodes|actors|tasks|objects|placement-groups|jobs`.
//! - `cmd::job`: `fleet job submit|list|logs|stop`.
//! - `cmd::token`: `fleet token new|show` (the cluster token every request carries).

mod cmd;

use clap::{Parser, Subcommand};

/// Fleet: an actor-based distributed runtime.
#[derive(Parser)]
#[command(name = "fleet", version, about)]
struct Cli {
    /// The cluster's token file (default: FLEET_TOKEN, then FLEET_TOKEN_FILE, then the
    /// token of the local cluster `fleet cluster up` started).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a control-store (GCS) replica, or operate on the GCS.
    Gcs(cmd::gcs::GcsCommand),
    /// Run one node (raylet) of a cluster.
    Raylet(cmd::raylet::RayletCommand),
    /// Read and write the GCS's internal key-value store.
    Kv(cmd::kv::KvCommand),
    /// Benchmarks.
    Bench(cmd::bench::BenchCommand),
    /// Chaos: run a workload on a real cluster under faults and check nothing is lost.
    Chaos(cmd::chaos::ChaosCommand),
    /// Start, stop and inspect a cluster (`fleet cluster up|down|status`).
    Cluster(cmd::cluster::ClusterCommand),
    /// Nodes, GCS members and leader, jobs.
    Status(cmd::status::StatusCommand),
    /// List nodes, actors, tasks, objects, placement groups or jobs.
    List(cmd::list::ListCommand),
    /// Submit, list, follow and stop jobs.
    Job(cmd::job::JobCommand),
    /// Make or inspect the cluster token.
    Token(cmd::token::TokenCommand),
}

fn install_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> std::process::ExitCode {
    // A worker started by a raylet for a job run by this binary (`fleet bench`, `fleet
    // chaos`): serve tasks, whatever the arguments say (they are the driver's). Never
    // returns.
    if std::env::var_os(fleet_raylet::worker_pool::env::WORKER_ID).is_some() {
        return match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => {
                let outcome = runtime.block_on(fleet::init());
                eprintln!("fleet worker: {outcome:?}");
                std::process::ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("fleet worker: cannot start the async runtime: {error}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    if let Some(path) = &cli.token_file {
        match fleet_gcs::auth::ClusterToken::read_file(path) {
            Ok(token) => {
                fleet_gcs::auth::set_process_token(token);
            }
            Err(error) => {
                eprintln!("error: --token-file: {error}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Gcs(command) => {
                install_tracing(if command.is_daemon() {
                    "info,raft=warn"
                } else {
                    "warn"
                });
                command.run().await
            }
            Command::Raylet(command) => {
                install_tracing("info");
                command.run().await
            }
            Command::Kv(command) => {
                install_tracing("warn");
                command.run().await
            }
            Command::Chaos(command) => {
                install_tracing("warn");
                command.run().await
            }
            Command::Bench(command) => {
                install_tracing("warn");
                command.run().await
            }
            Command::Cluster(command) => {
                install_tracing("warn");
                command.run().await
            }
            Command::Status(command) => {
                install_tracing("warn");
                command.run().await
            }
            Command::List(command) => {
                install_tracing("warn");
                command.run().await
            }
            Command::Job(command) => {
                install_tracing("warn");
                command.run().await
            }
            Command::Token(command) => {
                install_tracing("warn");
                command.run().await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
