#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The web dashboard in a real browser: Debian's headless `chromium`,
//! driven over WebDriver (`chromedriver`) with `fantoccini`, against real
//! `taskgrid server` and `taskgrid worker` processes with a client token.
//!
//! The test enters the token in the page's prompt, submits a shell task
//! from the dashboard, watches its output appear on the task page as the
//! task produces it, takes a screenshot, clicks Cancel and checks that the
//! page and the API both say `cancelled`. Another checks the charts' axes
//! on a fresh coordinator, the task list (newest first, state filters with
//! live counts) and the timeline of a retried task's attempts. Every wait
//! is on a DOM (or API) condition with a deadline, never a fixed sleep.
//!
//! Needs `chromium` and `chromedriver` (Debian packages `chromium` and
//! `chromium-driver`); when they are missing and the test runs as root it
//! installs them with the same command as `.ci/run`, otherwise it fails
//! naming that command.

mod util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use taskgrid_core::{State, TaskId};
use util::{Proc, Server, await_state, await_worker, worker};

/// The client token the coordinator is started with.
const TOKEN: &str = "dashboard-test-token";
/// The longest any one wait on the page may take.
const LIMIT: Duration = Duration::from_secs(30);
/// Tasks of the load test: the most one batch may hold.
const LOAD: usize = 10_000;
/// The longest the load test's tasks may take to run (a debug build, two
/// cores shared with the rest of the test suite).
const LOAD_LIMIT: Duration = Duration::from_secs(240);
/// How Debian's chromium and its driver are installed (as in `.ci/run`).
const INSTALL: &str = "apt-get update -qq && apt-get install -y -qq --no-install-recommends \
                       chromium chromium-driver";
/// Chromium flags for a closed network and a clean, quiet profile.
const CHROME_ARGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
];

/// Whether `prog` runs (`prog --version` succeeds).
fn runs(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure chromium and chromedriver are there, installing them when
/// possible; a missing browser is a failure, never a skip. Tests run in
/// parallel: one installs while the others wait (apt holds a lock).
fn ensure_browser() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(install_browser);
    assert!(
        runs("chromium") && runs("chromedriver"),
        "chromium and chromedriver are needed: run `{INSTALL}` as root"
    );
}

/// Installs chromium and chromedriver with apt when they are missing and
/// this runs as root; [`ensure_browser`] says what to do if that fails.
fn install_browser() {
    if runs("chromium") && runs("chromedriver") {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root {
        eprintln!("installing chromium for the dashboard test: {INSTALL}");
        let status = Command::new("sh")
            .args(["-c", INSTALL])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        eprintln!("apt-get: {status:?}");
    }
}

/// `chromedriver` and the browsers it starts, in a process group of their
/// own: all are killed (SIGKILL) when this is dropped, also when a test
/// fails before it closes its session.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// `chromedriver` on a port the OS picks; returns the process and its URL.
///
/// chromedriver is the test's instrument, not what it tests: one that
/// exits before it listens (seen once in CI, with four tests starting
/// theirs at once; its stderr was not kept then) is started again, up to
/// three times, each failure logged with what chromedriver said on stderr.
fn chromedriver() -> (Driver, String) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        match try_chromedriver() {
            Ok(started) => return started,
            Err(why) => {
                eprintln!("chromedriver exited before it listened: {why}");
                failures.push(why);
            }
        }
    }
    panic!("chromedriver exited before it listened, three times: {failures:?}");
}

/// One start of `chromedriver`; `Err` with its stderr if it exits before
/// saying which port it listens on.
fn try_chromedriver() -> Result<(Driver, String), String> {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("chromedriver")
        .arg("--port=0")
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromedriver");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut proc = Driver(child);
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    break rest.trim_end_matches('.').to_owned();
                }
            }
            Some(Err(e)) => return Err(format!("reading its output: {e}")),
            None => {
                let status = proc.0.wait();
                let mut said = String::new();
                let _ = stderr.read_to_string(&mut said);
                return Err(format!("{status:?}; stderr: {said:?}"));
            }
        }
    };
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    Ok((proc, format!("http://127.0.0.1:{port}")))
}

