use std::path::Path;

use super::*;
use crate::plan::ClusterPlan;

fn error_of(text: &str) -> String {
    match ClusterConfig::from_toml_str(text, "fleet.toml") {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn empty_config_is_the_documented_default() -> Result<()> {
    let config = ClusterConfig::from_toml_str("", "fleet.toml")?;
    assert_eq!(config, ClusterConfig::default());
    assert_eq!(config.name, "default");
    assert_eq!(config.gcs.replicas, 3);
    assert_eq!(config.gcs.base_port, 6380);
    assert!(config.gcs.fsync);
    Ok(())
}

#[test]
fn default_local_splits_the_cpus_and_detects_gpus_once() -> Result<()> {
    let config = ClusterConfig::default_local();
    config.validate()?;
    assert_eq!(config.nodes.len(), 2);
    for node in &config.nodes {
        assert!(node.num_cpus.unwrap_or(0.0) >= 1.0);
    }
    assert_eq!(config.nodes[0].num_gpus, None);
    assert_eq!(config.nodes[1].num_gpus, Some(0));
    Ok(())
}

#[test]
fn full_sketch_parses_and_count_expands() -> Result<()> {
    let config = ClusterConfig::from_toml_str(
        r#"
        name = "lab"
        provider = "local"
        [gcs]
        replicas = 5
        base_port = 0
        node_timeout_ms = 3000
        health_check_ms = 200
        [[nodes]]
        num_cpus = 2
        num_gpus = 1
        memory_bytes = 4294967296
        object_store_bytes = 1073741824
        resources = { accelerator_x = 1 }
        labels = { zone = "a" }
        count = 2
        [[nodes]]
        num_cpus = 0.5
        "#,
        "fleet.toml",
    )?;
    assert_eq!(config.gcs.replicas, 5);
    let nodes = config.expanded_nodes();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[1].resources.get("accelerator_x"), Some(&1.0));
    assert_eq!(nodes[1].count, 1);
    assert_eq!(nodes[2].num_cpus, Some(0.5));
    Ok(())
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        (
            "[[nodes]]\nnum_cpus = 1\n[[nodes]]\nnum_cpus = 0\n",
            "nodes[1].num_cpus: must be > 0",
        ),
        ("[gcs]\nreplicas = 2\n", "gcs.replicas"),
        ("[[nodes]]\ncount = 0\n", "nodes[0].count: must be >= 1"),
        ("[[nodes]]\nnum_gpus = 5000\n", "nodes[0].num_gpus"),
        (
            "[[nodes]]\nresources = { CPU = 2 }\n",
            "nodes[0].resources.CPU: set it with nodes[0].num_cpus",
        ),
        (
            "[[nodes]]\nobject_store_bytes = 10\n",
            "nodes[0].object_store_bytes",
        ),
        ("name = \"a b\"\n", "name:"),
        (
            "[[nodes]]\nhost = \"10.0.0.1\"\n",
            "nodes[0].host: only the hosts provider",
        ),
        (
            "provider = \"hosts\"\n",
            "gcs.hosts: the hosts provider needs one host per replica",
        ),
        (
            "provider = \"hosts\"\n[gcs]\nreplicas = 1\nhosts = [\"a\"]\n[[nodes]]\nnum_cpus = 1\n",
            "nodes[0].host: the hosts provider needs",
        ),
        (
            "[gcs]\nhealth_check_ms = 500\nnode_timeout_ms = 100\n",
            "gcs.node_timeout_ms",
        ),
        (
            "provider = \"hosts\"\n[gcs]\nreplicas = 1\nhosts = [\"a\"]\n[[nodes]]\nhost = \"b\"\n",
            "tls: the hosts provider's daemons listen on 0.0.0.0",
        ),
        (
            "[tls]\ncert = \"c.pem\"\nkey = \"/k.pem\"\nca = \"/ca.pem\"\n",
            "tls.cert: 'c.pem' is not an absolute path",
        ),
        (
            "[tls]\ncert = \"/c.pem\"\n",
            "tls.key: is required with [tls]",
        ),
    ];
    for (text, expected) in cases {
        let error = error_of(text);
        assert!(error.contains(expected), "{text:?}: {error}");
        assert!(error.starts_with("fleet.toml: "), "{error}");
    }
}

#[test]
fn unknown_keys_are_named_with_a_hint() {
    let error = error_of("[[nodes]]\nnum_cpus = 1\n[[nodes]]\ngpu = 1\n");
    assert!(
        error.contains("nodes[1].gpu: unknown key; did you mean `num_gpus`?"),
        "{error}"
    );
    let error = error_of("[gcs]\nreplica = 3\n");
    assert!(
        error.contains("gcs.replica: unknown key; did you mean `replicas`?"),
        "{error}"
    );
    let error = error_of("nmae = \"x\"\n");
    assert!(
        error.contains("nmae: unknown key; did you mean `name`?"),
        "{error}"
    );
    let error = error_of("[ssh]\nzzzzzzzzzz = 1\n");
    assert!(
        error.contains("ssh.zzzzzzzzzz: unknown key; known keys: user"),
        "{error}"
    );
}

