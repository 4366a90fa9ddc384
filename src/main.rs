//! The `taskgrid` binary: parses the command line, sets up logging, and
//! hands each subcommand to its module under `cmd/`.

mod cmd;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// mimalloc: tasks are allocated on one thread and freed on another (the
/// store writer). Measured against glibc malloc it holds resident memory per
/// queued task lower (943–985 vs 1,023 bytes); throughput is within noise
/// (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A distributed task execution system.
#[derive(Debug, Parser)]
#[command(name = "taskgrid", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The configuration file of `server`, `worker` and `up` (default:
    /// ./taskgrid.toml, else $XDG_CONFIG_HOME/taskgrid/taskgrid.toml).
    #[arg(long, global = true, env = "TASKGRID_CONFIG", value_name = "PATH")]
    config: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a coordinator and a local worker in one process.
    Up(cmd::up::Args),
    /// Run a coordinator: the worker gateway and the HTTP API on one port.
    Server(cmd::server::Args),
    /// Run a worker that connects to a coordinator.
    Worker(cmd::worker::Args),
    /// Submit a task; with --wait, run it like a local command.
    #[command(visible_alias = "s")]
    Submit(Box<cmd::submit::SubmitArgs>),
    /// Show a task, its attempts and its result.
    #[command(visible_alias = "st")]
    Status(cmd::client::IdArgs),
    /// List tasks.
    #[command(visible_alias = "ls")]
    List(cmd::client::ListArgs),
    /// Print a task's output (-f to follow).
    #[command(visible_alias = "log")]
    Logs(cmd::client::LogsArgs),
    /// Cancel a task, or every task with a tag.
    Cancel(cmd::client::CancelArgs),
    /// Run a finished task again.
    Retry(cmd::client::IdArgs),
    /// Delete finished tasks with their attempts and output (retention
    /// does it by itself after --retain, 7 days by default).
    Delete(cmd::client::DeleteArgs),
    /// Say why a task is not running yet.
    Explain(cmd::client::IdArgs),
    /// List connected workers.
    Workers(cmd::client::ConnArgs),
    /// Show queue depths.
    Queues(cmd::client::ConnArgs),
    /// Pause or resume a queue.
    Queue(cmd::client::QueueArgs),
    /// Show the limited concurrency keys with tasks waiting or running:
    /// their limits, and tasks running, let through and held back.
    Limits(cmd::client::ConnArgs),
    /// Show task counts, success rates, latencies and throughput, in total
    /// and by queue, kind and worker (--prometheus for the text format).
    Stats(cmd::client::StatsArgs),
    /// Cron and periodic tasks: add, list, show, pause, resume, trigger,
    /// backfill, edit, delete.
    #[command(visible_alias = "sched")]
    Schedule(cmd::schedule::Args),
    /// Watch workers, tasks, queues and events live in a terminal dashboard.
    Tui(cmd::tui::Args),
    /// Run an embedded system on a SQLite file: a few hundred handler tasks
    /// with retries, progress, dependencies and a cancellation.
    Demo(cmd::demo::Args),
    /// Measure the whole system: throughput, latency, or idle workers'
    /// cost, against a coordinator started here or an existing one.
    Bench(cmd::bench::Args),
    /// The audit log: every state-changing call and worker registration,
    /// who made it, from where, and how it ended (newest first).
    Audit(cmd::client::AuditArgs),
    /// List the coordinators that advertise themselves on this network
    /// (mDNS, `_taskgrid._tcp`).
    Discover(cmd::discover::Args),
    /// Check the configuration file (taskgrid.toml) and print the
    /// effective settings, or an example file with every key.
    Config(cmd::config::Args),
}

/// How many threads run async tasks in a coordinator (or a bench, which
/// may host one): one per core but one, and at least one. The store's
/// writer thread, most of a busy coordinator's work, keeps that core, and
/// fewer async threads hand fewer wake-ups across cores: on two cores one
/// thread ran no-op tasks ~20 % faster and shell tasks with ~20 % less
/// coordinator CPU (BENCHMARKS.md). `TOKIO_WORKER_THREADS` overrides it.
fn async_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

fn main() -> std::process::ExitCode {
    // The worker's spawner (see `taskgrid_worker::Spawner`): first, before
    // any runtime or thread starts, so that it stays small.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(taskgrid_worker::SPAWNER_ARG))
    {
        return taskgrid_worker::serve_spawner();
    }
    cmd::worker::serve_spawner();
    // The configuration file's values become the defaults of the flags
    // (below their environment variables), then clap parses as usual.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let file = match cmd::config::for_command_line(&Cli::command(), &argv) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("taskgrid: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let command = match &file {
        Some(f) => f.apply(Cli::command()),
        None => Cli::command(),
    };
    let cli = Cli::from_arg_matches(&command.get_matches_from(&argv)).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TASKGRID_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, and never with NO_COLOR
        // set (https://no-color.org): a log file or a pipe gets plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    // A worker's own work is waiting: on its coordinator, its processes'
    // pipes and their exits. One thread does that without handing every
    // message across threads. The other commands get a thread per core but
    // one (see `async_threads`).
    let mut builder = match cli.command {
        Command::Worker(_) => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
                b.worker_threads(async_threads());
            }
            b
        }
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("taskgrid: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<i32> = rt.block_on(async move {
        use cmd::client;
        match cli.command {
            Command::Up(a) => cmd::up::run(a).await.map(|()| 0),
            Command::Server(a) => cmd::server::run(a).await.map(|()| 0),
            Command::Worker(a) => cmd::worker::run(a).await.map(|()| 0),
            Command::Submit(a) => cmd::submit::submit(*a).await,
            Command::Status(a) => client::status(a).await,
            Command::List(a) => client::list(a).await,
            Command::Logs(a) => client::logs(a).await,
            Command::Cancel(a) => client::cancel(a).await,
            Command::Retry(a) => client::retry(a).await,
            Command::Delete(a) => client::delete(a).await,
            Command::Explain(a) => client::explain(a).await,
            Command::Workers(a) => client::workers(a).await,
            Command::Queues(a) => client::queues(a).await,
            Command::Queue(a) => client::queue(a).await,
            Command::Limits(a) => client::limits(a).await,
            Command::Stats(a) => client::stats(a).await,
            Command::Schedule(a) => cmd::schedule::run(a).await,
            Command::Tui(a) => cmd::tui::run(a).await.map(|()| 0),
            Command::Demo(a) => cmd::demo::run(a).await.map(|()| 0),
            Command::Bench(a) => cmd::bench::run(a).await.map(|()| 0),
            Command::Audit(a) => client::audit(a).await,
            Command::Discover(a) => cmd::discover::run(a).await,
            Command::Config(a) => cmd::config::run(a, &Cli::command(), file.as_ref()),
        }
    });
    // Handlers may still hold the runtime; do not wait for them.
    rt.shutdown_background();
    match result {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("taskgrid: {e:#}");
            let unreachable = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<taskgrid_client::ClientError>(),
                    Some(taskgrid_client::ClientError::Transport(_))
                )
            });
            if unreachable {
                eprintln!(
                    "taskgrid: is `taskgrid server` running there? Set --server or TASKGRID_SERVER."
                );
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