/// A headless chromium session with a fresh profile in `profile`.
async fn browser(driver: &str, profile: &Path) -> Client {
    let mut args: Vec<String> = CHROME_ARGS.iter().map(|a| (*a).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let caps = serde_json::json!({
        "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!("a JSON object literal")
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("open a chromium session")
}

/// Polls `probe` until it returns `Some`, for at most [`LIMIT`].
async fn wait_for<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_long(what, LIMIT, probe).await
}

/// Polls `probe` until it returns `Some`, for at most `limit`.
async fn wait_long<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text of the element `css`, once it exists.
async fn text_of(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Enters the token in the page's prompt and waits for the live stream.
async fn log_in(c: &Client) {
    let input = wait_for("the token prompt", || async {
        let el = c.find(Locator::Css("#token-input")).await.ok()?;
        el.is_displayed().await.ok()?.then_some(el)
    })
    .await;
    input.send_keys(TOKEN).await.unwrap();
    click(c, "#token-form button[type=submit]").await;
    wait_text(c, "#live", "live").await;
}

/// A coordinator with the client token, one worker `w1` with `slots`, and
/// a chromium session on a fresh profile; the temporary directory holds
/// the data, the profile and the tasks' files.
async fn start(slots: &str) -> (tempfile::TempDir, Server, Proc, Driver, Client) {
    ensure_browser();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--client-token", TOKEN],
    );
    let w = worker(&server.url(), "w1", &["--slots", slots]);
    await_worker(&server.client(Some(TOKEN)), "w1").await;
    let (driver, driver_url) = chromedriver();
    let c = browser(&driver_url, &dir.path().join("profile")).await;
    (dir, server, w, driver, c)
}

/// Clicks the element `css` once it exists and is enabled. The page may
/// redraw it between finding and clicking (a live update): then it is
/// found again, within the usual deadline.
async fn click(c: &Client, css: &str) {
    wait_for(&format!("{css} to be clickable"), || async {
        let el = c.find(Locator::Css(css)).await.ok()?;
        if !el.is_enabled().await.ok()? {
            return None;
        }
        el.click().await.ok()
    })
    .await;
}

/// Waits until the element `css` exists and its text contains `needle`.
async fn wait_text(c: &Client, css: &str, needle: &str) -> String {
    wait_for(&format!("{css} to show {needle:?}"), || async {
        text_of(c, css).await.filter(|t| t.contains(needle))
    })
    .await
}

/// Where screenshots go: `target/tmp/dashboard-test/`.
fn shots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-test");
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir
}

/// Saves a PNG of the page as `name` in [`shots_dir`] and prints its path.
async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("take a screenshot");
    let path = shots_dir().join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    println!("screenshot: {}", path.display());
}

/// Token prompt, submit from the page, output as produced, Cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_submits_follows_output_and_cancels_in_chromium() {
    let (dir, server, _w, _driver, c) = start("2").await;
    let api = server.client(Some(TOKEN));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    // The token is asked for once, then every view works with it.
    c.goto(&format!("{}/#/tasks", server.url())).await.unwrap();
    log_in(&c).await;

    // Submit a task that prints a line, waits for a gate file, prints a
    // second line, then waits for a gate that never opens.
    let gate1 = work.join("gate1");
    let gate2 = work.join("gate2");
    let script = format!(
        "echo line-one; while [ ! -e {g1} ]; do sleep 0.05; done; echo line-two; \
         while [ ! -e {g2} ]; do sleep 0.05; done; echo never",
        g1 = gate1.display(),
        g2 = gate2.display()
    );
    wait_for("the submit form", || async {
        c.find(Locator::Css("#submit-script")).await.ok()
    })
    .await
    .send_keys(&script)
    .await
    .unwrap();
    click(&c, "#submit-button").await;

    // The page moves to the new task and its output appears as produced.
    let id: TaskId = wait_for("the task page", || async {
        let url = c.current_url().await.ok()?;
        url.fragment()?.strip_prefix("/task/")?.parse().ok()
    })
    .await;
    wait_text(&c, "#output", "line-one").await;
    let before = text_of(&c, "#output").await.unwrap_or_default();
    assert!(!before.contains("line-two"), "the gate is still closed");
    std::fs::write(&gate1, b"").unwrap();
    wait_text(&c, "#output", "line-two").await;
    wait_text(&c, "#task-state", "running").await;
    screenshot(&c, "task-running.png").await;

    // Cancel from the page: the page and the API agree.
    click(&c, "#cancel").await;
    wait_text(&c, "#task-state", "cancelled").await;
    assert_eq!(
        await_state(&api, id, None).await,
        State::Cancelled,
        "the API agrees"
    );
    // The page reloads the task once it has ended: Retry is offered.
    wait_for("the retry button to be enabled", || async {
        let el = c.find(Locator::Css("#retry")).await.ok()?;
        el.is_enabled().await.ok()?.then_some(())
    })
    .await;
    screenshot(&c, "task-cancelled.png").await;

    // The other views show the cluster with the same token.
    c.goto(&format!("{}/#/workers", server.url()))
        .await
        .unwrap();
    wait_text(&c, "main", "w1").await;
    // Which coordinator serves: one, on a store of its own.
    wait_text(&c, "#coordinators", "One coordinator: http://127.0.0.1:").await;
    // Its host, as its heartbeats say: load per CPU, memory, disk.
    wait_text(&c, "main", "host load/cpu").await;
    wait_for("the worker's host load", || async {
        let load = page_json(
            &c,
            "document.querySelector('tr[data-worker=\"w1\"] td[data-load]')?.textContent",
        )
        .await;
        load.as_str()
            .is_some_and(|t| t.chars().any(|ch| ch.is_ascii_digit()))
            .then_some(())
    })
    .await;
    screenshot(&c, "workers.png").await;
    c.goto(&format!("{}/#/tasks?state=cancelled", server.url()))
        .await
        .unwrap();
    wait_text(&c, "#tasks-table", &id.to_string()[24..]).await;
    screenshot(&c, "tasks.png").await;
    c.goto(&format!("{}/", server.url())).await.unwrap();
    wait_text(&c, "main", "workers online").await;
    screenshot(&c, "overview.png").await;

    c.close().await.unwrap();
}

