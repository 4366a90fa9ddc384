//! Option checks, and one small run end to end so the command cannot rot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;

use super::plan::HANDLER_SLOTS_DEFAULT;
use super::*;

/// `taskgrid bench` alone, for parsing.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fn plan(argv: &[&str]) -> anyhow::Result<Plan> {
    let cli = Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))?;
    cli.args.plan()
}

fn refusal(argv: &[&str]) -> String {
    format!("{:#}", plan(argv).expect_err("refused"))
}

#[test]
fn defaults_are_a_throughput_run_in_this_process() {
    let p = plan(&[]).unwrap();
    assert_eq!(p.mode, Mode::Throughput { tasks: 100_000 });
    assert_eq!((p.workers, p.clients, p.batch), (1, 4, 1000));
    assert_eq!(p.slots, HANDLER_SLOTS_DEFAULT);
    assert_eq!(p.placement, Placement::InProcess);
    assert_eq!(
        plan(&["--latency"]).unwrap().mode,
        Mode::Latency { tasks: 2_000 }
    );
    let idle = plan(&["--idle-workers", "10"]).unwrap();
    assert_eq!(idle.mode, Mode::IdleWorkers { workers: 10 });
    assert_eq!(idle.placement, Placement::Child);
}

#[test]
fn zero_counts_are_refused_by_flag_name() {
    assert!(refusal(&["--tasks", "0"]).contains("--tasks must be at least 1"));
    assert!(refusal(&["--batch", "0"]).contains("--batch must be at least 1"));
    assert!(refusal(&["--clients", "0"]).contains("--clients"));
    assert!(refusal(&["--workers", "0"]).contains("--workers"));
    assert!(refusal(&["--slots", "0"]).contains("--slots"));
    assert!(refusal(&["--idle-workers", "0"]).contains("--idle-workers"));
    assert!(refusal(&["--batch", "10001"]).contains("at most 10000"));
}

#[test]
fn combinations_that_cannot_work_are_refused() {
    let r = refusal(&["--worker-mode", "process"]);
    assert!(
        r.contains("no Rust handlers") && r.contains("--kind true"),
        "{r}"
    );
    assert!(plan(&["--worker-mode", "process", "--kind", "true"]).is_ok());
    let p = plan(&["--store", "postgres://postgres@127.0.0.1:5432/bench"]).unwrap();
    assert_eq!(
        p.store,
        StoreKind::Postgres("postgres://postgres@127.0.0.1:5432/bench".to_owned())
    );
    let bad = format!(
        "{:#}",
        Cli::try_parse_from(["bench", "--store", "mysql://x"]).expect_err("refused")
    );
    assert!(bad.contains("unknown store `mysql://x`"), "{bad}");
    // `taskgrid server --store memory` exists: a child coordinator may use it.
    let p = plan(&["--store", "memory", "--coordinator-process"]).unwrap();
    assert_eq!(
        (p.placement, p.store),
        (Placement::Child, StoreKind::Memory)
    );
    assert!(refusal(&["--token", "t"]).contains("apply to --server"));
    assert!(refusal(&["--server", "http://x:1", "--idle-workers", "5"]).contains("--server-pid"));
    assert!(refusal(&["--kind", "true", "--payload-bytes", "10"]).contains("--payload-bytes"));
    assert!(refusal(&["--payload-bytes", "100000"]).contains("lower --batch"));
    assert!(plan(&["--payload-bytes", "100000", "--batch", "10"]).is_ok());
    // clap itself refuses two modes at once.
    assert!(plan(&["--latency", "--idle-workers", "3"]).is_err());
}

#[test]
fn handler_kinds_carry_their_payload_and_true_runs_the_program() {
    let p = plan(&["--kind", "echo", "--payload-bytes", "3"]).unwrap();
    let req = serde_json::to_value(p.request(None)).unwrap();
    assert_eq!(req["kind"]["name"], "echo");
    assert_eq!(req["kind"]["payload"], "xxx");
    let p = plan(&["--kind", "true"]).unwrap();
    let req = serde_json::to_value(p.request(Some("run-1"))).unwrap();
    assert_eq!(req["kind"]["command"]["argv"][0], "true");
    assert_eq!(req["labels"][0], "taskgrid-bench=run-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_run_finishes_every_task_and_reports_it() {
    let p = plan(&[
        "--tasks",
        "200",
        "--batch",
        "50",
        "--clients",
        "2",
        "--slots",
        "16",
    ])
    .unwrap();
    let r = throughput::run(&p, 200).await.expect("the run");
    assert_eq!(r.succeeded, 200, "{:?}", r.states);
    assert_eq!(r.submit_to_done.map(|p| p.count), Some(200));
    assert!(r.e2e_per_sec > 0.0 && r.submit_per_sec > 0.0);
    assert!(r.store_bytes.is_some_and(|b| b > 0));
    assert!(r.coordinator.cpu_secs.is_some());
    let json = serde_json::to_value(Report::Throughput(r)).unwrap();
    assert_eq!(json["mode"], "throughput");
    assert_eq!(json["states"]["succeeded"], 200);
    assert_eq!(json["kind"], "noop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_latency_run_sees_every_end() {
    let p = plan(&["--latency", "--tasks", "20", "--store", "memory"]).unwrap();
    let r = latency::run(&p, 20).await.expect("the run");
    assert_eq!(r.states.get("succeeded"), Some(&20));
    assert_eq!(r.client_submit_to_done.map(|p| p.count), Some(20));
}
