//! `fleet chaos run SCENARIO.toml`: see `fleet_chaos`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

/// `fleet chaos ...`
#[derive(Args)]
pub struct ChaosCommand {
    #[command(subcommand)]
    action: ChaosAction,
}

#[derive(Subcommand)]
enum ChaosAction {
    /// Start a cluster (or attach to one), run the scenario's workload under its faults,
    /// check, report.
    Run {
        /// The scenario file (see scenarios/ and docs/chaos.md).
        scenario: PathBuf,
        /// Seed of the fault schedule's jitter (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Keep the cluster's state, logs and checkpoints here (default: a temp dir, removed
        /// when the run passes).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Run against the running cluster NAME (`fleet cluster up`) instead of starting
        /// one; it is left running. Node and replica numbers in the faults are its own.
        #[arg(long, value_name = "NAME")]
        attach: Option<String>,
    },
}

impl ChaosCommand {
    /// Runs the command; fails when the scenario fails.
    pub async fn run(self) -> anyhow::Result<()> {
        let ChaosAction::Run {
            scenario: path,
            seed,
            json,
            work_dir,
            attach,
        } = self.action;
        let mut scenario = fleet_chaos::Scenario::load(&path)?;
        if let Some(seed) = seed {
            scenario.seed = seed;
        }
        let (work_dir, temporary) = match work_dir {
            Some(dir) => (dir, false),
            None => (
                std::env::temp_dir().join(format!("fleet-chaos-{}", std::process::id())),
                true,
            ),
        };
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("cannot create {}", work_dir.display()))?;
        let binary = std::env::current_exe().context("cannot find the fleet binary")?;
        let origin = path.display().to_string();
        let report = match &attach {
            Some(name) => {
                let dir = fleet_cluster::state::cluster_dir(name);
                fleet_chaos::run_attached(&scenario, &dir, &work_dir).await?
            }
            None => fleet_chaos::run(&scenario, &origin, &binary, &work_dir).await?,
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.to_text());
        }
        if report.passed {
            if temporary {
                let _ = std::fs::remove_dir_all(&work_dir);
            }
            Ok(())
        } else {
            bail!(
                "scenario '{}' failed (logs and checkpoints kept in {})",
                report.scenario,
                work_dir.display()
            )
        }
    }
}
