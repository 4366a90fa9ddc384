//! The shell executor against real programs and `/bin/sh` scripts.

use std::time::Duration;

use taskgrid_core::{Outcome, Resources, RetryHint, ShellSpec, StopReason, Stream};

use super::{Live, alive, argv, limits, pids, script, text};
use crate::exec::{ExecLimits, ShellInput, ShellPolicy, run_shell};

fn start(
    spec: ShellSpec,
    timeout: Option<Duration>,
    limits: ExecLimits,
    policy: ShellPolicy,
) -> Live {
    Live::start(move |stop, out| async move {
        let input = ShellInput::default();
        run_shell(&spec, input, timeout, &limits, &policy, stop, out).await
    })
}

/// Runs `spec` to its end with this input (stdin, limits, own group).
async fn run_input(
    spec: ShellSpec,
    resources: Resources,
    stdin: Option<String>,
    own_cgroup: bool,
) -> (crate::exec::ExecReport, super::Chunks) {
    Live::start(move |stop, out| async move {
        let input = ShellInput {
            resources,
            stdin: stdin.as_deref(),
            own_cgroup,
            spawner: None,
        };
        run_shell(&spec, input, None, &limits(), &ShellPolicy::Any, stop, out).await
    })
    .finish()
    .await
}

async fn run(spec: ShellSpec) -> (crate::exec::ExecReport, super::Chunks) {
    start(spec, None, limits(), ShellPolicy::Any).finish().await
}

fn succeeded() -> Outcome {
    Outcome::Succeeded {
        result: None,
        exit_code: Some(0),
    }
}

/// The message of a failure that must not be retried.
fn refusal(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Failed {
            message,
            retry: RetryHint::Never,
            exit_code: None,
        } => message,
        other => panic!("expected a final failure, got {other:?}"),
    }
}

#[tokio::test]
async fn argv_output_arrives_in_order_in_chunks_cut_at_lines() {
    let lim = ExecLimits {
        chunk_bytes: 1000,
        ..limits()
    };
    let (report, chunks) = start(argv(&["seq", "1", "20000"]), None, lim, ShellPolicy::Any)
        .finish()
        .await;
    assert_eq!(report.outcome, succeeded());
    assert_eq!((report.exit_code, report.signal), (Some(0), None));
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(text(&chunks, Stream::Stdout), expected);
    assert!(chunks.len() > 100, "{} chunks", chunks.len());
    assert!(
        chunks
            .iter()
            .all(|(s, t)| *s == Stream::Stdout && t.len() <= 1000)
    );
    // Lines are never longer than a chunk, so nearly every chunk ends one
    // (a partial line goes alone only when the pipe goes quiet mid-line).
    let whole = chunks.iter().filter(|(_, t)| t.ends_with('\n')).count();
    assert!(
        whole * 10 >= chunks.len() * 9,
        "{whole} of {}",
        chunks.len()
    );
    assert!(!report.output_truncated);
}

#[tokio::test]
async fn argv_is_not_interpreted_by_a_shell() {
    let (report, chunks) = run(argv(&["echo", "$HOME", "a;b", "*", "`id`"])).await;
    assert_eq!(report.outcome, succeeded());
    assert_eq!(text(&chunks, Stream::Stdout), "$HOME a;b * `id`\n");
}

#[tokio::test]
async fn a_script_runs_under_sh_with_stdin_on_dev_null() {
    let (report, chunks) = run(script("x=4; echo $((x * 2)); read line; echo \"read=$?\"")).await;
    assert_eq!(report.outcome, succeeded());
    assert_eq!(text(&chunks, Stream::Stdout), "8\nread=1\n");
}

#[tokio::test]
async fn env_is_added_to_the_inherited_environment_and_cwd_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = script(r#"printf '%s|%s|%s' "$GREETING" "$(pwd -P)" "${PATH:+path inherited}""#);
    spec.env = vec![("GREETING".into(), "hi there".into())];
    spec.cwd = Some(dir.path().to_str().unwrap().to_owned());
    let (report, chunks) = run(spec).await;
    assert_eq!(report.outcome, succeeded());
    let real = dir.path().canonicalize().unwrap();
    assert_eq!(
        text(&chunks, Stream::Stdout),
        format!("hi there|{}|path inherited", real.display())
    );
}

