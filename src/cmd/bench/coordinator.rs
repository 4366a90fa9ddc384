//! The coordinator under test: started in this process, started as a child
//! `taskgrid server`, or an existing one — with what the report needs of
//! it: its URL, the process whose CPU and memory are read, and its store's
//! size on disk.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use taskgrid_client::Client;
use taskgrid_store::StoreConfig;

use super::{Placement, Plan, StoreKind, WorkerMode};
use crate::cmd::server;

/// A directory under the system's temporary directory, removed on drop.
pub(super) struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates a fresh directory named after this process and the time.
    pub(super) fn new() -> anyhow::Result<ScratchDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("taskgrid-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir(path))
    }

    /// Its path.
    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    /// Removes the directory and what is in it.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the coordinator runs.
enum Running {
    /// In this process.
    InProcess(server::Coordinator),
    /// A child process.
    Child {
        /// The process.
        child: Child,
        /// Its stdout, kept open so it never writes to a closed pipe.
        _stdout: BufReader<ChildStdout>,
    },
    /// Not ours.
    External {
        /// Its process id, if known.
        pid: Option<u32>,
    },
}

/// The coordinator under test.
pub(super) struct Target {
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub(super) url: String,
    /// The client token to send.
    pub(super) token: Option<String>,
    /// The worker token to send.
    pub(super) worker_token: Option<String>,
    /// How it runs.
    running: Running,
    /// Where its SQLite file lives, when started here on SQLite.
    data: Option<ScratchDir>,
}

impl Target {
    /// Starts (or finds) the coordinator the plan names, and waits until
    /// it answers.
    pub(super) async fn start(plan: &Plan) -> anyhow::Result<Target> {
        let target = match &plan.placement {
            Placement::External { url, pid } => Target {
                url: url.clone(),
                token: plan.token.clone(),
                worker_token: plan.worker_token.clone(),
                running: Running::External { pid: *pid },
                data: None,
            },
            Placement::InProcess => {
                let data = ScratchDir::new()?;
                let args = server_args(plan, data.path());
                let c = server::start(&args).await?;
                Target {
                    url: format!("http://{}", c.addr),
                    token: None,
                    worker_token: None,
                    running: Running::InProcess(c),
                    data: (plan.store == StoreKind::Sqlite).then_some(data),
                }
            }
            Placement::Child => {
                let data = ScratchDir::new()?;
                let (child, stdout, addr) = spawn_server(plan, data.path()).await?;
                Target {
                    url: format!("http://{addr}"),
                    token: None,
                    worker_token: None,
                    running: Running::Child {
                        child,
                        _stdout: stdout,
                    },
                    data: Some(data),
                }
            }
        };
        // A coordinator on PostgreSQL listens before it leads (it answers
        // 503 while it opens the store or stands by): wait for it to lead.
        let client = target.client()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Err(e) = client.ready().await {
            if e.status() != Some(503) || tokio::time::Instant::now() >= deadline {
                return Err(e)
                    .with_context(|| format!("the coordinator at {} is not ready", target.url));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(target)
    }

    /// A client of the coordinator.
    pub(super) fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.url, self.token.clone())
            .with_context(|| format!("coordinator {}", self.url))
    }

    /// The process whose CPU and memory are the coordinator's, if known.
    pub(super) fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::InProcess(_) => Some(std::process::id()),
            Running::Child { child, .. } => Some(child.id()),
            Running::External { pid } => *pid,
        }
    }

    /// What that process holds besides the coordinator, when the
    /// workers run as `worker_mode` (idle runs have no such workers).
    pub(super) fn scope(&self, worker_mode: Option<WorkerMode>) -> &'static str {
        match &self.running {
            Running::InProcess(_) => match worker_mode {
                Some(WorkerMode::Inprocess) => {
                    "this process: the coordinator together with the in-process workers and the clients"
                }
                _ => "this process: the coordinator together with the clients",
            },
            Running::Child { .. } => "the coordinator's own process (a child `taskgrid server`)",
            Running::External { pid: Some(_) } => "the coordinator's own process (--server-pid)",
            Running::External { pid: None } => "not measured (--server without --server-pid)",
        }
    }

    /// Where the coordinator runs: `inprocess`, `process` or `external`.
    pub(super) fn placement(&self) -> &'static str {
        match &self.running {
            Running::InProcess(_) => "inprocess",
            Running::Child { .. } => "process",
            Running::External { .. } => "external",
        }
    }

    /// Whether it was already running (`--server`).
    pub(super) fn is_external(&self) -> bool {
        matches!(self.running, Running::External { .. })
    }

    /// Bytes of the SQLite database (file, WAL, index) when it was started
    /// here on SQLite.
    pub(super) fn store_bytes(&self) -> Option<u64> {
        self.data
            .as_ref()
            .map(|d| super::usage::store_bytes(d.path()))
    }

    /// Stops a coordinator started here and removes its data.
    pub(super) async fn stop(self) -> anyhow::Result<()> {
        match self.running {
            Running::InProcess(c) => c.stop().await?,
            Running::Child { mut child, .. } => {
                // Its data is thrown away: no need for a graceful stop.
                let _ = child.kill();
                let _ = tokio::task::spawn_blocking(move || child.wait()).await;
            }
            Running::External { .. } => {}
        }
        drop(self.data);
        Ok(())
    }
}

