//! `fleet job submit|list|logs|stop`: drivers run as detached processes on this machine,
//! pointed at the cluster by `FLEET_ADDRESS` and named by `FLEET_JOB_ID`. The runtime
//! registers the job in the GCS jobs table itself; the submission (pid, host, log,
//! entrypoint) is recorded in the GCS KV, namespace `fleet.jobs`, key = job id.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use fleet_cluster::process::{self, ProcessId};
use fleet_gcs::GcsClient;
use fleet_proto::gcs::{JobInfo, JobState};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::status::state_name;
use super::AddressArgs;

/// The KV namespace of submissions.
pub const JOBS_NAMESPACE: &str = "fleet.jobs";

/// `fleet job ...`
#[derive(Args)]
pub struct JobCommand {
    #[command(subcommand)]
    action: JobAction,
}

#[derive(Subcommand)]
enum JobAction {
    /// Run a driver program against the cluster, in the background.
    Submit {
        #[command(flatten)]
        address: AddressArgs,
        /// Return once the driver started, instead of following its log until it exits.
        #[arg(long)]
        no_wait: bool,
        /// The job id (default: job-<random hex>).
        #[arg(long)]
        job_id: Option<String>,
        /// The driver program and its arguments (after `--`).
        #[arg(last = true, required = true, num_args = 1..)]
        entrypoint: Vec<String>,
    },
    /// Jobs: the GCS jobs table merged with the submissions.
    List {
        #[command(flatten)]
        address: AddressArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's log.
    Logs {
        #[command(flatten)]
        address: AddressArgs,
        /// The job id.
        job_id: String,
        /// Keep printing until the driver exits.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Stop a job's driver (SIGTERM, then SIGKILL) and mark the job STOPPED.
    Stop {
        #[command(flatten)]
        address: AddressArgs,
        /// The job id.
        job_id: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 10)]
        grace_secs: u64,
    },
}

/// What `submit` records in the KV.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Submission {
    pid: u32,
    #[serde(default)]
    pid_start_ticks: Option<u64>,
    host: String,
    log: PathBuf,
    entrypoint: String,
    submitted_at_ms: u64,
    #[serde(default)]
    exit_code: Option<i32>,
}

impl Submission {
    fn process(&self) -> ProcessId {
        ProcessId {
            pid: self.pid,
            start_ticks: self.pid_start_ticks,
        }
    }

    fn is_here(&self) -> bool {
        self.host == process::hostname()
    }
}

impl JobCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.action {
            JobAction::Submit {
                address,
                no_wait,
                job_id,
                entrypoint,
            } => submit(&address, no_wait, job_id, entrypoint).await,
            JobAction::List { address, json } => list(&address, json).await,
            JobAction::Logs {
                address,
                job_id,
                follow,
            } => logs(&address, &job_id, follow).await,
            JobAction::Stop {
                address,
                job_id,
                grace_secs,
            } => stop(&address, &job_id, Duration::from_secs(grace_secs)).await,
        }
    }
}

fn check_job_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("--job-id '{id}' is not usable; use 1 to 128 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

async fn submission(client: &GcsClient, job_id: &str) -> anyhow::Result<Option<Submission>> {
    match client.kv_get(JOBS_NAMESPACE, job_id.as_bytes()).await? {
        Some(record) => Ok(serde_json::from_slice(&record.value).ok()),
        None => Ok(None),
    }
}

async fn job_info(client: &GcsClient, job_id: &str) -> anyhow::Result<Option<JobInfo>> {
    Ok(client
        .list_jobs()
        .await?
        .into_iter()
        .find(|j| j.job_id == job_id))
}

fn unknown_job(job_id: &str, address: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "no job '{job_id}' in the cluster at {address}; `fleet job list` shows the jobs"
    )
}

