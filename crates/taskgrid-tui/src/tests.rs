//! Tests of [`update`] message by message, and of [`draw`] on ratatui's
//! `TestBackend`: no terminal, no coordinator.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use taskgrid_api::{
    CancelOutcomeKind, CancelResponse, EventKind, Kind, OutputEnd, OutputEntry, ScheduleDetail,
    ScheduleInfo, ScheduleRequest, SubmitRequest, TaskDetail, TaskEvent, TaskView, WorkerView,
};
use taskgrid_core::{
    FailureCode, FireOutcome, FireRecord, Overlap, Priority, Progress, QueueStats, ScheduleGate,
    ShellCommand, ShellSpec, State, Stream, TaskFailure, TaskId, TaskStatus, Timestamp, WorkerId,
};

use crate::{App, Effect, Key, MAX_OUTPUT_LINES, MAX_TASKS, Msg, Tab, draw, update};

fn id(n: u128) -> TaskId {
    TaskId::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n)
}

fn event(seq: u64, task: TaskId, kind: EventKind) -> Msg {
    Msg::Event(TaskEvent {
        seq,
        id: task,
        at: Timestamp::from_micros(seq),
        kind,
    })
}

fn submitted(seq: u64, task: TaskId) -> Msg {
    event(
        seq,
        task,
        EventKind::Submitted {
            queue: "default".into(),
            state: State::Queued,
            parent: None,
        },
    )
}

fn moved(seq: u64, task: TaskId, from: State, to: State, attempt: u32) -> Msg {
    event(
        seq,
        task,
        EventKind::State {
            from,
            to,
            attempt,
            error: None,
            result: None,
        },
    )
}

fn view(task: TaskId, state: State, argv: &[&str]) -> TaskView {
    let mut spec = SubmitRequest::shell(argv.iter().copied());
    spec.priority = Priority::HIGH;
    TaskView {
        id: task,
        spec,
        created_at: Timestamp::from_micros(1),
        status: TaskStatus::new(state),
        progress: None,
        checkpoint: None,
    }
}

fn keys(app: &mut App, keys: &[Key]) -> Vec<Effect> {
    keys.iter()
        .flat_map(|k| update(app, Msg::Key(*k)))
        .collect()
}

fn row_state(app: &App, task: TaskId) -> Option<State> {
    app.tasks.get(task).map(|r| r.state)
}

