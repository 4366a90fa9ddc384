//! `taskgrid tui`: the terminal dashboard of one coordinator.

use anyhow::Context;

/// Options of `taskgrid tui`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The coordinator's address.
    #[arg(long, env = "TASKGRID_SERVER", default_value = "http://127.0.0.1:7070")]
    server: String,
    /// Client token.
    #[arg(long, env = "TASKGRID_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) that signed an https:// coordinator's
    /// certificate, trusted besides the system's roots.
    #[arg(long, env = "TASKGRID_CA", value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let client = super::client::client_for(&a.server, a.token, a.ca.as_deref())?;
    taskgrid_tui::run(client).await.context("tui")
}