#[tokio::test]
async fn stdout_and_stderr_are_both_captured() {
    let (report, chunks) = run(script("echo out; echo err >&2; echo out2")).await;
    assert_eq!(report.outcome, succeeded());
    assert_eq!(text(&chunks, Stream::Stdout), "out\nout2\n");
    assert_eq!(text(&chunks, Stream::Stderr), "err\n");
}

#[tokio::test]
async fn a_partial_line_is_forwarded_without_waiting_for_its_end() {
    let mut live = start(
        script("printf 'prompt> '; exec sleep 1000"),
        None,
        limits(),
        ShellPolicy::Any,
    );
    live.stdout_contains("prompt> ").await;
    live.request_stop(StopReason::Cancel);
    let (report, _) = live.finish().await;
    assert_eq!(report.outcome, Outcome::Cancelled);
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_its_code() {
    let (report, _) = run(script("exit 3")).await;
    assert_eq!(
        report.outcome,
        Outcome::Failed {
            message: "exited with code 3".into(),
            retry: RetryHint::Policy,
            exit_code: Some(3),
        }
    );
    assert_eq!((report.exit_code, report.signal), (Some(3), None));
}

#[tokio::test]
async fn a_signal_death_fails_naming_the_signal() {
    let (report, _) = run(script("kill -KILL $$")).await;
    assert_eq!(
        report.outcome,
        Outcome::Failed {
            message: "killed by signal SIGKILL (9)".into(),
            retry: RetryHint::Policy,
            exit_code: None,
        }
    );
    assert_eq!((report.exit_code, report.signal), (None, Some(9)));
}

/// Prints the pids of a grandchild, a child and the script itself, then
/// waits: `sh -c 'sleep & …; exec sleep'` leaves an orphan-to-be.
const FAMILY: &str = r#"
sh -c 'sleep 1000 & echo $!; exec sleep 1000' &
echo $!
echo $$
wait
"#;

#[tokio::test]
async fn timeout_kills_the_process_group_even_when_it_ignores_sigterm() {
    let lim = ExecLimits {
        kill_grace: Duration::from_millis(200),
        ..limits()
    };
    // Long enough for the script to print its pids even on a loaded machine.
    let timeout = Duration::from_secs(3);
    // Ignoring TERM is inherited, so only the SIGKILL after the grace works.
    let spec = script(&format!("trap '' TERM\n{FAMILY}"));
    let mut live = start(spec, Some(timeout), lim, ShellPolicy::Any);
    live.stdout_lines(3).await;
    let (report, chunks) = live.finish().await;
    assert_eq!(report.outcome, Outcome::TimedOut);
    assert_eq!(report.signal, Some(9), "SIGTERM was ignored: {report:?}");
    assert!(report.duration >= timeout, "{report:?}");
    let pids = pids(&chunks);
    assert_eq!(pids.len(), 3, "{chunks:?}");
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived the timeout");
    }
}

#[tokio::test]
async fn cancel_stops_the_process_group() {
    let mut live = start(script(FAMILY), None, limits(), ShellPolicy::Any);
    let lines = live.stdout_lines(3).await;
    let pids: Vec<i32> = lines.iter().map(|l| l.parse().unwrap()).collect();
    assert!(pids.iter().all(|&p| alive(p)));
    live.request_stop(StopReason::Cancel);
    let (report, _) = live.finish().await;
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert_eq!(report.signal, Some(15), "{report:?}");
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived the cancel");
    }
}

#[tokio::test]
async fn a_stop_for_timeout_from_the_coordinator_reads_as_timed_out() {
    let mut live = start(
        script("echo up; exec sleep 1000"),
        None,
        limits(),
        ShellPolicy::Any,
    );
    live.stdout_lines(1).await;
    live.request_stop(StopReason::Timeout);
    let (report, _) = live.finish().await;
    assert_eq!(report.outcome, Outcome::TimedOut);
}

