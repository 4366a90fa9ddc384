//! Metrics end to end: a known set of tasks runs through an embedded
//! `TaskSystem`, then `GET /api/v1/metrics` (JSON) and `GET /metrics`
//! (Prometheus text) must count exactly those tasks. The text is read by
//! two parsers: the `prometheus-parse` crate, and a strict line parser
//! below that refuses anything outside the 0.0.4 grammar (the crate skips
//! lines it cannot read, so agreement of the two shows none was skipped).
//! No sleeps: the test synchronises on `wait()` and `wait_idle()`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use prometheus_parse::{Scrape, Value};
use taskgrid_client::Client;
use taskgrid_core::{MetricsSnapshot, RetryPolicy, State};
use taskgrid_runtime::{Task, TaskContext, TaskError, TaskSystem};
use taskgrid_server::http::{ApiConfig, router};
use tower::ServiceExt;

const LIMIT: Duration = Duration::from_secs(20);
const SLOTS: u32 = 4;

/// `ok` succeeds, `fail` fails for good, `flaky` fails its first attempt.
fn system() -> Arc<TaskSystem> {
    let sys = TaskSystem::builder()
        .concurrency(SLOTS)
        .handler("ok", |_ctx: TaskContext| async move {
            Ok::<_, TaskError>(serde_json::Value::Null)
        })
        .handler("fail", |_ctx: TaskContext| async move {
            Err::<serde_json::Value, _>(TaskError::fatal("refused"))
        })
        .handler("flaky", |ctx: TaskContext| async move {
            if ctx.attempt() == 1 {
                return Err(TaskError::failed("first try"));
            }
            Ok(serde_json::Value::Null)
        })
        .build()
        .expect("system builds");
    sys.start().expect("system starts");
    Arc::new(sys)
}

async fn get(sys: &Arc<TaskSystem>, config: ApiConfig, uri: &str) -> (StatusCode, String, String) {
    let token = config.client_token.clone();
    let mut req = Request::builder().uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let res = router(sys.clone(), config)
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .expect("body reads");
    let body = String::from_utf8(bytes.to_vec()).expect("utf-8");
    (status, content_type, body)
}

/// Scrapes `/metrics`, checks it with both parsers, returns the crate's reading.
async fn scrape(sys: &Arc<TaskSystem>) -> Scrape {
    let (status, content_type, text) = get(sys, ApiConfig::default(), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let strict = strict::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    agree(&scrape, &strict);
    scrape
}

/// Every counter and gauge the crate read is a strict sample with the same
/// labels and value, and the other way round; every histogram's `+Inf`
/// bucket equals its `_count`.
fn agree(scrape: &Scrape, strict: &[strict::Sample]) {
    let mut plain = 0;
    for s in &scrape.samples {
        let labels: BTreeMap<String, String> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match &s.value {
            Value::Counter(v) | Value::Gauge(v) => {
                plain += 1;
                let found = strict
                    .iter()
                    .find(|x| x.name == s.metric && x.labels == labels)
                    .unwrap_or_else(|| panic!("{} {labels:?} not in the strict reading", s.metric));
                assert_eq!(found.value, *v, "{} {labels:?}", s.metric);
            }
            Value::Histogram(buckets) => {
                let inf = buckets
                    .iter()
                    .find(|b| b.less_than == f64::INFINITY)
                    .expect("+Inf bucket");
                let count = strict
                    .iter()
                    .find(|x| x.name == format!("{}_count", s.metric) && x.labels == labels)
                    .expect("_count");
                assert_eq!(inf.count, count.value, "{} {labels:?}", s.metric);
                let mut sorted = buckets.clone();
                sorted.sort_by(|a, b| a.less_than.total_cmp(&b.less_than));
                assert!(
                    sorted.windows(2).all(|w| w[0].count <= w[1].count),
                    "{} buckets are cumulative",
                    s.metric
                );
            }
            _ => {}
        }
    }
    let strict_plain = strict
        .iter()
        .filter(|x| matches!(x.kind.as_str(), "counter" | "gauge"))
        .count();
    assert_eq!(
        plain, strict_plain,
        "the crate read every counter and gauge"
    );
}

/// The value of a counter or gauge with exactly these labels.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && *s.labels == want)
        .unwrap_or_else(|| panic!("no {name} {labels:?}"));
    match s.value {
        Value::Counter(v) | Value::Gauge(v) => v,
        ref other => panic!("{name} is {other:?}"),
    }
}