#[test]
fn wrong_types_name_the_key() {
    let error = error_of("[[nodes]]\nnum_cpus = \"two\"\n");
    assert!(error.contains("nodes[0].num_cpus: invalid type"), "{error}");
    let error = error_of("[[nodes]]\nresources = { x = \"1\" }\n");
    assert!(
        error.contains("nodes[0].resources.x: must be a number"),
        "{error}"
    );
    let error = error_of("[[nodes]]\nlabels = { zone = 1 }\n");
    assert!(
        error.contains("nodes[0].labels.zone: must be a string"),
        "{error}"
    );
    let error = error_of("provider = \"cloud\"\n");
    assert!(error.contains("provider: unknown variant"), "{error}");
    let error = error_of("[nodes]\nnum_cpus = 1\n");
    assert!(
        error.contains("nodes: must be an array of tables"),
        "{error}"
    );
    let error = error_of("[gcs]\nreplicas = -1\n");
    assert!(error.contains("gcs.replicas"), "{error}");
}

#[test]
fn syntax_errors_give_the_line() {
    let error = error_of("[[nodes]\n");
    assert!(
        error.contains("fleet.toml is not valid TOML") && error.contains("line 1"),
        "{error}"
    );
}

#[test]
fn local_commands_carry_every_setting() -> Result<()> {
    let config = ClusterConfig::from_toml_str(
        r#"
        name = "lab"
        [gcs]
        replicas = 3
        tick_ms = 50
        election_ticks = 6
        fsync = false
        [[nodes]]
        num_cpus = 1.5
        num_gpus = 2
        memory_bytes = 1000000
        object_store_bytes = 2097152
        resources = { tpu = 4, disk = 0.5 }
        labels = { zone = "a", rack = "r1" }
        "#,
        "fleet.toml",
    )?;
    let dir = Path::new("/home/u/.fleet/clusters/lab");
    let plan = ClusterPlan::new(
        &config,
        dir,
        Path::new("/dev/shm"),
        "tok",
        &[7001, 7002, 7003],
    );
    assert_eq!(
        plan.address(),
        "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    );
    let gcs = plan.gcs_args(2).unwrap_or_default().join(" ");
    assert_eq!(
        gcs,
        "gcs --id 2 --listen 127.0.0.1:7002 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
         --data-dir /home/u/.fleet/clusters/lab/gcs-2 --cluster-name lab --tick-ms 50 --election-ticks 6 --no-fsync"
    );
    let raylet = plan.raylet_args(0).unwrap_or_default().join(" ");
    assert_eq!(
        raylet,
        "raylet --gcs 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 --listen 127.0.0.1:0 --node-id node-0 \
         --num-cpus 1.5 --num-gpus 2 --memory 1000000 --resource disk=0.5 --resource tpu=4 \
         --label rack=r1 --label zone=a --object-store-dir /dev/shm/fleet-lab-tok-node-0 \
         --spill-dir /home/u/.fleet/clusters/lab/node-0/spill --object-store-bytes 2097152 \
         --node-dir /home/u/.fleet/clusters/lab/node-0"
    );
    assert!(plan.gcs_args(4).is_none() && plan.raylet_args(1).is_none());
    assert_eq!(plan.gcs[0].log, dir.join("logs/gcs-1.log"));
    assert_eq!(plan.nodes[0].log, dir.join("logs/node-0.log"));
    Ok(())
}

#[test]
fn config_round_trips_through_toml() -> Result<()> {
    let config = ClusterConfig::default_local();
    let text = config.to_toml_string();
    assert_eq!(ClusterConfig::from_toml_str(&text, "round trip")?, config);
    Ok(())
}

/// A config using every section: the base the property test below damages.
const EVERY_SECTION: &str = r#"name = "lab"
provider = "local"
[gcs]
replicas = 3
base_port = 0
tick_ms = 50
election_ticks = 6
node_timeout_ms = 3000
health_check_ms = 200
fsync = false
[[nodes]]
num_cpus = 1.5
num_gpus = 2
memory_bytes = 1000000
object_store_bytes = 2097152
resources = { tpu = 4, disk = 0.5 }
labels = { zone = "a", rack = "r1" }
count = 2
[[nodes]]
num_cpus = 0.5"#;

proptest::proptest! {
    /// A damaged `fleet.toml` is a config or an error that names the file, never a panic;
    /// a config it yields validates and plans its commands.
    #[test]
    fn damaged_configs_parse_or_fail_cleanly(
        text in fleet_proto::fuzz::mutated_config_text(EVERY_SECTION.to_string())
    ) {
        match ClusterConfig::from_toml_str(&text, "fleet.toml") {
            Ok(config) => {
                proptest::prop_assert!(config.validate().is_ok());
                let nodes = config.expanded_nodes();
                let ports: Vec<u16> = (0..config.gcs.replicas as u16).map(|i| 7001 + i).collect();
                let _ = ClusterPlan::new(
                    &config,
                    Path::new("/tmp/lab"),
                    Path::new("/dev/shm"),
                    "tok",
                    &ports,
                );
                proptest::prop_assert!(!nodes.is_empty() || config.nodes.is_empty());
            }
            Err(error) => {
                let message = error.to_string();
                proptest::prop_assert!(message.contains("fleet.toml"), "{}", message);
            }
        }
    }
}