#[tokio::test]
async fn background_processes_do_not_outlive_a_finished_task() {
    // The orphan holds stdout open: without the group kill this would hang.
    let (report, chunks) = run(script("sleep 1000 & echo $!")).await;
    assert_eq!(report.outcome, succeeded());
    let pids = pids(&chunks);
    assert_eq!(pids.len(), 1);
    assert!(!alive(pids[0]), "the background sleep survived");
}

#[tokio::test]
async fn a_stop_requested_before_the_start_spawns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let spec = script(&format!("touch '{}'", marker.display()));
    // On the test's single-threaded runtime the attempt cannot begin before
    // this function first awaits, so the request is there before it starts.
    let live = start(spec, None, limits(), ShellPolicy::Any);
    live.request_stop(StopReason::Cancel);
    let (report, _) = live.finish().await;
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert_eq!(report.duration, Duration::ZERO);
    assert!(!marker.exists());
}

#[tokio::test]
async fn dropping_the_attempt_kills_its_process_group() {
    let mut live = start(script(FAMILY), None, limits(), ShellPolicy::Any);
    let lines = live.stdout_lines(3).await;
    let pids: Vec<i32> = lines.iter().map(|l| l.parse().unwrap()).collect();
    live.task.abort();
    // SIGKILL went out from a Drop; nothing tells us when it landed.
    super::within("the processes to die", async {
        while pids.iter().any(|&p| alive(p)) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_dropped_attempt_still_reaps_its_process() {
    let mut live = start(
        script("echo $$; sleep 1000"),
        None,
        limits(),
        ShellPolicy::Any,
    );
    let leader: i32 = live.stdout_lines(1).await[0].parse().unwrap();
    live.task.abort();
    // The reaping outlives the attempt: no zombie is left behind.
    super::within("the process to be reaped", async {
        while !super::reaped(leader) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn output_past_the_cap_is_dropped_but_drained() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let cap = 64 << 10;
    let lim = ExecLimits {
        max_output_bytes: cap,
        ..limits()
    };
    let spec = script(&format!(
        "yes 0123456789abcdef0123456789abcdef | head -c 5242880\n\
         echo after-the-cap >&2\n\
         touch '{}'",
        done.display()
    ));
    let (report, chunks) = start(spec, None, lim, ShellPolicy::Any).finish().await;
    assert_eq!(report.outcome, succeeded(), "the child must not block");
    assert!(done.exists(), "the script did not run to its end");
    assert!(report.output_truncated);
    let marker = (
        Stream::Stderr,
        format!("[output truncated after {cap} bytes]\n"),
    );
    assert_eq!(chunks.iter().filter(|c| **c == marker).count(), 1);
    let forwarded: usize = chunks
        .iter()
        .filter(|c| **c != marker)
        .map(|(_, t)| t.len())
        .sum();
    assert_eq!(forwarded, cap);
    assert!(!text(&chunks, Stream::Stderr).contains("after-the-cap"));
}

#[tokio::test]
async fn cpu_time_and_peak_rss_are_measured() {
    let (report, _) = run(script(
        "i=0; while [ $i -lt 500000 ]; do i=$((i + 1)); done",
    ))
    .await;
    assert_eq!(report.outcome, succeeded());
    assert!(report.cpu_seconds > 0.05, "{report:?}");
    assert!(report.cpu_seconds < 60.0, "{report:?}");
    assert!(report.duration > Duration::ZERO);
}

#[tokio::test]
async fn an_allow_list_refuses_other_programs_and_scripts() {
    let policy = ShellPolicy::AllowList(vec!["echo".into()]);
    let (report, _) = start(argv(&["ls", "/"]), None, limits(), policy.clone())
        .finish()
        .await;
    let message = refusal(&report.outcome);
    assert!(message.contains("\"ls\""), "{message}");
    let (report, _) = start(script("echo hi"), None, limits(), policy.clone())
        .finish()
        .await;
    assert!(refusal(&report.outcome).contains("scripts are not allowed"));
    let (report, chunks) = start(argv(&["echo", "hi"]), None, limits(), policy)
        .finish()
        .await;
    assert_eq!(report.outcome, succeeded());
    assert_eq!(text(&chunks, Stream::Stdout), "hi\n");
}

#[tokio::test]
async fn an_allow_listed_name_is_found_on_the_workers_path_not_the_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("echo");
    super::install_script(&fake, "#!/bin/sh\necho evil\n");
    let mut spec = argv(&["echo", "hi"]);
    spec.env = vec![("PATH".into(), dir.path().to_str().unwrap().into())];
    let policy = ShellPolicy::AllowList(vec!["echo".into()]);
    let (report, chunks) = start(spec, None, limits(), policy).finish().await;
    assert_eq!(report.outcome, succeeded());
    assert_eq!(text(&chunks, Stream::Stdout), "hi\n");
}

#[tokio::test]
async fn a_disabled_shell_refuses_everything() {
    let (report, chunks) = start(argv(&["echo", "hi"]), None, limits(), ShellPolicy::Disabled)
        .finish()
        .await;
    assert_eq!(
        refusal(&report.outcome),
        "shell tasks are disabled on this worker"
    );
    assert!(chunks.is_empty());
    assert_eq!(report.duration, Duration::ZERO);
}

#[tokio::test]
async fn a_missing_program_fails_for_good_naming_it() {
    let (report, _) = run(argv(&["taskgrid-no-such-program", "x"])).await;
    let message = refusal(&report.outcome);
    assert!(
        message.contains("\"taskgrid-no-such-program\""),
        "{message}"
    );
    assert!(message.contains("not found"), "{message}");
}

#[tokio::test]
async fn a_bad_working_directory_is_not_reported_as_a_missing_program() {
    let mut spec = argv(&["echo"]);
    spec.cwd = Some("/nonexistent/taskgrid-dir".into());
    let (report, _) = run(spec).await;
    let message = refusal(&report.outcome);
    assert!(message.contains("working directory"), "{message}");
}

/// Where this machine cannot make cgroups, says why and returns false.
fn cgroups_here() -> bool {
    match crate::exec::cgroups() {
        Ok(_) => true,
        Err(why) => {
            eprintln!("skipped: no usable cgroup here ({why})");
            false
        }
    }
}

/// A memory hog under a 64 MiB limit ends failed "out of memory", killed
/// by the kernel, and its peak memory is the group's, near the limit.
#[tokio::test]
async fn a_memory_hog_over_its_limit_ends_out_of_memory() {
    if !cgroups_here() {
        return;
    }
    // dd fills a 256 MiB buffer from /dev/zero, touching every page.
    let hog = script("exec dd if=/dev/zero of=/dev/null bs=256M count=1");
    let limits_64 = Resources {
        cpus: None,
        memory_bytes: Some(64 << 20),
    };
    let (report, chunks) = run_input(hog, limits_64, None, false).await;
    match &report.outcome {
        Outcome::Failed { message, .. } => {
            assert!(message.starts_with("out of memory"), "{message}");
            assert!(
                message.contains("killed") && message.contains("64 MiB"),
                "{message}"
            );
        }
        other => panic!("{other:?}, output {:?}", text(&chunks, Stream::Stdout)),
    }
    assert!(
        report.peak_rss_bytes > 32 << 20 && report.peak_rss_bytes <= 64 << 20,
        "peak {}",
        report.peak_rss_bytes
    );

    // The same under no limit succeeds: the limit, not the machine, killed it.
    let small = script("exec dd if=/dev/zero of=/dev/null bs=1M count=1");
    let (report, _) = run_input(small, limits_64, None, false).await;
    assert_eq!(report.outcome, succeeded());
}

/// A tiny program's peak memory is its own (a few MiB at most) when it
/// runs in a cgroup (a task with limits), and not the worker's size when
/// it does not: there it is "not measured" (0), since a child's
/// `ru_maxrss` starts at the size of the process it was forked from.
#[tokio::test]
async fn a_tiny_task_never_reports_the_workers_size_as_its_peak() {
    // Make this process big first: a forked child's maxrss would start here.
    let ballast = vec![1u8; 64 << 20];
    std::hint::black_box(&ballast);
    let (report, _) = run(argv(&["echo", "hi"])).await;
    assert_eq!(report.outcome, succeeded());
    assert_eq!(
        report.peak_rss_bytes, 0,
        "not measured, rather than the worker's size"
    );

    if cgroups_here() {
        let limited = Resources {
            cpus: None,
            memory_bytes: Some(1 << 30),
        };
        let (report, _) = run_input(argv(&["echo", "hi"]), limited, None, false).await;
        assert_eq!(report.outcome, succeeded());
        assert!(
            report.peak_rss_bytes > 0 && report.peak_rss_bytes < 16 << 20,
            "peak {} bytes",
            report.peak_rss_bytes
        );
        // CPU seconds come from the group too.
        assert!(report.cpu_seconds < 1.0, "{report:?}");

        // A worker may put every task in a group: measured without limits.
        let (report, _) = run_input(argv(&["echo", "hi"]), Resources::default(), None, true).await;
        assert!(
            report.peak_rss_bytes > 0 && report.peak_rss_bytes < 16 << 20,
            "peak {} bytes",
            report.peak_rss_bytes
        );
    }
    drop(ballast);
}

/// A CPU limit of a quarter CPU holds a busy loop to about a quarter of
/// the wall time it runs.
#[tokio::test]
async fn a_cpu_limit_throttles_a_busy_loop() {
    if !cgroups_here() {
        return;
    }
    let quarter = Resources {
        cpus: Some(0.25),
        memory_bytes: None,
    };
    let spin = script("end=$(( $(date +%s) + 1 )); while [ $(date +%s) -le $end ]; do :; done");
    let (report, _) = run_input(spin, quarter, None, false).await;
    assert_eq!(report.outcome, succeeded());
    let share = report.cpu_seconds / report.duration.as_secs_f64();
    assert!(share < 0.5, "used {share:.2} of a CPU under a 0.25 limit");
}

/// Standard input given with the task reaches the program and ends with
/// end of file; a program that ignores it still succeeds.
#[tokio::test]
async fn stdin_reaches_the_program_and_ends() {
    let data = "one\ntwo\n".repeat(20_000); // more than a pipe holds
    let want = data.len().to_string();
    let none = Resources::default();
    let (report, chunks) = run_input(argv(&["wc", "-c"]), none, Some(data), false).await;
    assert_eq!(report.outcome, succeeded());
    assert_eq!(text(&chunks, Stream::Stdout).trim(), want);

    let ignored = Some("ignored".to_owned());
    let (report, _) = run_input(argv(&["true"]), none, ignored, false).await;
    assert_eq!(report.outcome, succeeded());
}

/// A program that exits without reading its input while a process it
/// started in a session of its own keeps the pipe open: the attempt still
/// ends when the program does (the rest of the input is dropped).
#[tokio::test]
async fn unread_stdin_held_by_an_escaped_process_does_not_hold_the_attempt() {
    let data = "x".repeat(1 << 20); // far more than a pipe holds
    // The escaped process says it is in its own session (through a fifo)
    // before the program exits, so the process group's kill cannot reach it.
    let spec = script(
        "f=$(mktemp -u); mkfifo \"$f\"; exec 3<&0; \
         setsid sh -c 'echo $$ > \"$0\"; exec sleep 1000' \"$f\" <&3 >/dev/null 2>&1 & \
         read pid < \"$f\"; rm \"$f\"; echo \"$pid\"",
    );
    let ended = tokio::time::timeout(
        Duration::from_secs(60),
        run_input(spec, Resources::default(), Some(data), false),
    )
    .await;
    let (report, chunks) = ended.expect("the attempt ended with its program");
    assert_eq!(report.outcome, succeeded());
    if let Ok(pid) = text(&chunks, Stream::Stdout).trim().parse::<i32>() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
