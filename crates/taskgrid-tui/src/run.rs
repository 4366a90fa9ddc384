//! [`run`]: the event loop around [`update`] and [`draw`].
//!
//! Messages come from four sources over one channel: a thread reading the
//! keyboard, a task following the coordinator's event stream (reconnecting
//! with `Last-Event-ID`), a task reading workers, queues, metrics and
//! schedules (and the open task and the open schedule) every
//! [`REFRESH_INTERVAL`] and right after an action succeeds (they are not
//! in the event stream), with the wall clock that times are shown
//! relative to, and the tasks that carry out [`Effect`]s with the client:
//! cancel, the task listings, pausing, resuming and triggering a schedule.
//! The loop applies every message queued and draws at most once per
//! [`FRAME_INTERVAL`], and only when something changed: a burst of events
//! costs one frame.
//!
//! The terminal is restored when the loop ends, on error, and on panic.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self as term, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use taskgrid_api::{EventFilter, ListQuery};
use taskgrid_client::{Client, ClientError, FollowItem, ServerEvent};
use taskgrid_core::{TaskId, Timestamp, duration_micros};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::state::App;
use crate::update::{Effect, Key, Msg, load_tasks, update};
use crate::view::draw;

/// Shortest time between two frames (at most 20 a second).
pub const FRAME_INTERVAL: Duration = Duration::from_millis(50);
/// How often workers, queues, metrics and schedules are read.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// First wait before reconnecting a broken stream; it doubles up to
/// [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest wait before reconnecting a broken stream.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How long the input thread waits for a key before checking for the end.
const INPUT_POLL: Duration = Duration::from_millis(100);
/// Tasks asked for per listing page.
const PAGE: usize = 1_000;
/// Pages read by one listing at most.
const MAX_PAGES: usize = 200;
/// Messages that may wait for the loop before their senders wait.
const CHANNEL: usize = 4_096;
/// Messages applied in one go before the loop looks at the frame timer.
const BATCH: usize = 1_024;

/// Why the dashboard stopped other than by `q`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The terminal could not be set up, drawn on or read.
    #[error("terminal: {0}")]
    Terminal(#[from] io::Error),
}

/// Runs the dashboard on the terminal until `q`, showing the coordinator
/// `client` talks to. A coordinator that cannot be reached is shown as
/// such and retried; only terminal failures end it with an error.
pub async fn run(client: Client) -> Result<(), Error> {
    let _restore = Restore;
    let mut terminal = ratatui::try_init()?;
    event_loop(&mut terminal, client).await
}

/// Restores the terminal when dropped (the panic hook of
/// [`ratatui::try_init`] restores it on panic).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

async fn event_loop(terminal: &mut DefaultTerminal, client: Client) -> Result<(), Error> {
    let (tx, mut rx) = mpsc::channel(CHANNEL);
    let (input_failed, mut input_error) = oneshot::channel();
    let stop = Arc::new(AtomicBool::new(false));
    spawn_input(tx.clone(), Arc::clone(&stop), input_failed);
    let mut shell = Shell::start(client, tx);
    let mut app = App::new();
    let first = vec![load_tasks(&mut app, None), Effect::Refresh];
    shell.execute(first);
    let mut frame = tokio::time::interval(FRAME_INTERVAL);
    frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let result = loop {
        tokio::select! {
            Some(msg) = rx.recv() => {
                shell.execute(update(&mut app, msg));
                // Apply what else is queued before the next frame, but not
                // forever: a flood must not keep frames and keys waiting.
                for _ in 0..BATCH {
                    let Ok(msg) = rx.try_recv() else { break };
                    shell.execute(update(&mut app, msg));
                    if app.should_quit() {
                        break;
                    }
                }
            }
            _ = frame.tick() => {
                shell.execute(update(&mut app, Msg::Tick));
                shell.reap();
                if app.take_redraw()
                    && let Err(e) = terminal.draw(|f| draw(f, &app)) {
                        break Err(Error::Terminal(e));
                    }
            }
            Ok(e) = &mut input_error => break Err(Error::Terminal(e)),
        }
        if app.should_quit() {
            break Ok(());
        }
    };
    stop.store(true, Ordering::Relaxed);
    shell.stop();
    result
}