/// The value of the script expression `expr` on the page, as JSON.
async fn page_json(c: &Client, expr: &str) -> serde_json::Value {
    c.execute(&format!("return {expr};"), vec![])
        .await
        .unwrap_or_else(|e| panic!("the page cannot evaluate {expr}: {e}"))
}

/// The ids of the task list's rows, top to bottom.
async fn listed(c: &Client) -> Vec<String> {
    let rows =
        "[...document.querySelectorAll('#tasks-table tr[data-task]')].map((r) => r.dataset.task)";
    serde_json::from_value(page_json(c, rows).await).unwrap_or_default()
}

/// Submits a shell task running `argv` with `retries` retries 50 ms apart.
async fn submit_shell(api: &taskgrid_client::Client, argv: &[&str], retries: u32) -> TaskId {
    let task = serde_json::from_value(serde_json::json!({
        "kind": {"type": "shell", "command": {"argv": argv}},
        "retry": {"max_retries": retries, "initial_backoff": 50, "jitter": 0.0}
    }))
    .unwrap();
    api.submit(&task).await.unwrap().id
}

/// A fresh coordinator's charts have distinct tick labels; the task list is
/// newest first with state filters that count the whole grid, live; the
/// page of a task that was retried shows one timeline row per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_lists_newest_first_filters_by_state_and_shows_attempts() {
    let (_dir, server, _w, _driver, c) = start("2").await;
    let api = server.client(Some(TOKEN));

    // Nothing has run yet: every chart's axis has distinct labels (an
    // all-zero series gets 0 and 1, not "0.0" three times).
    c.goto(&format!("{}/", server.url())).await.unwrap();
    log_in(&c).await;
    let ticks = "[...document.querySelectorAll('canvas[data-ticks]')]\
                 .map((el) => [el.id, JSON.parse(el.dataset.ticks)])";
    let charts: Vec<(String, Vec<String>)> = wait_for("the three charts", || async {
        let v: Vec<(String, Vec<String>)> =
            serde_json::from_value(page_json(&c, ticks).await).ok()?;
        (v.len() == 3).then_some(v)
    })
    .await;
    for (chart, labels) in &charts {
        let distinct: std::collections::HashSet<&String> = labels.iter().collect();
        assert!(labels.len() >= 2, "{chart}: {labels:?}");
        assert_eq!(distinct.len(), labels.len(), "{chart}: {labels:?}");
    }
    let by_id = |id: &str| charts.iter().find(|(c, _)| c == id).map(|(_, l)| l.clone());
    assert_eq!(
        by_id("chart-throughput"),
        Some(vec!["0".into(), "1".into()])
    );
    assert_eq!(by_id("chart-depth"), Some(vec!["0".into(), "1".into()]));
    assert_eq!(
        by_id("chart-failures"),
        Some(vec!["0%".into(), "50%".into(), "100%".into()])
    );
    screenshot(&c, "overview-fresh.png").await;

    // Successes and failures, one after the other; one failure retried
    // twice before it fails for good.
    let mut submitted = Vec::new();
    for (argv, retries) in [
        (&["true"][..], 0),
        (&["false"][..], 0),
        (&["true"][..], 0),
        (&["sh", "-c", "echo try; exit 3"][..], 2),
        (&["false"][..], 0),
        (&["true"][..], 0),
    ] {
        let id = submit_shell(&api, argv, retries).await;
        await_state(&api, id, None).await;
        submitted.push(id.to_string());
    }
    let retried: TaskId = submitted[3].parse().unwrap();
    let failed = vec![
        submitted[4].clone(),
        submitted[3].clone(),
        submitted[1].clone(),
    ];

    // The list: newest first, and the counts of the whole grid.
    click(&c, "nav a[data-view=tasks]").await;
    wait_text(&c, "[data-filter=failed] .count", "3").await;
    wait_text(&c, "[data-filter=succeeded] .count", "3").await;
    wait_text(&c, "[data-filter=all] .count", "6").await;
    wait_text(&c, "[data-filter=running] .count", "0").await;
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();
    wait_for("the list, newest first", || async {
        (listed(&c).await == newest_first).then_some(())
    })
    .await;
    screenshot(&c, "tasks-newest-first.png").await;

    // A filter shows only its state's tasks, newest first.
    click(&c, "[data-filter=failed]").await;
    wait_for("only the failed tasks", || async {
        (listed(&c).await == failed).then_some(())
    })
    .await;
    let badges = page_json(
        &c,
        "[...document.querySelectorAll('#tasks-table tr[data-task] .state')].map((b) => b.dataset.state)",
    )
    .await;
    assert_eq!(badges, serde_json::json!(["failed", "failed", "failed"]));
    let active = text_of(&c, "#state-filters .active")
        .await
        .unwrap_or_default();
    assert!(
        active.starts_with("failed"),
        "the active filter: {active:?}"
    );

    // The counts and the filtered list stay live: a new failure shows up
    // at the top, counted, without a reload.
    let late = submit_shell(&api, &["false"], 0).await;
    await_state(&api, late, None).await;
    wait_text(&c, "[data-filter=failed] .count", "4").await;
    wait_text(&c, "[data-filter=all] .count", "7").await;
    wait_for("the new failure at the top", || async {
        let rows = listed(&c).await;
        (rows.len() == 4 && rows[0] == late.to_string()).then_some(())
    })
    .await;
    screenshot(&c, "tasks-failed.png").await;

    // The retried task's page: one timeline row per attempt, on w1, each
    // with its phases and its end.
    let attempts = api.get(retried).await.unwrap().attempts;
    assert_eq!(attempts.len(), 3, "two retries: three attempts");
    c.goto(&format!("{}/#/task/{retried}", server.url()))
        .await
        .unwrap();
    let rows = "[...document.querySelectorAll('#timeline .tl-row')]\
                .map((r) => [r.dataset.attempt, r.dataset.worker, r.dataset.outcome, r.textContent])";
    let timeline: Vec<(String, String, String, String)> =
        wait_for("a timeline row per attempt", || async {
            let v: Vec<(String, String, String, String)> =
                serde_json::from_value(page_json(&c, rows).await).ok()?;
            (v.len() == attempts.len()).then_some(v)
        })
        .await;
    for (i, (attempt, worker, outcome, text)) in timeline.iter().enumerate() {
        assert_eq!(attempt, &(i + 1).to_string());
        assert_eq!(worker, "w1");
        assert_eq!(outcome, "failed", "attempt {attempt}");
        // The first waited in the queue, the others for their backoff and
        // then the queue, which the last one tells apart.
        let waited = match i {
            0 => "queued",
            1 => "waiting",
            _ => "backoff",
        };
        for phase in [waited, "assigned", "running", "exit 3"] {
            assert!(
                text.contains(phase),
                "attempt {attempt}: {text:?} lacks {phase:?}"
            );
        }
    }
    screenshot(&c, "task-timeline.png").await;
    c.close().await.unwrap();
}