/// The options of a coordinator started here, on 127.0.0.1 and a port the
/// OS picks.
fn server_args(plan: &Plan, data_dir: &Path) -> server::Args {
    server::Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data_dir.to_owned(),
        client_token: None,
        worker_token: None,
        heartbeat_ms: plan.heartbeat_ms,
        full_sync: plan.full_sync,
        lease_ms: server::LEASE_MS_DEFAULT,
        database_url: None,
        advertise: None,
        retain: server::Retain(Some(taskgrid_runtime::SystemConfig::RETENTION_DEFAULT)),
        queue_limits: Vec::new(),
        queue_concurrency: Vec::new(),
        concurrency_limits: plan.concurrency_limits.clone(),
        rate_limits: plan.rate_limits.clone(),
        queue_retention: Vec::new(),
        retain_output: None,
        tls: server::Identity::default(),
        worker_ca: None,
        // A benchmark's coordinator is nobody else's.
        no_mdns: true,
        mdns_name: None,
        store: match &plan.store {
            StoreKind::Sqlite => None,
            StoreKind::Memory => Some(StoreConfig::Memory),
            StoreKind::Postgres(url) => Some(StoreConfig::Postgres {
                url: url.clone(),
                options: taskgrid_store::PostgresOptions::default(),
            }),
        },
    }
}

/// Starts `taskgrid server` (this executable) and reads the address it
/// listens on from its first line of output.
async fn spawn_server(
    plan: &Plan,
    data_dir: &Path,
) -> anyhow::Result<(Child, BufReader<ChildStdout>, SocketAddr)> {
    let exe = std::env::current_exe().context("finding the taskgrid executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(["--heartbeat-ms", &plan.heartbeat_ms.to_string()]);
    if plan.full_sync {
        cmd.arg("--full-sync");
    }
    match &plan.store {
        StoreKind::Sqlite => {}
        StoreKind::Memory => {
            cmd.args(["--store", "memory"]);
        }
        StoreKind::Postgres(url) => {
            cmd.args(["--store", url]);
        }
    }
    // Tokens meant for other coordinators must not lock this one.
    for var in [
        "TASKGRID_CLIENT_TOKEN",
        "TASKGRID_WORKER_TOKEN",
        "TASKGRID_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    if std::env::var_os("TASKGRID_LOG").is_none() {
        cmd.env("TASKGRID_LOG", "error");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting `taskgrid server`")?;
    let Some(stdout) = child.stdout.take() else {
        bail!("`taskgrid server` has no stdout");
    };
    let read = tokio::task::spawn_blocking(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let n = stdout.read_line(&mut line);
        (stdout, n.map(|_| line))
    });
    let why = match tokio::time::timeout(Duration::from_secs(30), read).await {
        Ok(Ok((stdout, Ok(line)))) => match listening_addr(&line) {
            Some(addr) => return Ok((child, stdout, addr)),
            None => format!("it exited or said something unexpected: {line:?}"),
        },
        Ok(Ok((_, Err(e)))) => e.to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 30 s".to_owned(),
    };
    let _ = child.kill();
    let _ = child.wait();
    bail!("`taskgrid server` did not say where it listens: {why}");
}

/// The address in `taskgrid coordinator listening on 127.0.0.1:PORT (…)`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    line.split_whitespace().find_map(|w| w.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_found_in_the_servers_first_line() {
        let line = "taskgrid coordinator listening on 127.0.0.1:40123 (data in /tmp/x)\n";
        assert_eq!(
            listening_addr(line),
            Some(SocketAddr::from(([127, 0, 0, 1], 40123)))
        );
        assert_eq!(listening_addr(""), None);
    }
}
