//! Helpers for end-to-end tests: real `taskgrid` processes on 127.0.0.1
//! ports chosen by the OS, killed when the test ends.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use taskgrid_client::Client;
use taskgrid_core::{State, TaskId};

/// The `taskgrid` binary: this build's, or the one `TASKGRID_TEST_BIN`
/// names (to run these tests against another build, e.g. to see a test
/// fail on the build before a fix).
pub fn taskgrid() -> Command {
    let mut cmd = match std::env::var_os("TASKGRID_TEST_BIN") {
        Some(bin) => Command::new(bin),
        None => Command::new(env!("CARGO_BIN_EXE_taskgrid")),
    };
    // `submit --wait` passes a piped stdin on to its task: never the test
    // runner's.
    cmd.stdin(std::process::Stdio::null());
    cmd
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A coordinator process.
pub struct Server {
    /// The process.
    pub proc: Proc,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The rest of its stdout (kept open: a closed pipe would fail its
    /// next line).
    pub stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    /// `taskgrid server` on `listen` (port 0: the OS picks) with `data`.
    pub fn start(data: &Path, listen: &str, extra: &[&str]) -> Server {
        let child = taskgrid()
            .args(["server", "--listen", listen, "--data-dir"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start taskgrid server");
        Server::of(child)
    }

    /// A coordinator started as `child` (its stdout piped): waits for the
    /// line that says where it listens.
    pub fn of(mut child: std::process::Child) -> Server {
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Server {
            proc: Proc(child),
            addr,
            stdout,
        }
    }

    /// Waits for the line a coordinator on a shared store prints when it
    /// leads (`leading … (term N)`); its term.
    pub fn await_leading(&mut self) -> u64 {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).expect("read stdout");
            assert!(
                n > 0,
                "the coordinator at {} exited before it led",
                self.addr
            );
            if let Some(rest) = line.strip_prefix("leading ") {
                return rest
                    .rsplit_once("(term ")
                    .and_then(|(_, t)| t.trim().trim_end_matches(')').parse().ok())
                    .unwrap_or_else(|| panic!("no term in {line:?}"));
            }
        }
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of this server.
    pub fn client(&self, token: Option<&str>) -> Client {
        Client::new(&self.url(), token.map(str::to_owned)).unwrap()
    }
}

/// `taskgrid worker` connected to `server` with id `id` and `extra` flags.
pub fn worker(server: &str, id: &str, extra: &[&str]) -> Proc {
    let child = taskgrid()
        .args(["worker", "--server", server, "--id", id, "--name", id])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start taskgrid worker");
    Proc(child)
}

/// Waits until the coordinator lists a worker with this id.
pub async fn await_worker(client: &Client, id: &str) {
    await_worker_where(client, id, |_| true).await;
}

/// Waits until the coordinator lists a worker with this id of which
/// `ready` holds.
pub async fn await_worker_where(
    client: &Client,
    id: &str,
    ready: impl Fn(&taskgrid_api::WorkerView) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if client
                .workers()
                .await
                .map(|ws| ws.iter().any(|w| w.id.as_str() == id && ready(w)))
                .unwrap_or(false)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("worker {id} never registered"));
}

/// Waits until the task reaches `state` (or any terminal state when
/// `None`), on the task's event stream: subscribe first, then read the
/// state once, then follow the events.
pub async fn await_state(client: &Client, id: TaskId, state: Option<State>) -> State {
    use taskgrid_api::EventFilter;
    use taskgrid_client::ServerEvent;
    let reached = |s: State| state.map_or(s.is_terminal(), |want| s == want);
    tokio::time::timeout(Duration::from_secs(60), async {
        let filter = EventFilter {
            task: Some(id),
            ..EventFilter::default()
        };
        let mut events = client.events(&filter, None).await.expect("event stream");
        let now = client.get(id).await.expect("task").task.status.state;
        if reached(now) {
            return now;
        }
        loop {
            match events.next().await {
                Some(Ok(ServerEvent::Task(e))) => {
                    if let Some(s) = e.new_state().filter(|s| reached(*s)) {
                        return s;
                    }
                }
                // Events were missed: read the state again.
                Some(Ok(ServerEvent::Reset(_))) => {
                    let s = client.get(id).await.expect("task").task.status.state;
                    if reached(s) {
                        return s;
                    }
                }
                Some(Err(e)) => panic!("event stream of {id} failed: {e}"),
                None => panic!("event stream of {id} ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("task {id} never reached {state:?}"))
}

/// Runs `statement` on the database at `url`, on a thread of its own: the
/// blocking client must not run on an async test's thread.
pub fn sql(url: &str, statement: &str) -> Result<(), postgres::Error> {
    let (url, statement) = (url.to_owned(), statement.to_owned());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
        c.batch_execute(&statement)
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A database of this test's own on the PostgreSQL this machine runs
/// (`TASKGRID_TEST_DATABASE_URL` names the server, default
/// `postgres://postgres@127.0.0.1:5432/postgres`), dropped at the end.
pub struct TempDatabase {
    admin: String,
    name: String,
}

impl TempDatabase {
    pub fn new() -> TempDatabase {
        let admin = std::env::var("TASKGRID_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("tg_e2e_{}_{nanos}", std::process::id());
        sql(&admin, &format!("CREATE DATABASE {name}")).unwrap();
        TempDatabase { admin, name }
    }

    /// The URL of this database.
    pub fn url(&self) -> String {
        match self.admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{}", self.name),
            None => panic!("no database in {}", self.admin),
        }
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let _ = sql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Sends `signal` (`-STOP`, `-CONT`) to a process.
pub fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal} {pid}");
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .next();
        !matches!(state, Some("Z" | "X"))
    })
}

/// Waits (at most 30 s) until `pid` is no live process. Nothing signals
/// the death of a process that is not our child, so this polls, yielding.
pub async fn await_gone(pid: u32, what: &str) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while alive(pid) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}