/// Reads a number the page's live model holds (`model.summaries`, …).
async fn page_number(c: &Client, expr: &str) -> u64 {
    c.execute(&format!("return {expr};"), vec![])
        .await
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("the page has no number {expr}"))
}

/// 10,000 tasks held, resumed from the page and followed to the end by
/// the page's summary stream, every task counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_keeps_up_with_ten_thousand_tasks() {
    let (_dir, server, _w, _driver, c) = start("4").await;
    let api = server.client(Some(TOKEN));
    c.goto(&format!("{}/#/queues", server.url())).await.unwrap();
    log_in(&c).await;

    // Hold the queue (with the page's own API call: the typed client has
    // no pause yet), then submit the load.
    let paused = c
        .execute(
            "return api('/queues/bulk/pause', { method: 'POST' }).then((q) => q.paused);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(paused, serde_json::Value::Bool(true));
    let task = serde_json::from_value(serde_json::json!({
        "kind": {"type": "shell", "command": {"argv": ["true"]}},
        "queue": "bulk", "tags": ["load"]
    }))
    .unwrap();
    // In batches that fit the body limit (each task serialises every field).
    let batch = vec![task; LOAD / 5];
    for _ in 0..5 {
        assert_eq!(api.submit_batch(&batch).await.unwrap().len(), LOAD / 5);
    }

    // The queues view shows the whole backlog, then Resume lets it run.
    let row = "tr[data-queue=bulk]";
    wait_text(&c, row, &format!("normal: {LOAD}")).await;
    wait_text(&c, row, "paused").await;
    screenshot(&c, "queue-paused.png").await;
    click(&c, &format!("{row} button")).await;
    wait_text(&c, row, "active").await;

    // The overview follows the load to its end from its summary stream:
    // every task counted once, from a few messages a second rather than
    // the 40,000 events the load makes. (By the menu: a new page load
    // would start over.)
    let summaries_before = page_number(&c, "model.summaries").await;
    let resumed = std::time::Instant::now();
    click(&c, "nav a[data-view=overview]").await;
    let done = "[data-card=succeeded] .n";
    wait_long("the overview to count every task", LOAD_LIMIT, || async {
        text_of(&c, done)
            .await
            .filter(|t| t.trim() == LOAD.to_string())
    })
    .await;
    let tally = "model.samples.reduce((n, s) => n + s.finished, 0) + model.current.finished";
    let seen = wait_for("the page to count every finish", || async {
        let n = page_number(&c, tally).await;
        (n >= LOAD as u64).then_some(n)
    })
    .await;
    assert_eq!(seen, LOAD as u64, "every task finished once");
    let summaries = page_number(&c, "model.summaries").await - summaries_before;
    // One per 500 ms pulse, plus the first of each stream the views opened.
    let pulses = resumed.elapsed().as_millis() as u64 / 500 + 1;
    assert!(
        summaries <= pulses + 2,
        "{summaries} summaries in {pulses} pulses"
    );
    // The queue table is re-read within a refresh interval of the end.
    wait_for("the queue table to drain", || async {
        text_of(&c, row).await.filter(|t| !t.contains("normal:"))
    })
    .await;
    wait_text(&c, "#live", "live").await;
    screenshot(&c, "overview-after-load.png").await;
    c.close().await.unwrap();
}