/// Carries out effects with the client; owns every background task.
struct Shell {
    client: Client,
    tx: mpsc::Sender<Msg>,
    refresh: Arc<Notify>,
    open: watch::Sender<Option<TaskId>>,
    /// The schedule whose panel is open: read with every refresh.
    open_schedule: watch::Sender<Option<String>>,
    events: JoinHandle<()>,
    refresher: JoinHandle<()>,
    follow: Option<JoinHandle<()>>,
    calls: JoinSet<()>,
}

impl Shell {
    fn start(client: Client, tx: mpsc::Sender<Msg>) -> Self {
        let refresh = Arc::new(Notify::new());
        let (open, open_rx) = watch::channel(None);
        let (open_schedule, schedule_rx) = watch::channel(None);
        let events = tokio::spawn(follow_events(client.clone(), tx.clone()));
        let refresher = tokio::spawn(refresh_views(
            client.clone(),
            tx.clone(),
            Arc::clone(&refresh),
            open_rx,
            schedule_rx,
        ));
        Shell {
            client,
            tx,
            refresh,
            open,
            open_schedule,
            events,
            refresher,
            follow: None,
            calls: JoinSet::new(),
        }
    }

    fn execute(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Cancel(id) => {
                    let (client, tx) = (self.client.clone(), self.tx.clone());
                    self.calls.spawn(async move {
                        let msg = match client.cancel(id).await {
                            Ok(answer) => Msg::Cancelled { id, answer },
                            Err(e) => Msg::Error(format!("cancel {id}: {}", cause(&e))),
                        };
                        let _ = tx.send(msg).await;
                    });
                }
                Effect::OpenDetail(id) => {
                    self.close_detail();
                    self.open.send_replace(Some(id));
                    self.refresh.notify_one();
                    let (client, tx) = (self.client.clone(), self.tx.clone());
                    self.follow = Some(tokio::spawn(follow_output(client, tx, id)));
                }
                Effect::CloseDetail => self.close_detail(),
                Effect::Refresh => self.refresh.notify_one(),
                Effect::LoadTasks { after } => {
                    let (client, tx) = (self.client.clone(), self.tx.clone());
                    self.calls.spawn(list_tasks(client, tx, after));
                }
                Effect::OpenSchedule(name) => {
                    self.open_schedule.send_replace(Some(name));
                    self.refresh.notify_one();
                }
                Effect::CloseSchedule => {
                    self.open_schedule.send_replace(None);
                }
                Effect::PauseSchedule(name) => {
                    self.call(
                        async move |client| match client.pause_schedule(&name, None).await {
                            Ok(info) => Msg::ScheduleChanged(Box::new(info)),
                            Err(e) => Msg::Error(format!("pause {name}: {}", cause(&e))),
                        },
                    )
                }
                Effect::ResumeSchedule(name) => {
                    self.call(
                        async move |client| match client.resume_schedule(&name).await {
                            Ok(info) => Msg::ScheduleChanged(Box::new(info)),
                            Err(e) => Msg::Error(format!("resume {name}: {}", cause(&e))),
                        },
                    )
                }
                Effect::TriggerSchedule(name) => {
                    self.call(
                        async move |client| match client.trigger_schedule(&name).await {
                            Ok(fires) => Msg::Triggered { name, fires },
                            Err(e) => Msg::Error(format!("trigger {name}: {}", cause(&e))),
                        },
                    )
                }
                Effect::Quit => {}
            }
        }
    }

    /// Makes one call with the client in the background and sends its
    /// answer (or its error) to the loop.
    fn call<F>(&mut self, call: impl FnOnce(Client) -> F)
    where
        F: Future<Output = Msg> + Send + 'static,
    {
        let answer = call(self.client.clone());
        let tx = self.tx.clone();
        self.calls.spawn(async move {
            let _ = tx.send(answer.await).await;
        });
    }

    fn close_detail(&mut self) {
        if let Some(f) = self.follow.take() {
            f.abort();
        }
        self.open.send_replace(None);
    }

    /// Forgets calls that have finished.
    fn reap(&mut self) {
        while self.calls.try_join_next().is_some() {}
    }

    fn stop(mut self) {
        self.close_detail();
        self.events.abort();
        self.refresher.abort();
        self.calls.abort_all();
    }
}

