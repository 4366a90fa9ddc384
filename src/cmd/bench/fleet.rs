//! The workers that run benchmark tasks: `taskgrid_worker` agents in this
//! process, with the `noop` and `echo` handlers, or `taskgrid worker` child
//! processes of this executable, which run shell tasks only (a child has no
//! Rust handlers to register).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use taskgrid_client::Client;
use taskgrid_worker::{ShellPolicy, Worker, WorkerConfig, WorkerError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::coordinator::Target;
use super::{Plan, WorkerMode};

/// The handler that does nothing.
pub(super) const NOOP: &str = "noop";
/// The handler that returns its payload.
pub(super) const ECHO: &str = "echo";
/// The label that ties a run's tasks to its own workers on a shared
/// coordinator.
pub(super) const ROUTE_LABEL: &str = "taskgrid-bench";
/// How long workers may take to register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a worker may take to drain and leave.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A worker agent running in this process.
struct Agent {
    /// Resolving it drains the agent.
    drain: oneshot::Sender<()>,
    /// The agent's task.
    done: JoinHandle<Result<(), WorkerError>>,
}

/// The run's workers.
pub(super) struct Fleet {
    /// Agents in this process.
    agents: Vec<Agent>,
    /// `taskgrid worker` child processes.
    children: Vec<Child>,
}

impl Fleet {
    /// Starts the plan's workers against `target` and waits until the
    /// coordinator lists every one. `route` is the value of
    /// [`ROUTE_LABEL`] they carry, if any.
    pub(super) async fn start(
        plan: &Plan,
        target: &Target,
        route: Option<&str>,
    ) -> anyhow::Result<Fleet> {
        let run = std::process::id();
        let ids: Vec<String> = (0..plan.workers)
            .map(|i| format!("bench-{run}-w{i}"))
            .collect();
        let mut fleet = Fleet {
            agents: Vec::new(),
            children: Vec::new(),
        };
        for id in &ids {
            match plan.worker_mode {
                WorkerMode::Inprocess => fleet.agents.push(agent(plan, target, id, route)),
                WorkerMode::Process => match child(plan, target, id, route) {
                    Ok(c) => fleet.children.push(c),
                    Err(e) => {
                        fleet.stop().await;
                        return Err(e);
                    }
                },
            }
        }
        if let Err(e) = fleet.registered(&target.client()?, &ids).await {
            fleet.stop().await;
            return Err(e);
        }
        Ok(fleet)
    }

    /// Drains the agents and stops the child processes.
    pub(super) async fn stop(self) {
        let mut done = Vec::new();
        for a in self.agents {
            let _ = a.drain.send(());
            done.push(a.done);
        }
        for d in done {
            let _ = tokio::time::timeout(STOP_TIMEOUT, d).await;
        }
        let mut children = self.children;
        let _ = tokio::task::spawn_blocking(move || {
            for c in &mut children {
                terminate(c);
            }
        })
        .await;
    }
}

/// A worker agent in this process.
fn agent(plan: &Plan, target: &Target, id: &str, route: Option<&str>) -> Agent {
    let mut config = WorkerConfig::new(target.url.clone());
    config.token = target.worker_token.clone();
    config.id = id.to_owned();
    config.name = id.to_owned();
    config.slots = plan.slots;
    config.prefetch = plan.prefetch;
    config.cgroup_every_task = plan.cgroup_every_task;
    config.spawner = crate::cmd::worker::spawner();
    config.shell = ShellPolicy::Any;
    if let Some(r) = route {
        config.labels.push((ROUTE_LABEL.to_owned(), r.to_owned()));
    }
    let (drain, drained) = oneshot::channel::<()>();
    let worker = Worker::with_config(config)
        .handler(NOOP, |_ctx| async move { Ok(serde_json::Value::Null) })
        .handler(
            ECHO,
            |ctx| async move { ctx.payload::<serde_json::Value>() },
        );
    let done = tokio::spawn(worker.run_until(async move {
        let _ = drained.await;
    }));
    Agent { drain, done }
}

/// A `taskgrid worker` child process; the worker token goes through the
/// environment, not the command line.
fn child(plan: &Plan, target: &Target, id: &str, route: Option<&str>) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("finding the taskgrid executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["worker", "--server", &target.url, "--id", id, "--name", id])
        .args(["--slots", &plan.slots.to_string()])
        .args(["--prefetch", &plan.prefetch.to_string()]);
    if plan.cgroup_every_task {
        cmd.arg("--cgroup-every-task");
    }
    if let Some(r) = route {
        cmd.args(["--label", &format!("{ROUTE_LABEL}={r}")]);
    }
    match &target.worker_token {
        Some(t) => cmd.env("TASKGRID_WORKER_TOKEN", t),
        None => cmd.env_remove("TASKGRID_WORKER_TOKEN"),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting `taskgrid worker`")
}

/// Asks a child worker to drain (SIGTERM) and waits a little, then kills it.
fn terminate(child: &mut Child) {
    let asked = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if asked {
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Fleet {
    /// Waits until the coordinator lists every worker in `ids`; fails at
    /// once if one of them stopped (a refused token, a crash).
    async fn registered(&mut self, client: &Client, ids: &[String]) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + REGISTER_TIMEOUT;
        loop {
            let listed = client.workers().await.context("listing workers")?;
            let missing = ids
                .iter()
                .filter(|id| !listed.iter().any(|w| w.id.as_str() == id.as_str()))
                .count();
            if missing == 0 {
                return Ok(());
            }
            self.check_alive().await?;
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{missing} of {} workers did not register within {REGISTER_TIMEOUT:?}",
                    ids.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails if a worker has stopped, with its reason.
    async fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(i) = self.agents.iter().position(|a| a.done.is_finished()) {
            // Taken out: a finished agent is awaited once, here.
            let a = self.agents.swap_remove(i);
            return Err(match a.done.await {
                Ok(Err(e)) => anyhow::Error::new(e).context("a worker stopped"),
                Ok(Ok(())) => anyhow::anyhow!("a worker stopped"),
                Err(e) => anyhow::Error::new(e).context("a worker panicked"),
            });
        }
        for c in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                bail!(
                    "a `taskgrid worker` exited ({status}); run one by hand with the same \
                     options to see why"
                );
            }
        }
        Ok(())
    }
}