/// The schedules page lists a yearly schedule with its next fire; its own
/// page shows the definition, the next fires and what holds it back, runs
/// it now (a `submitted` fire with its task in the fires table), pauses it
/// with a note and resumes it; the list pauses and resumes too, and shows
/// a pause made through the API without a reload. The API agrees at each
/// step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_triggers_pauses_and_resumes_a_schedule() {
    let (_dir, server, _w, _driver, c) = start("2").await;
    let api = server.client(Some(TOKEN));
    let name = "new-year";
    // Midnight on the first of January: it never fires during the test.
    let def = serde_json::from_value(serde_json::json!({
        "cron": "0 0 1 1 *",
        "task": {"kind": {"type": "shell", "command": {"argv": ["echo", "happy new year"]}},
                 "queue": "yearly"}
    }))
    .unwrap();
    let info = api.put_schedule(name, &def, false).await.unwrap();
    let next = info.next.expect("a yearly schedule fires next year");
    assert_eq!(info.upcoming.len(), 5);

    // The list: its spec, its state and its next fire.
    c.goto(&format!("{}/#/schedules", server.url()))
        .await
        .unwrap();
    log_in(&c).await;
    let row = format!("#schedules-table tr[data-schedule={name}]");
    wait_text(&c, &row, "cron 0 0 1 1 * (UTC)").await;
    wait_text(&c, &row, "active").await;
    let shown = page_json(
        &c,
        &format!("document.querySelector('{row} td.next').dataset.next"),
    )
    .await;
    assert_eq!(shown, serde_json::json!(next.as_micros().to_string()));
    let due = page_json(
        &c,
        &format!("document.querySelector('{row} td.next time').textContent"),
    )
    .await;
    assert!(
        due.as_str().is_some_and(|t| t.contains("(in ")),
        "next fire: {due}"
    );
    assert!(
        c.find(Locator::Css("nav a[data-view=schedules].active"))
            .await
            .is_ok(),
        "the menu says where the page is"
    );
    screenshot(&c, "schedules.png").await;

    // Its page: the definition, five next fires, nothing holding it back.
    click(&c, &format!("{row} a[href='#/schedule/{name}']")).await;
    wait_text(&c, "#schedule-definition", "echo happy new year").await;
    let detail = wait_text(&c, "#schedule-detail", "yearly").await;
    assert!(detail.contains("cron 0 0 1 1 *"), "{detail}");
    wait_text(&c, "#schedule-gates", "fires as planned").await;
    wait_text(&c, "#schedule-state", "active").await;
    let upcoming = page_json(
        &c,
        "[...document.querySelectorAll('#schedule-upcoming li[data-us]')].map((li) => li.dataset.us)",
    )
    .await;
    let expected: Vec<String> = info
        .upcoming
        .iter()
        .map(|t| t.as_micros().to_string())
        .collect();
    assert_eq!(upcoming, serde_json::json!(expected));
    wait_text(&c, "#schedule-fires", "No fires yet").await;

    // Trigger: a manual fire that submitted a task, linked from the table.
    click(&c, "#schedule-trigger").await;
    wait_text(&c, "#fires-table", "submitted").await;
    let fired = page_json(
        &c,
        "[...document.querySelectorAll('#fires-table tr[data-outcome]')]\
         .map((r) => [r.dataset.outcome, r.dataset.manual, r.querySelector('a[href^=\"#/task/\"]')?.title])",
    )
    .await;
    let fires = api.schedule_fires(name).await.unwrap();
    assert_eq!(fires.len(), 1, "one fire: {fires:?}");
    assert_eq!(fires[0].outcome, taskgrid_core::FireOutcome::Submitted);
    assert!(fires[0].manual);
    let task = fires[0].task.expect("a submitted fire has its task");
    assert_eq!(
        fired,
        serde_json::json!([["submitted", "true", task.to_string()]])
    );
    let said = wait_text(&c, "#schedule-said", &task.to_string()[24..]).await;
    assert!(
        said.starts_with("Triggered at ") && said.contains("submitted") && !said.contains("null"),
        "{said}"
    );
    assert_eq!(await_state(&api, task, None).await, State::Succeeded);
    screenshot(&c, "schedule-triggered.png").await;

    // Pause with a note: the page and the API say paused, and why.
    wait_for("the note field", || async {
        c.find(Locator::Css("#schedule-note")).await.ok()
    })
    .await
    .send_keys("db migration")
    .await
    .unwrap();
    click(&c, "#schedule-pause").await;
    wait_text(&c, "#schedule-state", "paused").await;
    wait_text(&c, "#schedule-gates", "db migration").await;
    wait_text(&c, "#schedule-upcoming", "paused").await;
    let d = api.schedule(name).await.unwrap();
    assert!(d.schedule.paused, "the API agrees");
    assert_eq!(d.schedule.note.as_deref(), Some("db migration"));
    assert_eq!(d.schedule.next, None);
    screenshot(&c, "schedule-paused.png").await;

    // Resume: active again, with its next fire back.
    click(&c, "#schedule-resume").await;
    wait_text(&c, "#schedule-state", "active").await;
    wait_text(&c, "#schedule-gates", "fires as planned").await;
    let d = api.schedule(name).await.unwrap();
    assert!(!d.schedule.paused, "the API agrees");
    assert_eq!(d.schedule.next, Some(next));

    // The list: the fire's task, a pause made elsewhere (here the API)
    // shown without a reload, and its Resume and Pause buttons.
    click(&c, "nav a[data-view=schedules]").await;
    wait_text(&c, &row, &task.to_string()[24..]).await;
    api.pause_schedule(name, Some("from the API".into()))
        .await
        .unwrap();
    wait_text(&c, &row, "from the API").await;
    wait_text(&c, &row, "paused").await;
    screenshot(&c, "schedules-paused.png").await;
    click(&c, &format!("{row} button[data-action=resume]")).await;
    wait_text(&c, &row, "active").await;
    assert!(!api.schedule(name).await.unwrap().schedule.paused);
    click(&c, &format!("{row} button[data-action=pause]")).await;
    wait_text(&c, &row, "paused").await;
    assert!(api.schedule(name).await.unwrap().schedule.paused);
    c.close().await.unwrap();
}
