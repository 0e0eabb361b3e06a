//! The hosts provider: the same plan, started on other machines over SSH.
//!
//! Each daemon becomes one `ssh [OPTIONS] [USER@]HOST -- '<remote shell line>'` whose line
//! creates the directories and runs `setsid nohup fleet gcs|raylet ... > LOG 2>&1 < /dev/null &`,
//! then prints the daemon's pid (`echo $!`), which is recorded in the local `cluster.json`.
//! `setsid` gives the raylet a process group of its own, so stopping the group stops its
//! workers. Paths are on the remote machines: `ssh.remote_dir` (default
//! `.fleet/clusters/<name>`, relative to the login directory). The generated commands are
//! unit-tested; running them needs password-less SSH and `fleet` on every host.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_gcs::auth::{set_process_token, ClusterToken, TOKEN_FILE_NAME};

use crate::config::{ClusterConfig, Provider};
use crate::error::{Error, Result};
use crate::plan::ClusterPlan;
use crate::process::ProcessId;
use crate::ready;
use crate::state::ClusterState;

/// Object stores on the remote machines.
pub const REMOTE_SHM: &str = "/dev/shm";

/// One command to run on this machine (`ssh ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshCommand {
    /// The daemon it concerns ("gcs-1", "node-0").
    pub daemon: String,
    /// The remote machine.
    pub host: String,
    /// The full argv, starting with `ssh`.
    pub argv: Vec<String>,
}

impl SshCommand {
    /// The command as one shell-quoted line (for docs and `--dry-run`).
    pub fn to_shell(&self) -> String {
        self.argv
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Quotes `s` for a POSIX shell (bare when it is plainly safe).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The plan of a hosts cluster: paths are on the remote machines.
pub fn plan(config: &ClusterConfig, token: &str) -> ClusterPlan {
    let dir = remote_dir(config);
    let ports = vec![config.gcs.base_port; config.gcs.replicas as usize];
    ClusterPlan::new(config, &dir, Path::new(REMOTE_SHM), token, &ports)
}

/// `ssh.remote_dir`, or `.fleet/clusters/<name>`.
pub fn remote_dir(config: &ClusterConfig) -> PathBuf {
    config
        .ssh
        .remote_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".fleet/clusters").join(&config.name))
}

fn ssh(config: &ClusterConfig, daemon: String, host: &str, remote: String) -> SshCommand {
    let mut argv = vec!["ssh".to_string(), "-o".into(), "BatchMode=yes".into()];
    argv.extend(config.ssh.options.iter().cloned());
    argv.push(match &config.ssh.user {
        Some(user) => format!("{user}@{host}"),
        None => host.to_string(),
    });
    argv.push("--".into());
    argv.push(remote);
    SshCommand {
        daemon,
        host: host.to_string(),
        argv,
    }
}

fn start_line(
    fleet: &str,
    dirs: &[&Path],
    env: &[(String, String)],
    args: &[String],
    log: &Path,
) -> String {
    let mut mkdir = vec!["mkdir".to_string(), "-p".into()];
    mkdir.extend(dirs.iter().map(|d| shell_quote(&d.display().to_string())));
    // Assignments before `setsid`: the shell puts them in the daemon's environment.
    let assignments: String = env
        .iter()
        .map(|(key, value)| format!("{key}={} ", shell_quote(value)))
        .collect();
    let command: Vec<String> = std::iter::once(shell_quote(fleet))
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect();
    format!(
        "{} && {assignments}setsid nohup {} > {} 2>&1 < /dev/null & echo $!",
        mkdir.join(" "),
        command.join(" "),
        shell_quote(&log.display().to_string())
    )
}

/// The commands that start every replica (first) and raylet of `plan`, in order.
pub fn start_commands(plan: &ClusterPlan) -> Vec<SshCommand> {
    let config = &plan.config;
    let fleet = &config.ssh.fleet_binary;
    let logs = plan.dir.join("logs");
    let mut commands = Vec::new();
    for gcs in &plan.gcs {
        let args = plan.gcs_args(gcs.id).unwrap_or_default();
        let line = start_line(fleet, &[&logs, &gcs.data_dir], &gcs.env, &args, &gcs.log);
        commands.push(ssh(config, format!("gcs-{}", gcs.id), &gcs.host, line));
    }
    for node in &plan.nodes {
        let args = plan.raylet_args(node.index).unwrap_or_default();
        let line = start_line(
            fleet,
            &[&logs, &node.node_dir, &node.spill_dir],
            &node.env,
            &args,
            &node.log,
        );
        commands.push(ssh(
            config,
            format!("node-{}", node.index),
            &node.host,
            line,
        ));
    }
    commands
}

