#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The web dashboard in a real browser: Debian's headless `chromium`,
//! driven over WebDriver (`chromedriver`) with `fantoccini`, against real
//! `taskgrid server` and `taskgrid worker` processes with a client token.
//!
//! The test enters the token in the page's prompt, submits a shell task
//! from the dashboard, watches its output appear on the task page as the
//! task produces it, takes a screenshot, clicks Cancel and checks that the
//! page and the API both say `cancelled`. Every wait is on a DOM (or API)
//! condition with a deadline, never a fixed sleep.
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
/// possible; a missing browser is a failure, never a skip.
fn ensure_browser() {
    if runs("chromium") && runs("chromedriver") {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    assert!(
        root,
        "chromium and chromedriver are needed for the dashboard test: run `{INSTALL}` as root"
    );
    let status = Command::new("sh")
        .args(["-c", INSTALL])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("run apt-get");
    assert!(
        status.success() && runs("chromium") && runs("chromedriver"),
        "could not install chromium: `{INSTALL}` failed"
    );
}

/// `chromedriver` on a port the OS picks; returns the process and its URL.
fn chromedriver() -> (Proc, String) {
    let mut child = Command::new("chromedriver")
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc(child);
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("chromedriver exited before it listened")
            .expect("read chromedriver's output");
        if let Some(rest) = line.split("started successfully on port ").nth(1) {
            break rest.trim_end_matches('.').to_owned();
        }
    };
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (proc, format!("http://127.0.0.1:{port}"))
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
async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
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

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("take a screenshot");
    let path = shots_dir().join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    println!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_submits_follows_output_and_cancels_in_chromium() {
    ensure_browser();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let server = Server::start(&data, "127.0.0.1:0", &["--client-token", TOKEN]);
    let _w = worker(&server.url(), "w1", &[]);
    let api = server.client(Some(TOKEN));
    await_worker(&api, "w1").await;

    let (_driver, driver_url) = chromedriver();
    let c = browser(&driver_url, &dir.path().join("profile")).await;

    // The token is asked for once, then every view works with it.
    c.goto(&format!("{}/#/tasks", server.url())).await.unwrap();
    let input = wait_for("the token prompt", || async {
        let el = c.find(Locator::Css("#token-input")).await.ok()?;
        el.is_displayed().await.ok()?.then_some(el)
    })
    .await;
    input.send_keys(TOKEN).await.unwrap();
    c.find(Locator::Css("#token-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "#live", "live").await;

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
    c.find(Locator::Css("#submit-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

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
    c.find(Locator::Css("#cancel"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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
    c.goto(&format!("{}/#/tasks?state=cancelled", server.url()))
        .await
        .unwrap();
    wait_text(&c, "#tasks-table", &id.to_string()[24..]).await;
    c.goto(&format!("{}/", server.url())).await.unwrap();
    wait_text(&c, "main", "workers online").await;
    screenshot(&c, "overview.png").await;

    c.close().await.unwrap();
}