/// Reads keys on a thread of its own until `stop`; a read error ends the
/// dashboard through `failed`.
fn spawn_input(tx: mpsc::Sender<Msg>, stop: Arc<AtomicBool>, failed: oneshot::Sender<io::Error>) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let event = match term::poll(INPUT_POLL) {
                Ok(false) => continue,
                Ok(true) => term::read(),
                Err(e) => Err(e),
            };
            let msg = match event {
                Ok(term::Event::Key(k)) => key_of(k).map(Msg::Key),
                Ok(term::Event::Resize(..)) => Some(Msg::Resize),
                Ok(_) => None,
                Err(e) => {
                    let _ = failed.send(e);
                    return;
                }
            };
            if let Some(msg) = msg
                && tx.blocking_send(msg).is_err()
            {
                return;
            }
        }
    });
}

/// The dashboard's key for a terminal key event (presses and repeats).
fn key_of(k: KeyEvent) -> Option<Key> {
    if k.kind == KeyEventKind::Release {
        return None;
    }
    if k.modifiers.contains(KeyModifiers::CONTROL) {
        return (k.code == KeyCode::Char('c')).then_some(Key::CtrlC);
    }
    Some(match k.code {
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        _ => return None,
    })
}

/// Follows the event stream for as long as the dashboard runs, resuming
/// after the last event seen.
async fn follow_events(client: Client, tx: mpsc::Sender<Msg>) {
    let mut last = None;
    let mut backoff = RECONNECT_MIN;
    loop {
        let broke = match client.events(&EventFilter::default(), last).await {
            Ok(mut stream) => {
                backoff = RECONNECT_MIN;
                if tx.send(Msg::Connected).await.is_err() {
                    return;
                }
                loop {
                    let msg = match stream.next().await {
                        Some(Ok(ServerEvent::Task(ev))) => {
                            last = Some(ev.seq);
                            Msg::Event(ev)
                        }
                        Some(Ok(ServerEvent::Reset(_))) => Msg::Reset,
                        Some(Err(e)) => break cause(&e),
                        None => break "the coordinator closed the stream".to_owned(),
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => cause(&e),
        };
        if tx.send(Msg::Disconnected(broke)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Reads workers, queues, metrics, schedules, the open task and the open
/// schedule every [`REFRESH_INTERVAL`] and when `now` is notified, and
/// sends the wall clock first.
async fn refresh_views(
    client: Client,
    tx: mpsc::Sender<Msg>,
    now: Arc<Notify>,
    open: watch::Receiver<Option<TaskId>>,
    open_schedule: watch::Receiver<Option<String>>,
) {
    let mut every = tokio::time::interval(REFRESH_INTERVAL);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = now.notified() => {}
        }
        let (workers, queues, metrics, schedules) = tokio::join!(
            client.workers(),
            client.queues(),
            client.metrics(),
            client.schedules()
        );
        let id = *open.borrow();
        let detail = match id {
            Some(id) => Some(
                client
                    .get(id)
                    .await
                    .map(|d| Msg::Detail(Box::new(d)))
                    .map_err(|e| cause(&e)),
            ),
            None => None,
        };
        let name = open_schedule.borrow().clone();
        let schedule = match name {
            Some(name) => Some(
                client
                    .schedule(&name)
                    .await
                    .map(|d| Msg::Schedule(Box::new(d)))
                    .map_err(|e| format!("schedule {name}: {}", cause(&e))),
            ),
            None => None,
        };
        if tx.send(Msg::Now(wall_clock())).await.is_err() {
            return;
        }
        let results = [
            workers.map(Msg::Workers).map_err(|e| cause(&e)),
            queues.map(Msg::Queues).map_err(|e| cause(&e)),
            metrics
                .map(|m| Msg::Metrics(Box::new(m)))
                .map_err(|e| cause(&e)),
            schedules
                .map(Msg::Schedules)
                .map_err(|e| format!("reading schedules: {}", cause(&e))),
        ];
        let mut error = None;
        for r in results.into_iter().chain(detail).chain(schedule) {
            let msg = match r {
                Ok(m) => m,
                Err(e) => {
                    error = Some(e);
                    continue;
                }
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        if let Some(e) = error
            && tx.send(Msg::RefreshFailed(e)).await.is_err()
        {
            return;
        }
    }
}

/// The wall clock (the epoch if it is set before it).
fn wall_clock() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_micros(duration_micros(since))
}

/// Lists the tasks after `after`, page by page.
async fn list_tasks(client: Client, tx: mpsc::Sender<Msg>, after: Option<TaskId>) {
    let mut cursor = after;
    for page_no in 1..=MAX_PAGES {
        let q = ListQuery {
            cursor,
            limit: Some(PAGE),
            ..ListQuery::default()
        };
        let msg = match client.list(&q).await {
            Ok(page) => {
                cursor = page.next_cursor;
                let done = cursor.is_none() || page_no == MAX_PAGES;
                Msg::Tasks {
                    tasks: page.tasks,
                    done,
                }
            }
            Err(e) => Msg::TasksFailed(cause(&e)),
        };
        let last = !matches!(msg, Msg::Tasks { done: false, .. });
        if tx.send(msg).await.is_err() || last {
            return;
        }
    }
}

/// Follows the output of task `id` until it ends, resuming after the last
/// chunk seen when the stream breaks.
async fn follow_output(client: Client, tx: mpsc::Sender<Msg>, id: TaskId) {
    let mut after = 0;
    let mut backoff = RECONNECT_MIN;
    loop {
        match client.follow_output(id, after).await {
            Ok(mut stream) => {
                backoff = RECONNECT_MIN;
                loop {
                    let msg = match stream.next().await {
                        Some(Ok(FollowItem::Chunk(chunk))) => {
                            after = chunk.seq;
                            Msg::Output { id, chunk }
                        }
                        Some(Ok(FollowItem::End(end))) => {
                            let _ = tx.send(Msg::OutputEnd(end)).await;
                            return;
                        }
                        Some(Err(e)) => Msg::Error(format!("output of {id}: {}", cause(&e))),
                        None => break,
                    };
                    let failed = matches!(msg, Msg::Error(_));
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                    if failed {
                        break;
                    }
                }
            }
            Err(e) => {
                let gone = e.status() == Some(404);
                let _ = tx
                    .send(Msg::Error(format!("output of {id}: {}", cause(&e))))
                    .await;
                if gone {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// An error in a few words for the status line: the coordinator's own
/// message, or what a transport failure met (e.g. "cannot connect to
/// http://127.0.0.1:7070: Connection refused"), which the client's error
/// already says once.
fn cause(e: &ClientError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coordinators_own_errors_are_shown_whole() {
        let e = ClientError::Api {
            status: 404,
            code: "not_found".into(),
            message: "no task 0190".into(),
            field: None,
        };
        assert_eq!(cause(&e), "no task 0190 (not_found, HTTP 404)");
    }

    #[test]
    fn terminal_keys_map_to_dashboard_keys() {
        let key = |code, mods| key_of(KeyEvent::new(code, mods));
        assert_eq!(
            key(KeyCode::Char('q'), KeyModifiers::NONE),
            Some(Key::Char('q'))
        );
        assert_eq!(
            key(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(Key::CtrlC)
        );
        assert_eq!(key(KeyCode::Char('x'), KeyModifiers::CONTROL), None);
        assert_eq!(
            key(KeyCode::BackTab, KeyModifiers::SHIFT),
            Some(Key::BackTab)
        );
        assert_eq!(key(KeyCode::F(1), KeyModifiers::NONE), None);
        let mut release = KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(key_of(release), None);
    }
}
