//! The `taskgrid` binary: parses the command line, sets up logging, and
//! hands each subcommand to its module under `cmd/`.

mod cmd;

use clap::{Parser, Subcommand};

/// mimalloc: the engine allocates per task on one thread and frees on
/// another (the store writer); glibc malloc spends a quarter of the time
/// there under load (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A distributed task execution system.
#[derive(Debug, Parser)]
#[command(name = "taskgrid", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an embedded system on a SQLite file: a few hundred handler tasks
    /// with retries, progress, dependencies and a cancellation.
    Demo(cmd::demo::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TASKGRID_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Demo(args) => rt.block_on(cmd::demo::run(args)),
    }
}