async fn submit(
    address_args: &AddressArgs,
    no_wait: bool,
    job_id: Option<String>,
    entrypoint: Vec<String>,
) -> anyhow::Result<()> {
    let resolved = address_args.resolve()?;
    let client = address_args.client_for(&resolved.address)?;
    let job_id = job_id.unwrap_or_else(|| format!("job-{:012x}", rand::random::<u64>() >> 16));
    check_job_id(&job_id)?;
    if submission(&client, &job_id).await?.is_some() || job_info(&client, &job_id).await?.is_some()
    {
        bail!(
            "job id '{job_id}' is taken in the cluster at {}; pick another --job-id (or omit it)",
            resolved.address
        );
    }
    let log = jobs_dir_of(&resolved).join(format!("{job_id}.log"));
    let Some((program, args)) = entrypoint.split_first() else {
        bail!("no driver program given: `fleet job submit -- PROGRAM ARGS...`");
    };
    let mut env = vec![
        ("FLEET_ADDRESS".to_string(), resolved.address.clone()),
        ("FLEET_JOB_ID".to_string(), job_id.clone()),
    ];
    // The driver joins with the token this command used (environment, not argv).
    if let Some((key, value)) = fleet_gcs::auth::child_env() {
        env.push((key.to_string(), value));
    }
    let mut child = process::spawn_detached(
        &format!("job {job_id}"),
        Path::new(program),
        args,
        &env,
        &log,
    )?;
    let mut record = Submission {
        pid: child.id(),
        pid_start_ticks: ProcessId::of(child.id()).start_ticks,
        host: process::hostname(),
        log: log.clone(),
        entrypoint: entrypoint.join(" "),
        submitted_at_ms: process::now_ms(),
        exit_code: None,
    };
    client
        .kv_put(
            JOBS_NAMESPACE,
            job_id.as_bytes(),
            &serde_json::to_vec(&record)?,
        )
        .await?;
    eprintln!(
        "submitted job '{job_id}' (pid {}); log: {}",
        record.pid,
        log.display()
    );
    if no_wait {
        eprintln!("follow it with `fleet job logs {job_id} --follow`; stop it with `fleet job stop {job_id}`");
        return Ok(());
    }
    eprintln!("following its log; Ctrl-C stops following, not the job (`fleet job stop {job_id}`)");
    let mut offset = 0;
    let status = loop {
        offset = print_from(&log, offset)?;
        if let Some(status) = child.try_wait().context("cannot wait for the driver")? {
            print_from(&log, offset)?;
            break status;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\nstopped following job '{job_id}'; it keeps running");
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    };
    record.exit_code = status.code();
    let _ = client
        .kv_put(
            JOBS_NAMESPACE,
            job_id.as_bytes(),
            &serde_json::to_vec(&record)?,
        )
        .await;
    match status.code() {
        Some(0) => {
            eprintln!("job '{job_id}' finished");
            Ok(())
        }
        Some(code) => {
            eprintln!("job '{job_id}' failed: its driver exited with status {code}");
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        }
        None => bail!("job '{job_id}' failed: its driver was killed by a signal ({status})"),
    }
}

/// Where `fleet job submit` keeps driver logs for this cluster.
fn jobs_dir_of(resolved: &super::ResolvedAddress) -> PathBuf {
    match &resolved.state {
        Some(state) => state.jobs_dir(),
        None => fleet_cluster::state::fleet_home().join("jobs"),
    }
}

/// A log path read from the GCS is opened only inside this cluster's jobs directory: a
/// record naming `/etc/shadow` or `../../` is refused, not printed.
fn check_log_path(log: &Path, jobs_dir: &Path) -> anyhow::Result<()> {
    let refused = || {
        anyhow::anyhow!(
            "the job record names the log {}, which is outside this cluster's jobs directory {};              fleet reads only logs it wrote there",
            log.display(),
            jobs_dir.display()
        )
    };
    if log
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(refused());
    }
    let inside = match (std::fs::canonicalize(log), std::fs::canonicalize(jobs_dir)) {
        // Links resolved: a link in the jobs directory pointing out of it is refused too.
        (Ok(file), Ok(dir)) => file.starts_with(dir),
        // Not written yet: judge the path as recorded.
        _ => log.starts_with(jobs_dir),
    };
    if inside {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Prints the log from `offset`; returns the new offset.
fn print_from(log: &Path, offset: u64) -> anyhow::Result<u64> {
    let mut file = match std::fs::File::open(log) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(offset),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", log.display())),
    };
    file.seek(SeekFrom::Start(offset))
        .with_context(|| format!("cannot read {}", log.display()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", log.display()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(offset + bytes.len() as u64)
}

async fn list(address_args: &AddressArgs, as_json: bool) -> anyhow::Result<()> {
    let client = address_args.client()?;
    let jobs = client.list_jobs().await?;
    let records = client.kv_list(JOBS_NAMESPACE, b"").await?;
    let mut rows: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    for job in &jobs {
        rows.insert(
            job.job_id.clone(),
            json!({
                "job_id": job.job_id,
                "state": state_name(JobState::try_from(job.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN")),
                "entrypoint": job.entrypoint,
                "start_ms": job.start_ms,
                "end_ms": job.end_ms,
                "message": job.message,
                "driver_address": job.driver_address,
            }),
        );
    }
    for record in records {
        let id = String::from_utf8_lossy(&record.key).into_owned();
        let Ok(sub) = serde_json::from_slice::<Submission>(&record.value) else {
            continue;
        };
        let row = rows.entry(id.clone()).or_insert_with(|| {
            // Not (yet) in the jobs table: the driver has not registered.
            let state = if sub.is_here() && sub.process().is_alive() {
                "STARTING"
            } else {
                "EXITED"
            };
            json!({ "job_id": id, "state": state, "entrypoint": sub.entrypoint })
        });
        row["pid"] = json!(sub.pid);
        row["host"] = json!(sub.host);
        row["log"] = json!(sub.log);
        row["submitted_at_ms"] = json!(sub.submitted_at_ms);
        row["exit_code"] = json!(sub.exit_code);
        if row["entrypoint"].as_str().is_none_or(str::is_empty) {
            row["entrypoint"] = json!(sub.entrypoint);
        }
    }
    let mut rows: Vec<serde_json::Value> = rows.into_values().collect();
    rows.sort_by_key(|r| {
        r["submitted_at_ms"]
            .as_u64()
            .or(r["start_ms"].as_u64())
            .unwrap_or(0)
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<24} {:<10} {:>8}  ENTRYPOINT", "JOB ID", "STATE", "PID");
    for row in &rows {
        println!(
            "{:<24} {:<10} {:>8}  {}",
            row["job_id"].as_str().unwrap_or(""),
            row["state"].as_str().unwrap_or(""),
            row["pid"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            row["entrypoint"].as_str().unwrap_or("")
        );
    }
    if rows.is_empty() {
        println!("(no jobs)");
    }
    Ok(())
}

async fn logs(address_args: &AddressArgs, job_id: &str, follow: bool) -> anyhow::Result<()> {
    let resolved = address_args.resolve()?;
    let client = address_args.client_for(&resolved.address)?;
    let Some(sub) = submission(&client, job_id).await? else {
        if job_info(&client, job_id).await?.is_some() {
            bail!("job '{job_id}' was not started with `fleet job submit`, so fleet has no log of its driver");
        }
        return Err(unknown_job(job_id, &resolved.address));
    };
    if !sub.is_here() {
        bail!(
            "job '{job_id}' was submitted on host {}; its log is there at {}",
            sub.host,
            sub.log.display()
        );
    }
    check_log_path(&sub.log, &jobs_dir_of(&resolved))?;
    let mut offset = print_from(&sub.log, 0)?;
    if !follow {
        return Ok(());
    }
    let driver = sub.process();
    loop {
        if !driver.is_alive() {
            print_from(&sub.log, offset)?;
            return Ok(());
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        offset = print_from(&sub.log, offset)?;
    }
}

async fn stop(address_args: &AddressArgs, job_id: &str, grace: Duration) -> anyhow::Result<()> {
    let resolved = address_args.resolve()?;
    let client = address_args.client_for(&resolved.address)?;
    let sub = submission(&client, job_id).await?;
    let info = job_info(&client, job_id).await?;
    if sub.is_none() && info.is_none() {
        return Err(unknown_job(job_id, &resolved.address));
    }
    if let Some(sub) = &sub {
        if !sub.is_here() {
            bail!(
                "job '{job_id}' runs on host {}; run `fleet job stop {job_id}` there",
                sub.host
            );
        }
        if sub.pid_start_ticks.is_none() {
            bail!(
                "job '{job_id}' records pid {} without its start time, so fleet cannot tell it \
                 from an unrelated process that reused the pid, and will not signal it; stop the \
                 driver by hand if it still runs",
                sub.pid
            );
        }
        let outcome = tokio::task::spawn_blocking({
            let driver = sub.process();
            move || driver.stop(grace, true)
        })
        .await?;
        match outcome {
            process::StopOutcome::AlreadyGone => {
                eprintln!("job '{job_id}': the driver had already exited")
            }
            process::StopOutcome::Terminated => {
                eprintln!("job '{job_id}': the driver exited after SIGTERM")
            }
            process::StopOutcome::Killed => eprintln!("job '{job_id}': the driver needed SIGKILL"),
        }
    }
    match info {
        Some(info) if info.state == JobState::JobRunning as i32 => {
            client
                .finish_job(
                    job_id,
                    JobState::JobStopped,
                    process::now_ms(),
                    "stopped by fleet job stop",
                )
                .await?;
            println!("job '{job_id}' STOPPED");
        }
        Some(info) => println!(
            "job '{job_id}' had already finished ({})",
            state_name(
                JobState::try_from(info.state)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN")
            )
        ),
        None => println!("job '{job_id}' stopped (its driver never registered with the cluster)"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_logs_are_read_only_inside_the_jobs_directory() {
        let home = tempfile::tempdir().expect("tempdir");
        let jobs = home.path().join("jobs");
        std::fs::create_dir_all(&jobs).expect("mkdir");
        let own = jobs.join("job-1.log");
        std::fs::write(&own, "hello").expect("write");
        assert!(check_log_path(&own, &jobs).is_ok());
        assert!(check_log_path(&jobs.join("not-yet.log"), &jobs).is_ok());
        let outside = home.path().join("secret");
        std::fs::write(&outside, "secret").expect("write");
        let error = check_log_path(&outside, &jobs).expect_err("outside is refused");
        assert!(error
            .to_string()
            .contains("outside this cluster's jobs directory"));
        assert!(check_log_path(&jobs.join("../secret"), &jobs).is_err());
        assert!(check_log_path(Path::new("/etc/passwd"), &jobs).is_err());
        #[cfg(unix)]
        {
            let link = jobs.join("link.log");
            std::os::unix::fs::symlink(&outside, &link).expect("symlink");
            assert!(
                check_log_path(&link, &jobs).is_err(),
                "a link out is refused"
            );
        }
    }
}