/// The commands that put the cluster token on every host, one per host: each reads the
/// token from its standard input (never from the command line, which `ps` shows) into
/// `token_file` with mode 0600.
pub fn token_commands(plan: &ClusterPlan, token_file: &Path) -> Vec<SshCommand> {
    let mut hosts: Vec<&str> = plan
        .gcs
        .iter()
        .map(|g| g.host.as_str())
        .chain(plan.nodes.iter().map(|n| n.host.as_str()))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let file = shell_quote(&token_file.display().to_string());
    let dir = shell_quote(
        &token_file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .display()
            .to_string(),
    );
    hosts
        .into_iter()
        .map(|host| {
            ssh(
                &plan.config,
                "token".into(),
                host,
                format!("umask 077 && mkdir -p {dir} && cat > {file}"),
            )
        })
        .collect()
}

/// The command that stops `pid` on `host`: SIGTERM, up to `grace` for it to exit, then
/// SIGKILL to its process group; then removes `remove` (object store, spill, data dirs).
pub fn stop_command(
    config: &ClusterConfig,
    daemon: &str,
    host: &str,
    pid: u32,
    grace: Duration,
    remove: &[&Path],
) -> SshCommand {
    let tenths = (grace.as_millis() / 100).max(1);
    let mut line = format!(
        "kill -TERM {pid} 2>/dev/null; i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt {tenths} ]; \
         do sleep 0.1; i=$((i+1)); done; kill -KILL -{pid} {pid} 2>/dev/null; true"
    );
    if !remove.is_empty() {
        let dirs: Vec<String> = remove
            .iter()
            .map(|d| shell_quote(&d.display().to_string()))
            .collect();
        line.push_str(&format!("; rm -rf {}", dirs.join(" ")));
    }
    ssh(config, daemon.to_string(), host, line)
}

fn run(command: &SshCommand) -> Result<String> {
    run_with_input(command, None)
}