/// The sum of a counter or gauge over every sample matching `labels`.
fn sum(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// The `+Inf` bucket of a histogram with these labels.
fn histogram_count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && *s.labels == want)
        .unwrap_or_else(|| panic!("no {name} {labels:?}"));
    match &s.value {
        Value::Histogram(b) => b
            .iter()
            .find(|b| b.less_than == f64::INFINITY)
            .map_or(0.0, |b| b.count),
        other => panic!("{name} is {other:?}"),
    }
}

#[tokio::test]
async fn counters_in_json_and_prometheus_match_the_tasks_run() {
    let sys = system();
    let retry_once = RetryPolicy {
        initial_backoff: Duration::from_millis(1),
        ..RetryPolicy::retries(1)
    };
    let mut run = Vec::new();
    for _ in 0..3 {
        run.push(sys.submit(Task::handler("ok", &())).await.expect("submit"));
    }
    for _ in 0..2 {
        let t = Task::handler("fail", &()).queue("batch");
        run.push(sys.submit(t).await.expect("submit"));
    }
    let flaky = Task::handler("flaky", &()).queue("batch").retry(retry_once);
    run.push(sys.submit(flaky).await.expect("submit"));
    // Waits an hour: pending, then cancelled.
    let later = Task::handler("ok", &()).delay(Duration::from_secs(3600));
    let later = sys.submit(later).await.expect("submit");
    let mut ends = Vec::new();
    for h in &run {
        ends.push(h.wait_timeout(LIMIT).await.expect("ends").state);
    }
    let ok = |n| std::iter::repeat_n(State::Succeeded, n);
    let expected: Vec<State> = ok(3)
        .chain([State::Failed, State::Failed, State::Succeeded])
        .collect();
    assert_eq!(ends, expected);

    // While the delayed task waits: a queue depth, nothing running.
    let s = scrape(&sys).await;
    let default_normal = [("queue", "default"), ("priority", "normal")];
    assert_eq!(value(&s, "taskgrid_queue_depth", &default_normal), 1.0);
    assert_eq!(
        value(&s, "taskgrid_tasks_running", &[("queue", "default")]),
        0.0
    );

    later.cancel().await.expect("cancel");
    assert_eq!(
        later.wait_timeout(LIMIT).await.expect("ends").state,
        State::Cancelled
    );
    sys.wait_idle().await.expect("idle");

    // JSON.
    let (status, content_type, body) = get(&sys, ApiConfig::default(), "/api/v1/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let m: MetricsSnapshot = serde_json::from_str(&body).expect("a MetricsSnapshot");
    let counts = |x: &taskgrid_core::SeriesSnapshot| {
        (x.submitted, x.succeeded, x.failed, x.cancelled, x.retried)
    };
    assert_eq!(
        (m.submitted, m.succeeded, m.failed, m.cancelled, m.retried),
        (7, 4, 2, 1, 1)
    );
    assert_eq!((m.timed_out, m.expired), (0, 0));
    assert_eq!(counts(&m.queues["default"]), (4, 3, 0, 1, 0));
    assert_eq!(counts(&m.queues["batch"]), (3, 1, 2, 0, 1));
    assert_eq!(counts(&m.kinds["handler:ok"]), (4, 3, 0, 1, 0));
    assert_eq!(counts(&m.kinds["handler:fail"]), (2, 0, 2, 0, 0));
    assert_eq!(counts(&m.kinds["handler:flaky"]), (1, 1, 0, 0, 1));
    // The local executor ran 7 attempts: 3 ok, 2 fail, flaky twice.
    assert_eq!(counts(&m.workers["local"]), (7, 4, 2, 0, 1));
    assert_eq!(m.workers["local"].run_time.count, 7);
    assert_eq!((m.run_time.count, m.queue_wait.count), (7, 7));
    assert!((m.success_rate - 4.0 / 6.0).abs() < 1e-9);
    assert!(m.throughput.last_1m > 0.0);
    assert_eq!(m.queue_kinds.len(), 3);

    // Prometheus, the same counts.
    let s = scrape(&sys).await;
    let submitted = "taskgrid_tasks_submitted_total";
    let finished = "taskgrid_tasks_finished_total";
    assert_eq!(sum(&s, submitted, &[]), 7.0);
    let default_ok = [("queue", "default"), ("kind", "handler:ok")];
    let batch_fail = [("queue", "batch"), ("kind", "handler:fail")];
    let batch_flaky = [("queue", "batch"), ("kind", "handler:flaky")];
    assert_eq!(value(&s, submitted, &default_ok), 4.0);
    assert_eq!(value(&s, submitted, &batch_fail), 2.0);
    assert_eq!(value(&s, submitted, &batch_flaky), 1.0);
    for (state, n) in [
        ("succeeded", 4.0),
        ("failed", 2.0),
        ("cancelled", 1.0),
        ("timed_out", 0.0),
        ("expired", 0.0),
    ] {
        assert_eq!(sum(&s, finished, &[("state", state)]), n, "{state}");
    }
    let with_state = |l: &[(&'static str, &'static str)], st: &'static str| {
        let mut v = l.to_vec();
        v.push(("state", st));
        v
    };
    assert_eq!(
        value(&s, finished, &with_state(&default_ok, "cancelled")),
        1.0
    );
    assert_eq!(value(&s, finished, &with_state(&batch_fail, "failed")), 2.0);
    assert_eq!(value(&s, "taskgrid_tasks_retried_total", &batch_flaky), 1.0);
    assert_eq!(sum(&s, "taskgrid_tasks_retried_total", &[]), 1.0);
    // Run time: one sample per attempt that ran; queue wait per assignment.
    assert_eq!(
        histogram_count(&s, "taskgrid_task_run_seconds", &default_ok),
        3.0
    );
    assert_eq!(
        histogram_count(&s, "taskgrid_task_run_seconds", &batch_flaky),
        2.0
    );
    assert_eq!(
        histogram_count(&s, "taskgrid_task_queue_wait_seconds", &batch_fail),
        2.0
    );
    // Gauges and the worker's counters.
    assert_eq!(value(&s, "taskgrid_workers_connected", &[]), 1.0);
    let local = [("worker", "local")];
    assert_eq!(value(&s, "taskgrid_worker_slots", &local), f64::from(SLOTS));
    assert_eq!(value(&s, "taskgrid_worker_slots_used", &local), 0.0);
    assert_eq!(value(&s, "taskgrid_worker_attempts_total", &local), 7.0);
    let local_ok = [("worker", "local"), ("state", "succeeded")];
    let local_failed = [("worker", "local"), ("state", "failed")];
    assert_eq!(
        value(&s, "taskgrid_worker_tasks_finished_total", &local_ok),
        4.0
    );
    assert_eq!(
        value(&s, "taskgrid_worker_tasks_finished_total", &local_failed),
        2.0
    );
    assert_eq!(
        histogram_count(&s, "taskgrid_worker_task_run_seconds", &local),
        7.0
    );
    assert_eq!(sum(&s, "taskgrid_queue_depth", &[]), 0.0);
    assert!(
        value(
            &s,
            "taskgrid_tasks_finished_per_second",
            &[("window", "1m")]
        ) > 0.0
    );
    // The HELP lines the crate read name every family.
    for family in [
        submitted,
        finished,
        "taskgrid_task_run_seconds",
        "taskgrid_task_queue_wait_seconds",
        "taskgrid_workers_connected",
    ] {
        assert!(s.docs.contains_key(family), "no HELP for {family}");
    }
    sys.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn label_values_are_escaped_in_the_exposition() {
    let sys = system();
    let queue = r#"odd "queue" \ name"#;
    let h = sys
        .submit(Task::handler("ok", &()).queue(queue))
        .await
        .expect("submit");
    h.wait_timeout(LIMIT).await.expect("ends");
    sys.wait_idle().await.expect("idle");
    let (status, _, text) = get(&sys, ApiConfig::default(), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains(r#"{queue="odd \"queue\" \\ name",kind="handler:ok"} 1"#),
        "{text}"
    );
    let samples = strict::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let submitted = samples
        .iter()
        .find(|s| s.name == "taskgrid_tasks_submitted_total")
        .expect("a submitted sample");
    assert_eq!(
        submitted.labels["queue"], queue,
        "the escaped value reads back"
    );
    assert_eq!(submitted.value, 1.0);
    sys.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn prometheus_text_needs_the_token_when_one_is_set() {
    let sys = system();
    let with_token = || ApiConfig {
        client_token: Some("s3cret".to_owned()),
        ..ApiConfig::default()
    };
    let (status, _, _) = get(&sys, with_token(), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    // Without the token: 401 like the API.
    let req = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .expect("request");
    let res = router(sys.clone(), with_token())
        .oneshot(req)
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Without a token configured, only loopback host names are served.
    let req = Request::builder()
        .uri("/metrics")
        .header(header::HOST, "evil.example")
        .body(Body::empty())
        .expect("request");
    let res = router(sys.clone(), ApiConfig::default())
        .oneshot(req)
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    sys.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_client_reads_both_forms_over_a_socket() {
    let sys = system();
    let h = sys.submit(Task::handler("ok", &())).await.expect("submit");
    h.wait_timeout(LIMIT).await.expect("ends");
    sys.wait_idle().await.expect("idle");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("has an address");
    let app = router(sys.clone(), ApiConfig::default());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let client = Client::new(&format!("http://{addr}"), None).expect("client");
    let m = client.metrics().await.expect("metrics");
    assert_eq!((m.submitted, m.succeeded), (1, 1));
    assert_eq!(m.kinds["handler:ok"].succeeded, 1);
    let text = client.prometheus().await.expect("prometheus");
    let samples = strict::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        samples
            .iter()
            .any(|s| s.name == "taskgrid_tasks_submitted_total"
                && s.labels.get("kind").map(String::as_str) == Some("handler:ok")
                && s.value == 1.0)
    );
    sys.shutdown().await.expect("shutdown");
}

/// A strict reader of the text exposition format 0.0.4: every line must be
/// a `# HELP`, a `# TYPE` or a sample of the family last typed; names and
/// label names are checked, label values unescaped, values parsed.
mod strict {
    use super::*;

    /// One sample line.
    #[derive(Debug, Clone, PartialEq)]
    pub(super) struct Sample {
        pub(super) name: String,
        pub(super) kind: String,
        pub(super) labels: BTreeMap<String, String>,
        pub(super) value: f64,
    }

    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
        chars.next().is_some_and(ok_first) && chars.all(|c| ok_first(c) || c.is_ascii_digit())
    }

    fn number(s: &str) -> Result<f64, String> {
        match s {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ => s.parse().map_err(|_| format!("bad number {s:?}")),
        }
    }

    /// `{k="v",…}` at the start of `s`; the labels and the rest.
    fn labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
        let mut out = BTreeMap::new();
        let Some(mut rest) = s.strip_prefix('{') else {
            return Ok((out, s));
        };
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                return Ok((out, r));
            }
            let eq = rest.find('=').ok_or("label without =")?;
            let key = &rest[..eq];
            if !is_name(key, false) {
                return Err(format!("bad label name {key:?}"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("unquoted label value")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, '\n')) | None => return Err("unterminated label value".into()),
                    Some((_, c)) => value.push(c),
                }
            };
            if out.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err("expected , or }".into());
            }
        }
    }

    /// Every sample, or the first line that breaks the format.
    pub(super) fn parse(text: &str) -> Result<Vec<Sample>, String> {
        if !text.ends_with('\n') {
            return Err("the text must end with a newline".into());
        }
        let mut out = Vec::new();
        let mut helped = HashSet::new();
        let mut typed: HashMap<String, String> = HashMap::new();
        let mut family: Option<(String, String)> = None;
        for (n, line) in text.lines().enumerate() {
            let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                if !is_name(name, true) || !helped.insert(name.to_owned()) {
                    return Err(err("bad or repeated HELP".into()));
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(err("TYPE needs a name and a type".into()));
                };
                let known = ["counter", "gauge", "histogram", "summary", "untyped"];
                if !is_name(name, true) || !known.contains(&kind) {
                    return Err(err("bad TYPE".into()));
                }
                if typed.insert(name.to_owned(), kind.to_owned()).is_some() {
                    return Err(err("repeated TYPE".into()));
                }
                family = Some((name.to_owned(), kind.to_owned()));
            } else if line.starts_with('#') {
                continue;
            } else {
                let end = line
                    .find(['{', ' '])
                    .ok_or_else(|| err("no value".into()))?;
                let name = &line[..end];
                if !is_name(name, true) {
                    return Err(err("bad metric name".into()));
                }
                let (labels, rest) = labels(&line[end..]).map_err(err)?;
                let mut fields = rest
                    .strip_prefix(' ')
                    .ok_or_else(|| err("no space before the value".into()))?
                    .split(' ');
                let value = number(fields.next().unwrap_or_default()).map_err(err)?;
                if let Some(ts) = fields.next() {
                    ts.parse::<i64>()
                        .map_err(|_| err(format!("bad timestamp {ts:?}")))?;
                }
                if fields.next().is_some() {
                    return Err(err("trailing fields".into()));
                }
                let (fam, kind) = family
                    .clone()
                    .ok_or_else(|| err("sample before TYPE".into()))?;
                let belongs = match kind.as_str() {
                    "histogram" => {
                        (name == format!("{fam}_bucket") && labels.contains_key("le"))
                            || name == format!("{fam}_sum")
                            || name == format!("{fam}_count")
                    }
                    _ => name == fam,
                };
                if !belongs {
                    return Err(err(format!("sample outside its family {fam}")));
                }
                out.push(Sample {
                    name: name.to_owned(),
                    kind,
                    labels,
                    value,
                });
            }
        }
        Ok(out)
    }
}