/// The screen as text, one line per terminal row.
fn screen(app: &App, width: u16, height: u16) -> String {
    let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
        Ok(t) => t,
        Err(e) => match e {},
    };
    if let Err(e) = terminal.draw(|f| draw(f, app)) {
        match e {}
    }
    let buf = terminal.backend().buffer();
    (0..height)
        .map(|y| (0..width).map(|x| buf[(x, y)].symbol()).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn events_move_a_task_through_its_states() {
    let mut app = App::new();
    let t = id(1);
    assert!(update(&mut app, submitted(1, t)).is_empty());
    assert_eq!(row_state(&app, t), Some(State::Queued));
    update(&mut app, moved(2, t, State::Queued, State::Assigned, 1));
    update(&mut app, moved(3, t, State::Assigned, State::Running, 1));
    assert_eq!(row_state(&app, t), Some(State::Running));
    update(
        &mut app,
        event(
            4,
            t,
            EventKind::State {
                from: State::Running,
                to: State::Failed,
                attempt: 1,
                error: Some(TaskFailure::new(FailureCode::Error, "exit 3")),
                result: None,
            },
        ),
    );
    let row = app.tasks.get(t).expect("row");
    assert_eq!((row.state, row.attempt), (State::Failed, 1));
    assert_eq!(row.error.as_deref(), Some("exit 3"));
    assert_eq!(app.logs.len(), 4);
    assert_eq!(app.last_seq, 4);
}

#[test]
fn a_listing_fills_in_rows_but_not_over_newer_events() {
    let mut app = App::new();
    let (a, b) = (id(1), id(2));
    update(&mut app, submitted(5, a));
    // The listing is asked for at seq 5; then an event moves `a` on.
    assert_eq!(
        keys(&mut app, &[Key::Char('r')]),
        [Effect::Refresh, Effect::LoadTasks { after: None }]
    );
    update(&mut app, moved(6, a, State::Queued, State::Running, 1));
    update(
        &mut app,
        Msg::Tasks {
            tasks: vec![
                view(a, State::Queued, &["make", "a"]),
                view(b, State::Succeeded, &["make", "b"]),
            ],
            done: true,
        },
    );
    let ra = app.tasks.get(a).expect("a");
    assert_eq!(
        ra.state,
        State::Running,
        "the event is newer than the listing"
    );
    assert_eq!(ra.what.as_deref(), Some("make a"));
    assert_eq!(ra.priority, Some(Priority::HIGH));
    assert_eq!(row_state(&app, b), Some(State::Succeeded));
    assert_eq!(app.loads.in_flight, 0);
}

#[test]
fn rows_seen_only_in_events_get_their_details_by_one_listing() {
    let mut app = App::new();
    update(&mut app, submitted(1, id(7)));
    update(&mut app, submitted(2, id(8)));
    let fx = update(&mut app, Msg::Tick);
    assert_eq!(fx, [Effect::LoadTasks { after: Some(id(6)) }]);
    update(&mut app, submitted(3, id(9)));
    assert!(
        update(&mut app, Msg::Tick).is_empty(),
        "one listing at a time"
    );
    update(
        &mut app,
        Msg::Tasks {
            tasks: vec![view(id(7), State::Queued, &["x"])],
            done: true,
        },
    );
    assert_eq!(
        update(&mut app, Msg::Tick),
        [Effect::LoadTasks { after: Some(id(8)) }]
    );
    // Asked for once: a row the listing did not bring is not asked again.
    update(&mut app, Msg::TasksFailed("boom".into()));
    assert!(update(&mut app, Msg::Tick).is_empty());
    assert_eq!(app.last_error(), Some("listing tasks: boom"));
    // A failed listing is done again once the coordinator is back.
    update(&mut app, Msg::Disconnected("refused".into()));
    assert_eq!(
        update(&mut app, Msg::Connected),
        [Effect::LoadTasks { after: None }]
    );
    assert!(update(&mut app, Msg::Connected).is_empty(), "only once");
}

#[test]
fn the_selection_stays_on_a_row_when_rows_disappear() {
    let mut app = App::new();
    keys(&mut app, &[Key::Char('2')]);
    for n in 0..10 {
        update(&mut app, submitted(n as u64 + 1, id(n)));
    }
    keys(&mut app, &[Key::End]);
    assert_eq!(app.selected_task(), Some(id(0)), "End selects the oldest");
    // Newer tasks push the oldest out: the selection moves to a live row.
    for n in 10..(MAX_TASKS as u128 + 20) {
        update(&mut app, submitted(n as u64 + 1, id(n)));
    }
    assert_eq!(app.tasks.len(), MAX_TASKS);
    let sel = app.selected_task().expect("a selection");
    assert!(app.tasks.get(sel).is_some());
    assert_eq!(app.tasks.selected_index(), Some(MAX_TASKS - 1));

    // Workers and queues shrink under their selections.
    let worker = |n: &str| WorkerView {
        id: WorkerId::new(n),
        labels: vec![],
        handlers: vec![],
        shell: true,
        container: false,
        slots: 4,
        prefetch: 0,
        used: 1,
        trust: 0.5,
        running: vec![],
        memory_bytes: None,
        cpus: None,
        max_load: None,
        health: None,
    };
    update(
        &mut app,
        Msg::Workers(vec![worker("a"), worker("b"), worker("c")]),
    );
    keys(&mut app, &[Key::Char('1'), Key::Down, Key::Down, Key::Down]);
    assert_eq!(app.worker_sel, 2);
    update(&mut app, Msg::Workers(vec![worker("a")]));
    assert_eq!(app.worker_sel, 0);
    update(&mut app, Msg::Workers(vec![]));
    assert_eq!(app.worker_sel, 0);
}

#[test]
fn cancel_asks_for_confirmation_first() {
    let mut app = App::new();
    let t = id(1);
    update(&mut app, submitted(1, t));
    assert!(keys(&mut app, &[Key::Char('c')]).is_empty());
    assert_eq!(app.confirm, Some(t));
    assert!(
        keys(&mut app, &[Key::Char('n')]).is_empty(),
        "anything but y declines"
    );
    assert_eq!(app.confirm, None);
    assert_eq!(
        keys(&mut app, &[Key::Char('c'), Key::Char('y')]),
        [Effect::Cancel(t)]
    );
    update(
        &mut app,
        Msg::Cancelled {
            id: t,
            answer: CancelResponse {
                outcome: CancelOutcomeKind::Cancelled,
                state: State::Cancelled,
            },
        },
    );
    assert_eq!(app.notice, Some(format!("{t} cancelled")));
    // A finished task is not offered.
    update(&mut app, moved(2, t, State::Queued, State::Cancelled, 0));
    assert!(keys(&mut app, &[Key::Char('c'), Key::Char('y')]).is_empty());
    assert_eq!(app.confirm, None);
}

#[test]
fn the_detail_view_opens_follows_and_cancels_its_task() {
    let mut app = App::new();
    let (a, b) = (id(1), id(2));
    update(&mut app, submitted(1, a));
    update(&mut app, submitted(2, b));
    assert_eq!(
        keys(&mut app, &[Key::Down, Key::Enter]),
        [Effect::OpenDetail(a)]
    );
    assert_eq!(app.open_task(), Some(a));
    let mut detail = view(a, State::Queued, &["sleep", "9"]);
    detail.status.attempt = 0;
    update(
        &mut app,
        Msg::Detail(Box::new(TaskDetail {
            task: detail,
            attempts: vec![],
        })),
    );
    // An event after opening is newer than the read.
    update(&mut app, moved(3, a, State::Queued, State::Running, 1));
    let d = app.detail.as_ref().expect("open");
    assert_eq!(d.state(), Some((State::Running, 1)));
    // Output of another task is not shown.
    let chunk = |seq, data: &str| OutputEntry {
        seq,
        attempt: 1,
        stream: Stream::Stdout,
        data: data.into(),
    };
    update(
        &mut app,
        Msg::Output {
            id: b,
            chunk: chunk(1, "other\n"),
        },
    );
    update(
        &mut app,
        Msg::Output {
            id: a,
            chunk: chunk(1, "mine\n"),
        },
    );
    update(
        &mut app,
        Msg::Output {
            id: a,
            chunk: chunk(1, "mine\n"),
        },
    );
    assert_eq!(
        app.detail.as_ref().map(|d| d.output.len()),
        Some(1),
        "a repeated chunk is skipped"
    );
    assert_eq!(
        keys(&mut app, &[Key::Char('c'), Key::Char('y')]),
        [Effect::Cancel(a)]
    );
    update(
        &mut app,
        Msg::OutputEnd(OutputEnd {
            id: a,
            state: State::Cancelled,
            exit_code: None,
            signal: None,
            result: None,
            error: None,
        }),
    );
    assert_eq!(
        app.detail.as_ref().and_then(|d| d.state()),
        Some((State::Cancelled, 1))
    );
    assert_eq!(keys(&mut app, &[Key::Esc]), [Effect::CloseDetail]);
    assert_eq!(app.open_task(), None);
    // Switching tabs closes it too.
    keys(&mut app, &[Key::Enter]);
    assert_eq!(keys(&mut app, &[Key::Tab]), [Effect::CloseDetail]);
    assert_eq!(app.tab(), Tab::Queues);
}

#[test]
fn output_lines_are_bounded_and_scroll_back() {
    let mut app = App::new();
    let t = id(1);
    update(&mut app, submitted(1, t));
    keys(&mut app, &[Key::Enter]);
    for seq in 1..=(MAX_OUTPUT_LINES as u64 + 500) {
        let chunk = OutputEntry {
            seq,
            attempt: 1,
            stream: Stream::Stdout,
            data: format!("line {seq}\n"),
        };
        update(&mut app, Msg::Output { id: t, chunk });
    }
    let d = app.detail.as_ref().expect("open");
    assert_eq!(d.output.len(), MAX_OUTPUT_LINES);
    assert_eq!(d.output.dropped(), 500);
    keys(&mut app, &[Key::Up, Key::Up, Key::PageUp]);
    assert_eq!(app.detail.as_ref().map(|d| d.scroll), Some(12));
    keys(&mut app, &[Key::End]);
    assert_eq!(app.detail.as_ref().map(|d| d.scroll), Some(0));
}

#[test]
fn a_burst_of_events_makes_one_redraw() {
    let mut app = App::new();
    assert!(app.take_redraw(), "the first frame");
    assert!(!app.take_redraw());
    for n in 0..5_000u64 {
        let fx = update(&mut app, submitted(n + 1, id(u128::from(n))));
        assert!(fx.is_empty(), "events alone cause no effect");
    }
    assert!(app.take_redraw());
    assert!(!app.take_redraw(), "drawn once for the whole burst");
    update(&mut app, Msg::Tick);
    assert!(
        !app.take_redraw(),
        "a tick that changes nothing draws nothing"
    );
    assert_eq!(app.logs.len(), crate::MAX_LOG_LINES);
}

#[test]
fn a_failed_refresh_shows_until_one_works_and_outages_are_logged_once() {
    let mut app = App::new();
    update(&mut app, Msg::Connected);
    update(&mut app, Msg::Disconnected("refused".into()));
    update(&mut app, Msg::Disconnected("refused".into()));
    update(&mut app, Msg::Connected);
    let lines: Vec<&str> = app.logs.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(
        lines,
        [
            "event stream connected",
            "event stream lost: refused",
            "event stream connected"
        ]
    );
    update(&mut app, Msg::RefreshFailed("down".into()));
    assert_eq!(app.last_error(), Some("down"));
    update(&mut app, Msg::Workers(vec![]));
    assert_eq!(app.last_error(), None);
    update(&mut app, Msg::Error("cancel: not found".into()));
    update(&mut app, Msg::Workers(vec![]));
    assert_eq!(
        app.last_error(),
        Some("cancel: not found"),
        "kept until Esc"
    );
    keys(&mut app, &[Key::Esc]);
    assert_eq!(app.last_error(), None);
}

#[test]
fn keys_switch_tabs_reset_reloads_and_q_quits() {
    let mut app = App::new();
    assert_eq!(app.tab(), Tab::Tasks);
    keys(&mut app, &[Key::Tab]);
    assert_eq!(app.tab(), Tab::Queues);
    keys(&mut app, &[Key::Tab, Key::Tab]);
    assert_eq!(app.tab(), Tab::Schedules);
    keys(&mut app, &[Key::Tab]);
    assert_eq!(app.tab(), Tab::Workers);
    keys(&mut app, &[Key::BackTab]);
    assert_eq!(app.tab(), Tab::Schedules);
    keys(&mut app, &[Key::Char('1')]);
    assert_eq!(app.tab(), Tab::Workers);
    keys(&mut app, &[Key::Char('5')]);
    assert_eq!(app.tab(), Tab::Schedules);
    keys(&mut app, &[Key::Char('4'), Key::Char('6')]);
    assert_eq!(app.tab(), Tab::Logs, "no sixth tab");
    assert_eq!(
        update(&mut app, Msg::Reset),
        [Effect::LoadTasks { after: None }, Effect::Refresh]
    );
    assert!(!app.should_quit());
    assert_eq!(keys(&mut app, &[Key::Char('q')]), [Effect::Quit]);
    assert!(app.should_quit());
}

#[test]
fn enter_on_an_event_opens_its_task() {
    let mut app = App::new();
    update(&mut app, submitted(1, id(1)));
    update(&mut app, submitted(2, id(2)));
    keys(&mut app, &[Key::Char('4')]);
    assert_eq!(app.log_sel, None, "following the newest");
    keys(&mut app, &[Key::Up]);
    assert_eq!(app.log_sel, Some(0));
    assert_eq!(keys(&mut app, &[Key::Enter]), [Effect::OpenDetail(id(1))]);
    keys(&mut app, &[Key::Esc, Key::Down]);
    assert_eq!(app.log_sel, None, "down at the end follows again");
}

#[test]
fn the_tasks_tab_shows_tabs_and_rows() {
    let mut app = App::new();
    let t = id(42);
    update(&mut app, Msg::Connected);
    update(
        &mut app,
        Msg::Tasks {
            tasks: vec![view(t, State::Queued, &["make", "test"])],
            done: true,
        },
    );
    update(&mut app, moved(1, t, State::Queued, State::Running, 1));
    let s = screen(&app, 120, 12);
    for want in [
        "1 Workers (0)",
        "2 Tasks (1)",
        "3 Queues (0)",
        "4 Logs (2)",
        "● live",
    ] {
        assert!(s.contains(want), "{want:?} missing in\n{s}");
    }
    let line = s
        .lines()
        .find(|l| l.contains(&t.to_string()))
        .expect("the task's row");
    assert!(line.contains("running"), "{line}");
    assert!(
        line.contains("high") && line.contains("make test"),
        "{line}"
    );
}

#[test]
fn the_detail_view_shows_output_and_a_progress_gauge() {
    let mut app = App::new();
    let t = id(3);
    update(&mut app, submitted(1, t));
    keys(&mut app, &[Key::Enter]);
    update(
        &mut app,
        Msg::Detail(Box::new(TaskDetail {
            task: view(t, State::Running, &["convert", "cat.png"]),
            attempts: vec![],
        })),
    );
    update(
        &mut app,
        event(
            2,
            t,
            EventKind::Progress(Progress {
                fraction: 0.42,
                message: Some("resizing".into()),
            }),
        ),
    );
    for (seq, data) in [(1, "hello from a worker\n"), (2, "second line\n")] {
        let chunk = OutputEntry {
            seq,
            attempt: 1,
            stream: Stream::Stdout,
            data: data.into(),
        };
        update(&mut app, Msg::Output { id: t, chunk });
    }
    let s = screen(&app, 100, 20);
    let title = format!("task {t}");
    for want in [
        title.as_str(),
        "convert cat.png",
        "42% resizing",
        "hello from a worker",
        "second line",
        "output, following",
    ] {
        assert!(s.contains(want), "{want:?} missing in\n{s}");
    }
    // Scrolled back, the newest line leaves the view.
    keys(&mut app, &[Key::Up]);
    let s = screen(&app, 100, 20);
    assert!(
        s.contains("1 lines back") && !s.contains("second line"),
        "{s}"
    );
}

#[test]
fn the_counters_give_way_to_the_tabs_on_a_narrow_terminal() {
    let mut app = App::new();
    update(
        &mut app,
        Msg::Metrics(Box::new(taskgrid_core::MetricsSnapshot {
            total: taskgrid_core::SeriesSnapshot {
                counts: taskgrid_core::TaskCounts {
                    submitted: 12,
                    succeeded: 9,
                    failed: 1,
                    ..Default::default()
                },
                success_rate: 0.9,
                ..Default::default()
            },
            ..Default::default()
        })),
    );
    let wide = screen(&app, 140, 5);
    assert!(
        wide.contains("submitted 12 · succeeded 9 · failed 1 · success 90.0%"),
        "{wide}"
    );
    let narrow = screen(&app, 80, 5);
    assert!(
        narrow.contains("4 Logs (0)") && !narrow.contains("submitted"),
        "{narrow}"
    );
}

#[test]
fn workers_queues_and_the_cancel_prompt_render() {
    let mut app = App::new();
    update(
        &mut app,
        Msg::Workers(vec![WorkerView {
            id: WorkerId::new("gpu-box"),
            labels: vec![("gpu".into(), String::new()), ("os".into(), "linux".into())],
            handlers: vec!["resize".into()],
            shell: true,
            container: false,
            slots: 4,
            prefetch: 0,
            used: 3,
            trust: 0.9,
            running: vec![],
            memory_bytes: None,
            cpus: None,
            max_load: Some(1.5),
            health: Some(taskgrid_core::WorkerHealth {
                load: Some(2.25),
                memory_available_bytes: Some(3 << 30),
                disk_free_bytes: Some(40 << 30),
                at: taskgrid_core::Timestamp::from_micros(1),
            }),
        }]),
    );
    update(
        &mut app,
        Msg::Queues(vec![QueueStats {
            name: "emails".into(),
            waiting: vec![(Priority::HIGH, 3), (Priority::NORMAL, 10)],
            ready: 13,
            running: 2,
            paused: false,
            limit: Some(10_000),
            concurrency: Some(4),
        }]),
    );
    keys(&mut app, &[Key::Char('1')]);
    let s = screen(&app, 130, 8);
    for want in [
        "gpu-box",
        "3/4",
        "0.90",
        "2.25>1.5",
        "3.0G",
        "40.0G",
        "gpu, os=linux",
        "shell, resize",
    ] {
        assert!(s.contains(want), "{want:?} missing in\n{s}");
    }
    keys(&mut app, &[Key::Char('3')]);
    let s = screen(&app, 100, 8);
    for want in ["emails", "13", "2/4", "10000", "high 3, normal 10"] {
        assert!(s.contains(want), "{want:?} missing in\n{s}");
    }
    keys(&mut app, &[Key::Char('2')]);
    update(&mut app, submitted(1, id(5)));
    keys(&mut app, &[Key::Char('c')]);
    let s = screen(&app, 120, 8);
    assert!(s.contains(&format!("cancel {}? y = yes", id(5))), "{s}");
    update(&mut app, Msg::Disconnected("connection refused".into()));
    let s = screen(&app, 120, 8);
    assert!(s.contains("reconnecting (connection refused)"), "{s}");
}

/// A task whose shell command is `command`, as a listing or a read shows it.
fn view_with(task: TaskId, state: State, command: ShellCommand) -> TaskView {
    let mut v = view(task, state, &["placeholder"]);
    v.spec.kind = Kind::Shell(ShellSpec {
        command,
        env: vec![],
        cwd: None,
    });
    v
}

fn python(code: &str) -> ShellCommand {
    ShellCommand::Argv(vec!["python3".into(), "-c".into(), code.into()])
}

#[test]
fn a_multi_line_command_is_one_row_of_the_list_with_its_breaks_shown() {
    let mut app = App::new();
    let (a, b) = (id(1), id(2));
    update(
        &mut app,
        Msg::Tasks {
            tasks: vec![
                view_with(a, State::Queued, python("import time\nb=bytearray(10)")),
                view_with(
                    b,
                    State::Queued,
                    ShellCommand::Script("echo one\r\n\techo two".into()),
                ),
            ],
            done: true,
        },
    );
    let s = screen(&app, 140, 12);
    let row = |t: TaskId| {
        s.lines()
            .find(|l| l.contains(&t.to_string()))
            .unwrap_or_else(|| panic!("no row of {t} in\n{s}"))
    };
    assert!(
        row(a).contains("python3 -c import time ⏎ b=bytearray(10)"),
        "{s}"
    );
    assert!(row(b).contains(r#"sh -c "echo one ⏎  echo two""#), "{s}");
    assert_eq!(s.matches("bytearray").count(), 1, "one row each\n{s}");
}

#[test]
fn an_open_multi_line_command_shows_on_its_own_lines() {
    let mut app = App::new();
    let t = id(3);
    update(&mut app, submitted(1, t));
    keys(&mut app, &[Key::Enter]);
    update(
        &mut app,
        Msg::Detail(Box::new(TaskDetail {
            task: view_with(t, State::Running, python("import time\nb=bytearray(10)")),
            attempts: vec![],
        })),
    );
    let s = screen(&app, 100, 20);
    let rows: Vec<&str> = s.lines().collect();
    let at = rows
        .iter()
        .position(|l| l.contains("what     python3 -c import time"))
        .unwrap_or_else(|| panic!("no what line in\n{s}"));
    let column = rows[at].find("python3").unwrap_or_default();
    assert_eq!(
        rows[at + 1].find("b=bytearray(10)"),
        Some(column),
        "the second line under the first\n{s}"
    );
    assert!(!s.contains('⏎'), "{s}");
}

#[test]
fn a_long_command_leaves_room_for_the_output() {
    let mut app = App::new();
    let t = id(4);
    update(&mut app, submitted(1, t));
    keys(&mut app, &[Key::Enter]);
    let script: Vec<String> = (1..=40).map(|n| format!("echo {n}")).collect();
    update(
        &mut app,
        Msg::Detail(Box::new(TaskDetail {
            task: view_with(t, State::Running, ShellCommand::Script(script.join("\n"))),
            attempts: vec![],
        })),
    );
    let chunk = OutputEntry {
        seq: 1,
        attempt: 1,
        stream: Stream::Stdout,
        data: "the output\n".into(),
    };
    update(&mut app, Msg::Output { id: t, chunk });
    let s = screen(&app, 100, 24);
    for want in [r#"sh -c "echo 1"#, "more lines", "the output"] {
        assert!(s.contains(want), "{want:?} missing in\n{s}");
    }
    assert!(!s.contains("echo 40"), "{s}");
}

#[test]
fn errors_names_and_messages_keep_their_breaks_visible_on_one_line() {
    let mut app = App::new();
    let t = id(5);
    update(&mut app, submitted(1, t));
    update(
        &mut app,
        event(
            2,
            t,
            EventKind::State {
                from: State::Running,
                to: State::Failed,
                attempt: 1,
                error: Some(TaskFailure::new(
                    FailureCode::Error,
                    "Traceback:\n  KeyError",
                )),
                result: None,
            },
        ),
    );
    update(
        &mut app,
        Msg::Error("cancel: refused\nby the server".into()),
    );
    keys(&mut app, &[Key::Char('4')]);
    let s = screen(&app, 120, 8);
    for want in [
        "Traceback: ⏎   KeyError",
        "error: cancel: refused ⏎ by the server",
    ] {
        assert!(s.contains(want), "{want:?} missing in\n{s}");
    }
    update(
        &mut app,
        Msg::Workers(vec![WorkerView {
            id: WorkerId::new("box"),
            labels: vec![("zone".into(), "eu\tnorth".into())],
            handlers: vec![],
            shell: true,
            container: false,
            slots: 1,
            prefetch: 0,
            used: 0,
            trust: 1.0,
            running: vec![],
            memory_bytes: None,
            cpus: None,
            max_load: None,
            health: None,
        }]),
    );
    keys(&mut app, &[Key::Char('1')]);
    let s = screen(&app, 120, 8);
    assert!(s.contains("zone=eu north"), "{s}");
}

/// The clock of the schedule tests: 2023-11-14 22:13:20Z.
const NOW_S: u64 = 1_700_000_000;

fn at_s(secs: u64) -> Timestamp {
    Timestamp::from_micros(secs * 1_000_000)
}

/// An active schedule `name`: a cron expression, or an interval.
fn schedule(name: &str, cron: Option<&str>, every_ms: Option<u64>) -> ScheduleInfo {
    ScheduleInfo {
        name: name.into(),
        definition: ScheduleRequest {
            name: Some(name.into()),
            cron: cron.map(Into::into),
            every_ms,
            phase_ms: None,
            tz: None,
            jitter_ms: None,
            start: None,
            end: None,
            max_runs: None,
            overlap: Overlap::Skip,
            catch_up_ms: Some(60_000),
            task: SubmitRequest::shell(["backup.sh", "--all"]),
        },
        created_at: at_s(NOW_S - 86_400),
        updated_at: at_s(NOW_S - 86_400),
        paused: false,
        note: None,
        runs: 0,
        cursor: at_s(NOW_S),
        buffered: vec![],
        live: vec![],
        last_task: None,
        next: Some(at_s(NOW_S + 300)),
        next_due: Some(at_s(NOW_S + 300)),
        upcoming: vec![at_s(NOW_S + 300), at_s(NOW_S + 86_700)],
    }
}

/// `backup` (cron, active, a live task) and `heartbeat` (every 5m,
/// paused with a note), in name order.
fn two_schedules() -> Vec<ScheduleInfo> {
    let mut backup = schedule("backup", Some("0 3 * * *"), None);
    backup.definition.tz = Some("Europe/Paris".into());
    backup.runs = 3;
    backup.live = vec![id(9)];
    backup.last_task = Some(id(9));
    let mut heartbeat = schedule("heartbeat", None, Some(300_000));
    heartbeat.paused = true;
    heartbeat.note = Some("maintenance".into());
    heartbeat.runs = 12;
    heartbeat.next = None;
    heartbeat.next_due = None;
    heartbeat.upcoming = vec![];
    vec![backup, heartbeat]
}

fn fire(at: u64, outcome: FireOutcome) -> FireRecord {
    FireRecord {
        schedule: "backup".into(),
        at: at_s(at),
        fired_at: at_s(at),
        outcome,
        task: None,
        reason: None,
        until: None,
        count: 1,
        manual: false,
    }
}

/// The row of the screen that holds `text`.
fn row_of<'a>(s: &'a str, text: &str) -> &'a str {
    s.lines()
        .find(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no row with {text:?} in\n{s}"))
}

#[test]
fn the_schedules_tab_lists_schedules_with_spec_state_and_next_fire() {
    let mut app = App::new();
    update(&mut app, Msg::Now(at_s(NOW_S)));
    assert!(update(&mut app, Msg::Schedules(two_schedules())).is_empty());
    keys(&mut app, &[Key::Char('5')]);
    assert_eq!(app.tab(), Tab::Schedules);
    let s = screen(&app, 120, 10);
    for want in [
        "5 Schedules (2)",
        "next fire",
        "last task",
        "p pause/resume",
    ] {
        assert!(s.contains(want), "{want:?} missing in\n{s}");
    }
    let backup = row_of(&s, "backup");
    let last = id(9).to_string();
    for want in [
        "0 3 * * * Europe/Paris",
        "active",
        "in 5m",
        " 3 ",
        " 1 ",
        &last[last.len() - 12..],
    ] {
        assert!(backup.contains(want), "{want:?} missing in {backup:?}");
    }
    assert!(
        !backup.contains(&last),
        "the end of the id only: {backup:?}"
    );
    let heartbeat = row_of(&s, "heartbeat");
    for want in ["every 5m", "paused: maintenance", " - ", " 12 ", " 0 "] {
        assert!(
            heartbeat.contains(want),
            "{want:?} missing in {heartbeat:?}"
        );
    }
    assert!(!heartbeat.contains("in "), "no next fire: {heartbeat:?}");
    // The clock moves on: the same schedule's next fire comes closer.
    update(&mut app, Msg::Now(at_s(NOW_S + 250)));
    let s = screen(&app, 120, 10);
    assert!(row_of(&s, "backup").contains("in 50s"), "{s}");
    // A failed read of the schedules shows like the other refresh errors.
    update(
        &mut app,
        Msg::RefreshFailed("reading schedules: not found".into()),
    );
    assert!(
        screen(&app, 120, 10).contains("error: reading schedules: not found"),
        "{s}"
    );
    update(&mut app, Msg::Workers(vec![]));
    assert_eq!(app.last_error(), None, "cleared by the next good read");
}

#[test]
fn p_pauses_an_active_schedule_and_resumes_a_paused_one() {
    let mut app = App::new();
    update(&mut app, Msg::Schedules(two_schedules()));
    assert!(
        keys(&mut app, &[Key::Char('p'), Key::Char('t')]).is_empty(),
        "only on the Schedules tab"
    );
    keys(&mut app, &[Key::Char('5')]);
    assert_eq!(app.selected_schedule(), Some("backup"));
    assert_eq!(
        keys(&mut app, &[Key::Char('p')]),
        [Effect::PauseSchedule("backup".into())]
    );
    assert_eq!(app.notice.as_deref(), Some("pausing backup…"));
    assert_eq!(
        keys(&mut app, &[Key::Down, Key::Char('p')]),
        [Effect::ResumeSchedule("heartbeat".into())]
    );
    // The answer updates the row at once and refreshes.
    let mut paused = two_schedules().remove(0);
    paused.paused = true;
    paused.next = None;
    paused.next_due = None;
    assert_eq!(
        update(&mut app, Msg::ScheduleChanged(Box::new(paused))),
        [Effect::Refresh]
    );
    assert_eq!(app.notice.as_deref(), Some("paused backup"));
    assert!(app.schedules[0].paused);
    assert_eq!(
        keys(&mut app, &[Key::Up, Key::Char('p')]),
        [Effect::ResumeSchedule("backup".into())],
        "paused now: p resumes it"
    );
    // A failed action shows in the status line until Esc.
    update(
        &mut app,
        Msg::Error("resume backup: no schedule backup (not_found, HTTP 404)".into()),
    );
    let s = screen(&app, 120, 10);
    assert!(
        s.contains("error: resume backup: no schedule backup"),
        "{s}"
    );
    update(&mut app, Msg::Schedules(two_schedules()));
    assert!(app.last_error().is_some(), "kept until Esc");
    keys(&mut app, &[Key::Esc]);
    assert_eq!(app.last_error(), None);
}

#[test]
fn t_triggers_the_selected_schedule_and_its_answer_refreshes() {
    let mut app = App::new();
    update(&mut app, Msg::Schedules(two_schedules()));
    keys(&mut app, &[Key::Char('5'), Key::Down]);
    assert_eq!(
        keys(&mut app, &[Key::Char('t')]),
        [Effect::TriggerSchedule("heartbeat".into())]
    );
    let mut f = fire(NOW_S, FireOutcome::Submitted);
    f.schedule = "heartbeat".into();
    f.task = Some(id(7));
    f.manual = true;
    assert_eq!(
        update(
            &mut app,
            Msg::Triggered {
                name: "heartbeat".into(),
                fires: vec![f],
            }
        ),
        [Effect::Refresh]
    );
    let s = screen(&app, 120, 10);
    assert!(
        s.contains(&format!("triggered heartbeat: submitted {}", id(7))),
        "{s}"
    );
    // A fire that ran nothing says why.
    let mut skipped = fire(NOW_S, FireOutcome::Skipped);
    skipped.reason = Some("task still live".into());
    update(
        &mut app,
        Msg::Triggered {
            name: "backup".into(),
            fires: vec![skipped],
        },
    );
    assert_eq!(
        app.notice.as_deref(),
        Some("triggered backup: skipped: task still live")
    );
}

#[test]
fn enter_opens_the_schedule_panel_and_its_read_renders_fires_and_gates() {
    let mut app = App::new();
    update(&mut app, Msg::Now(at_s(NOW_S)));
    update(&mut app, Msg::Schedules(two_schedules()));
    keys(&mut app, &[Key::Char('5')]);
    assert_eq!(
        keys(&mut app, &[Key::Enter]),
        [Effect::OpenSchedule("backup".into())]
    );
    assert_eq!(app.open_schedule(), Some("backup"));
    assert!(keys(&mut app, &[Key::Enter]).is_empty(), "already open");
    // Until it is read, the panel shows what the list knows.
    let s = screen(&app, 140, 30);
    assert!(s.contains("schedule backup"), "{s}");
    assert!(
        row_of(&s, "fires").contains("loading…"),
        "fires not read yet\n{s}"
    );
    assert!(s.contains("2023-11-14 22:18:20Z, in 5m"), "{s}");

    let info = two_schedules().remove(0);
    let mut submitted = fire(NOW_S - 3_600, FireOutcome::Submitted);
    submitted.task = Some(id(9));
    submitted.manual = true;
    let mut skipped = fire(NOW_S - 7_200, FireOutcome::Skipped);
    skipped.reason = Some("previous task still live".into());
    let mut missed = fire(NOW_S - 90_000, FireOutcome::Missed);
    missed.count = 3;
    missed.until = Some(at_s(NOW_S - 86_400));
    missed.reason = Some("coordinator down".into());
    let detail = ScheduleDetail {
        schedule: info,
        fires: vec![submitted, skipped, missed],
        gates: vec![ScheduleGate::Overlap {
            policy: Overlap::Skip,
            task: id(9),
        }],
    };
    // A late read of another schedule is not shown.
    let mut other = detail.clone();
    other.schedule = two_schedules().remove(1);
    update(&mut app, Msg::Schedule(Box::new(other)));
    assert!(
        app.schedule_panel
            .as_ref()
            .is_some_and(|p| p.detail.is_none())
    );
    update(&mut app, Msg::Schedule(Box::new(detail)));
    let s = screen(&app, 140, 30);
    let task = id(9).to_string();
    let submitted = row_of(&s, "submitted");
    assert!(
        submitted.contains("2023-11-14 21:13:20Z, 1h ago")
            && submitted.contains("(manual)")
            && submitted.contains(&task),
        "{submitted:?}"
    );
    assert!(
        row_of(&s, "2h ago  skipped").contains("previous task still live"),
        "{s}"
    );
    let missed = row_of(&s, "missed 3");
    assert!(
        missed.contains("until 2023-11-13 22:13:20Z") && missed.contains("coordinator down"),
        "{missed:?}"
    );
    assert!(
        row_of(&s, "held back").contains(&format!(
            "task {task} is still live: the next fire will be skipped"
        )),
        "{s}"
    );
    for want in [
        "0 3 * * * Europe/Paris · overlap skip · runs 3",
        "default: backup.sh --all",
        "2023-11-15 22:18:20Z, in 1d",
        "Esc close",
    ] {
        assert!(s.contains(want), "{want:?} missing in\n{s}");
    }
    // The panel follows the selection; Esc closes it, and so does a tab.
    assert_eq!(
        keys(&mut app, &[Key::Down]),
        [Effect::OpenSchedule("heartbeat".into())]
    );
    assert_eq!(keys(&mut app, &[Key::Esc]), [Effect::CloseSchedule]);
    assert_eq!(app.open_schedule(), None);
    assert!(!screen(&app, 140, 30).contains("schedule heartbeat"));
    keys(&mut app, &[Key::Enter]);
    assert_eq!(keys(&mut app, &[Key::Char('2')]), [Effect::CloseSchedule]);
    assert_eq!(app.open_schedule(), None);
}

#[test]
fn the_selection_stays_on_its_schedule_and_a_gone_one_closes_its_panel() {
    let mut app = App::new();
    let named = |names: &[&str]| -> Vec<ScheduleInfo> {
        names
            .iter()
            .map(|n| schedule(n, Some("* * * * *"), None))
            .collect()
    };
    update(&mut app, Msg::Schedules(named(&["b", "c"])));
    keys(&mut app, &[Key::Char('5'), Key::Down, Key::Enter]);
    assert_eq!(app.open_schedule(), Some("c"));
    // A schedule added before it does not move an action onto another.
    update(&mut app, Msg::Schedules(named(&["a", "b", "c"])));
    assert_eq!(app.selected_schedule(), Some("c"));
    assert_eq!(
        keys(&mut app, &[Key::Char('t')]),
        [Effect::TriggerSchedule("c".into())]
    );
    // Deleted elsewhere: its panel closes.
    assert_eq!(
        update(&mut app, Msg::Schedules(named(&["a", "b"]))),
        [Effect::CloseSchedule]
    );
    assert_eq!(app.open_schedule(), None);
    assert_eq!(app.selected_schedule(), Some("b"));
    assert_eq!(app.notice.as_deref(), Some("schedule c is gone"));
    update(&mut app, Msg::Schedules(vec![]));
    assert_eq!(app.selected_schedule(), None);
    assert!(keys(&mut app, &[Key::Char('p'), Key::Enter]).is_empty());
}
