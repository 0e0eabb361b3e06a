//! `fleet token new`: makes a cluster token file for replicas and raylets started by hand
//! (`fleet cluster up` makes and hands out its own).

use std::path::PathBuf;

use anyhow::Context;
use fleet_gcs::auth::{ClusterToken, TOKEN_FILE_ENV};

/// Cluster tokens.
#[derive(clap::Args, Debug)]
pub struct TokenCommand {
    #[command(subcommand)]
    action: TokenAction,
}

#[derive(clap::Subcommand, Debug)]
enum TokenAction {
    /// Write a new token of 256 random bits to a file of mode 0600.
    New {
        /// The file to write (refused if it exists, unless --force).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the fingerprint of this process's token (never the token) and where it is from.
    Show,
}

impl TokenCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.action {
            TokenAction::New { out, force } => {
                if out.exists() && !force {
                    anyhow::bail!(
                        "{} exists; pass --force to replace it (every daemon and client of the \
                         cluster must then be given the new token)",
                        out.display()
                    );
                }
                let token = ClusterToken::generate();
                token
                    .write_file(&out)
                    .with_context(|| format!("cannot write the token file {}", out.display()))?;
                println!(
                    "wrote a cluster token (fingerprint {}) to {}; give it to every daemon and \
                     client with {TOKEN_FILE_ENV}={}",
                    token.fingerprint(),
                    out.display(),
                    out.display()
                );
                Ok(())
            }
            TokenAction::Show => match fleet_gcs::auth::process_token() {
                Some(token) => {
                    println!("fingerprint {} ({})", token.fingerprint(), token.source());
                    Ok(())
                }
                None => anyhow::bail!("{}", fleet_gcs::auth::describe_own_token()),
            },
        }
    }
}

/// A daemon's token: it must come from outside (a daemon with a token of its own making
/// could be reached by nobody).
pub fn require_daemon_token(daemon: &str) -> anyhow::Result<()> {
    if fleet_gcs::auth::process_token().is_some() {
        return Ok(());
    }
    // An unusable one was named: say why.
    fleet_gcs::auth::token_from_env().map_err(anyhow::Error::msg)?;
    anyhow::bail!(
        "{daemon} needs the cluster token: set {TOKEN_FILE_ENV} to the cluster's token file \
         (`fleet token new --out FILE` makes one; `fleet cluster up` makes and hands out its \
         own) or pass --token-file"
    )
}