/// Runs `command`, writing `input` (if any) to its standard input.
fn run_with_input(command: &SshCommand, input: Option<&[u8]>) -> Result<String> {
    use std::io::Write;
    let failed = |reason: String| Error::Ssh {
        host: command.host.clone(),
        command: command.to_shell(),
        reason,
    };
    let mut child = Command::new(&command.argv[0])
        .args(&command.argv[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input)
            .map_err(|e| failed(format!("cannot write its input: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(Error::Ssh {
            host: command.host.clone(),
            command: command.to_shell(),
            reason: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Starts `config` over SSH, waits until it is ready, and records it in `cluster_dir`
/// (on this machine). On failure, stops what it started.
pub async fn up(config: &ClusterConfig, cluster_dir: &Path) -> Result<ClusterState> {
    config.validate()?;
    if config.provider != Provider::Hosts {
        return Err(Error::Config {
            origin: "the cluster config".into(),
            key: "provider".into(),
            reason: "is \"local\"; start it with the local provider".into(),
        });
    }
    if let Some(tls) = &config.tls {
        tls.adopt()?;
    }
    if let Some(previous) = ClusterState::load(cluster_dir)? {
        return Err(Error::AlreadyRunning {
            name: previous.name,
            address: previous.address,
            dir: cluster_dir.to_path_buf(),
        });
    }
    let token = format!("{:08x}", rand::random::<u32>());
    let mut plan = plan(config, &token);
    // The token: a copy here (for this machine's clients) and one on every host.
    let cluster_token = ClusterToken::generate();
    let local_token_file = cluster_dir.join(TOKEN_FILE_NAME);
    cluster_token
        .write_file(&local_token_file)
        .map_err(|e| Error::io("write", &local_token_file, e))?;
    let remote_token_file = plan.dir.join(TOKEN_FILE_NAME);
    for command in token_commands(&plan, &remote_token_file) {
        let secret = format!("{}\n", cluster_token.secret());
        run_with_input(&command, Some(secret.as_bytes()))?;
    }
    plan.hand_out_token_file(&remote_token_file);
    set_process_token(cluster_token);
    let mut state = ClusterState::new(&plan, Path::new(&config.ssh.fleet_binary));
    state.dir = cluster_dir.to_path_buf();
    let result = start(&plan, &mut state).await;
    if let Err(error) = result {
        let _ = down(&state, Duration::from_secs(2));
        let _ = state.remove();
        return Err(error);
    }
    Ok(state)
}

async fn start(plan: &ClusterPlan, state: &mut ClusterState) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(plan.config.ready_timeout_secs);
    let commands = start_commands(plan);
    let client = ready::polling_client(&state.address)?;
    for command in &commands {
        if command.daemon.starts_with("node-") && ready::leader(&client).await.is_none() {
            wait(&client, &[], deadline, plan).await?;
        }
        let out = run(command)?;
        let pid = out
            .lines()
            .last()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .ok_or_else(|| Error::Ssh {
                host: command.host.clone(),
                command: command.to_shell(),
                reason: format!("printed no pid (got '{out}')"),
            })?;
        let recorded = Some(ProcessId {
            pid,
            start_ticks: None,
        });
        if let Some(id) = command.daemon.strip_prefix("gcs-") {
            if let Some(r) = state.gcs.iter_mut().find(|g| g.daemon.id.to_string() == id) {
                r.pid = recorded;
            }
        } else if let Some(index) = command.daemon.strip_prefix("node-") {
            if let Some(r) = index
                .parse::<usize>()
                .ok()
                .and_then(|i| state.nodes.get_mut(i))
            {
                r.pid = recorded;
            }
        }
        state.save()?;
    }
    let node_ids: Vec<String> = plan.nodes.iter().map(|n| n.node_id.clone()).collect();
    wait(&client, &node_ids, deadline, plan).await
}

async fn wait(
    client: &fleet_gcs::GcsClient,
    node_ids: &[String],
    deadline: Instant,
    plan: &ClusterPlan,
) -> Result<()> {
    loop {
        let Some(pending) = ready::poll(client, node_ids).await else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            let (what, daemon, host, log) = match pending {
                ready::Pending::Leader => (
                    "no GCS replica became leader".to_string(),
                    "gcs-1".to_string(),
                    plan.gcs.first().map(|g| g.host.clone()).unwrap_or_default(),
                    plan.gcs.first().map(|g| g.log.clone()).unwrap_or_default(),
                ),
                ready::Pending::Nodes(missing) => {
                    let node = plan.nodes.iter().find(|n| missing.contains(&n.node_id));
                    (
                        format!("node(s) {} not ALIVE in the GCS", missing.join(", ")),
                        node.map(|n| format!("node-{}", n.index))
                            .unwrap_or_default(),
                        node.map(|n| n.host.clone()).unwrap_or_default(),
                        node.map(|n| n.log.clone()).unwrap_or_default(),
                    )
                }
            };
            let tail = ssh(
                &plan.config,
                daemon.clone(),
                &host,
                format!("tail -n 20 {}", shell_quote(&log.display().to_string())),
            );
            return Err(Error::NotReady {
                what: format!("{what} within {} s", plan.config.ready_timeout_secs),
                tail: run(&tail).unwrap_or_else(|e| format!("  ({e})")),
                daemon: format!("{daemon} on {host}"),
                log,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops every daemon `state` records (raylets first) and removes their object stores,
/// spill and data directories on the hosts; the local `cluster.json` is left to the caller.
pub fn down(state: &ClusterState, grace: Duration) -> Result<()> {
    let mut first_error = None;
    for node in &state.nodes {
        let Some(pid) = node.pid else { continue };
        let command = stop_command(
            &state.config,
            &format!("node-{}", node.daemon.index),
            &node.daemon.host,
            pid.pid,
            grace,
            &[&node.daemon.object_store_dir, &node.daemon.spill_dir],
        );
        if let Err(error) = run(&command) {
            first_error.get_or_insert(error);
        }
    }
    for gcs in &state.gcs {
        let Some(pid) = gcs.pid else { continue };
        let command = stop_command(
            &state.config,
            &format!("gcs-{}", gcs.daemon.id),
            &gcs.daemon.host,
            pid.pid,
            grace,
            &[&gcs.daemon.data_dir],
        );
        if let Err(error) = run(&command) {
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        let text = r#"
            name = "prod"
            provider = "hosts"
            insecure = true
            [gcs]
            replicas = 3
            base_port = 6380
            hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            node_timeout_ms = 5000
            [ssh]
            user = "ops"
            options = ["-i", "/keys/fleet key"]
            fleet_binary = "/opt/fleet/bin/fleet"
            [[nodes]]
            host = "10.0.0.5"
            num_cpus = 8
            num_gpus = 2
            labels = { zone = "a b" }
            resources = { accelerator_x = 1 }
            [[nodes]]
            host = "10.0.0.6"
            port = 7000
        "#;
        match ClusterConfig::from_toml_str(text, "test") {
            Ok(config) => config,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn the_token_reaches_each_host_once_through_stdin_and_daemons_by_file() {
        let mut plan = plan(&config(), "t0k3n");
        let file = plan.dir.join(TOKEN_FILE_NAME);
        let commands = token_commands(&plan, &file);
        let hosts: Vec<&str> = commands.iter().map(|c| c.host.as_str()).collect();
        assert_eq!(
            hosts,
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"]
        );
        let line = commands[0].argv.last().cloned().unwrap_or_default();
        assert_eq!(
            line,
            "umask 077 && mkdir -p .fleet/clusters/prod && cat > .fleet/clusters/prod/token"
        );
        plan.hand_out_token_file(&file);
        for command in start_commands(&plan) {
            let line = command.argv.last().cloned().unwrap_or_default();
            assert!(
                line.contains("&& FLEET_TOKEN_FILE=.fleet/clusters/prod/token setsid nohup /opt/fleet/bin/fleet"),
                "{line}"
            );
        }
    }

    #[test]
    fn tls_files_reach_every_daemon() {
        let mut config = config();
        config.insecure = false;
        config.tls = Some(crate::config::TlsSection {
            cert: "/etc/fleet/tls/node.pem".into(),
            key: "/etc/fleet/tls/node.key".into(),
            ca: "/etc/fleet/tls/ca.pem".into(),
            server_name: Some("fleet.internal".into()),
        });
        config.validate().expect("TLS stands in for insecure");
        let plan = plan(&config, "t0k3n");
        for command in start_commands(&plan) {
            let line = &command.argv[7];
            for expected in [
                "FLEET_TLS_CERT=/etc/fleet/tls/node.pem",
                "FLEET_TLS_KEY=/etc/fleet/tls/node.key",
                "FLEET_TLS_CA=/etc/fleet/tls/ca.pem",
                "FLEET_TLS_SERVER_NAME=fleet.internal",
            ] {
                assert!(line.contains(expected), "{}: {line}", command.daemon);
            }
        }
        config.tls = None;
        assert!(
            config.validate().is_err(),
            "plaintext on 0.0.0.0 needs insecure = true"
        );
    }

    #[test]
    fn start_commands_run_every_daemon_over_ssh() {
        let plan = plan(&config(), "t0k3n");
        let commands = start_commands(&plan);
        let daemons: Vec<&str> = commands.iter().map(|c| c.daemon.as_str()).collect();
        assert_eq!(daemons, ["gcs-1", "gcs-2", "gcs-3", "node-0", "node-1"]);
        let gcs2 = &commands[1];
        assert_eq!(gcs2.host, "10.0.0.2");
        assert_eq!(
            &gcs2.argv[..6],
            [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-i",
                "/keys/fleet key",
                "ops@10.0.0.2"
            ]
        );
        assert_eq!(gcs2.argv[6], "--");
        let line = &gcs2.argv[7];
        assert!(line.starts_with(
            "mkdir -p .fleet/clusters/prod/logs .fleet/clusters/prod/gcs-2 && setsid nohup /opt/fleet/bin/fleet gcs --id 2 --listen 0.0.0.0:6380 --advertise 10.0.0.2:6380 --peers 1=10.0.0.1:6380,2=10.0.0.2:6380,3=10.0.0.3:6380 --data-dir .fleet/clusters/prod/gcs-2 --cluster-name prod"
        ), "{line}");
        assert!(line.contains("--node-timeout-ms 5000"), "{line}");
        assert!(
            line.ends_with("> .fleet/clusters/prod/logs/gcs-2.log 2>&1 < /dev/null & echo $!"),
            "{line}"
        );
        let node0 = &commands[3].argv[7];
        assert!(node0.contains(
            "raylet --gcs 10.0.0.1:6380,10.0.0.2:6380,10.0.0.3:6380 --listen 10.0.0.5:0 --node-id node-0 --num-cpus 8 --num-gpus 2 --resource accelerator_x=1 --label 'zone=a b' --object-store-dir /dev/shm/fleet-prod-t0k3n-node-0 --spill-dir .fleet/clusters/prod/node-0/spill --node-dir .fleet/clusters/prod/node-0"
        ), "{node0}");
        assert!(commands[4].argv[7].contains("--listen 10.0.0.6:7000"));
        // The one-line form quotes the key path with its space.
        assert!(gcs2.to_shell().contains("'/keys/fleet key'"));
    }

    #[test]
    fn stop_command_terminates_then_kills_the_group_and_cleans_up() {
        let config = config();
        let command = stop_command(
            &config,
            "node-0",
            "10.0.0.5",
            4242,
            Duration::from_secs(3),
            &[Path::new("/dev/shm/fleet-prod-x-node-0")],
        );
        let line = &command.argv[command.argv.len() - 1];
        assert!(line.starts_with("kill -TERM 4242"), "{line}");
        assert!(line.contains("[ $i -lt 30 ]"), "{line}");
        assert!(line.contains("kill -KILL -4242 4242"), "{line}");
        assert!(
            line.ends_with("rm -rf /dev/shm/fleet-prod-x-node-0"),
            "{line}"
        );
    }

    #[test]
    fn shell_quote_is_safe() {
        assert_eq!(shell_quote("plain/path-1"), "plain/path-1");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }
}
