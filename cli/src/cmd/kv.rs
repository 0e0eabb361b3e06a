//! `fleet kv put|get|list|delete`: the GCS's internal key-value store.

use anyhow::bail;
use clap::{Args, Subcommand};

use super::AddressArgs;

/// `fleet kv ...`
#[derive(Args)]
pub struct KvCommand {
    #[command(flatten)]
    address: AddressArgs,
    /// Namespace.
    #[arg(long, short = 'n', global = true, default_value = "default")]
    namespace: String,
    #[command(subcommand)]
    action: KvAction,
}

#[derive(Subcommand)]
enum KvAction {
    /// Set KEY to VALUE.
    Put {
        key: String,
        value: String,
        /// Only if the key does not exist.
        #[arg(long)]
        if_absent: bool,
    },
    /// Print KEY's value.
    Get {
        key: String,
        /// Print JSON with versions.
        #[arg(long)]
        json: bool,
    },
    /// List keys starting with PREFIX.
    List {
        #[arg(default_value = "")]
        prefix: String,
        /// Print JSON with values and versions.
        #[arg(long)]
        json: bool,
    },
    /// Delete KEY (or every key starting with it, with --prefix).
    Delete {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
}

impl KvCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.address.client()?;
        let ns = &self.namespace;
        match self.action {
            KvAction::Put {
                key,
                value,
                if_absent,
            } => {
                let version = if if_absent {
                    client
                        .kv_compare_and_set(ns, key.as_bytes(), value.as_bytes(), 0)
                        .await?
                } else {
                    client.kv_put(ns, key.as_bytes(), value.as_bytes()).await?
                };
                println!("OK version={version}");
            }
            KvAction::Get { key, json } => match client.kv_get(ns, key.as_bytes()).await? {
                Some(record) if json => println!(
                    "{}",
                    serde_json::json!({
                        "namespace": record.namespace,
                        "key": String::from_utf8_lossy(&record.key),
                        "value": String::from_utf8_lossy(&record.value),
                        "create_version": record.create_version,
                        "mod_version": record.mod_version,
                    })
                ),
                Some(record) => println!("{}", String::from_utf8_lossy(&record.value)),
                None => bail!("key '{key}' not found in namespace '{ns}'"),
            },
            KvAction::List { prefix, json } => {
                let records = client.kv_list(ns, prefix.as_bytes()).await?;
                if json {
                    let rows: Vec<_> = records
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "key": String::from_utf8_lossy(&r.key),
                                "value": String::from_utf8_lossy(&r.value),
                                "mod_version": r.mod_version,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    for r in records {
                        println!("{}", String::from_utf8_lossy(&r.key));
                    }
                }
            }
            KvAction::Delete { key, prefix } => {
                let version = client.kv_delete(ns, key.as_bytes(), prefix).await?;
                println!("OK version={version}");
            }
        }
        Ok(())
    }
}
