//! `taskgrid tui`: the terminal dashboard of one coordinator.

use anyhow::Context;
use taskgrid_client::Client;

/// Options of `taskgrid tui`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The coordinator's address.
    #[arg(long, env = "TASKGRID_SERVER", default_value = "http://127.0.0.1:7070")]
    server: String,
    /// Client token.
    #[arg(long, env = "TASKGRID_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let client =
        Client::new(&a.server, a.token).with_context(|| format!("coordinator {}", a.server))?;
    taskgrid_tui::run(client).await.context("tui")
}
