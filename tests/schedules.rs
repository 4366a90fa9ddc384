//! Schedules fire exactly once across crashes and failover, shown with real
//! processes: an every-second schedule while the coordinator is killed
//! (kill -9) at random moments, some right after a fire, some just before
//! the next. Afterwards every scheduled second of the run is accounted for
//! exactly once: one fire record with one task, or a missed range that was
//! really older than the catch-up window when it was recorded. On SQLite
//! (restart in place, plus one long outage that must be recorded as
//! missed) and on PostgreSQL with a standby taking over at each kill.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use taskgrid_api::{EventFilter, ScheduleRequest, SubmitRequest};
use taskgrid_client::{Client, ServerEvent};
use taskgrid_core::{FireOutcome, Overlap};
use util::{Server, TempDatabase};

const NAME: &str = "tick";
const KILLS: usize = 10;
const SECOND: u64 = 1_000_000;
/// The schedule's catch-up window.
const CATCH_UP_MS: u64 = 3_000;

fn definition() -> ScheduleRequest {
    ScheduleRequest {
        name: Some(NAME.to_owned()),
        cron: None,
        every_ms: Some(1000),
        phase_ms: None,
        tz: None,
        jitter_ms: None,
        start: None,
        end: None,
        max_runs: None,
        overlap: Overlap::AllowAll,
        catch_up_ms: Some(CATCH_UP_MS),
        task: SubmitRequest::shell(["true"]),
    }
}

/// A small deterministic generator for the kill moments (its seed is
/// printed, so a run can be repeated).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Waits for the next task the schedule submits, on `client`'s coordinator.
async fn next_fire(client: &Client) {
    let filter = EventFilter {
        tag: Some(format!("schedule:{NAME}")),
        ..EventFilter::default()
    };
    let mut events = client.events(&filter, None).await.expect("event stream");
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = events.next().await {
            if let Ok(ServerEvent::Task(t)) = e
                && matches!(t.kind, taskgrid_api::EventKind::Submitted { .. })
            {
                return;
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("the schedule fired within 30 s");
}

/// The moment to kill at: right after a fire, or just before the next.
fn kill_delay(rng: &mut Lcg, i: usize) -> Duration {
    Duration::from_millis(match i % 3 {
        0 => rng.below(30),
        1 => 950 + rng.below(50),
        _ => rng.below(1000),
    })
}

/// Checks the history: every scheduled second from the first fire to the
/// last exactly once, each submitted fire with its own task carrying its
/// scheduled time, each missed range older than the window when recorded.
async fn check_history(client: &Client) -> (usize, u64) {
    let fires = client.schedule_fires(NAME).await.expect("fires");
    let mut seen: BTreeMap<u64, &'static str> = BTreeMap::new();
    let mut missed = 0;
    let mut tasks = BTreeMap::new();
    for f in fires.iter().filter(|f| !f.manual) {
        match f.outcome {
            FireOutcome::Missed => {
                let until = f.until.expect("a missed range has an end").as_micros();
                let at = f.at.as_micros();
                assert_eq!((until - at) / SECOND + 1, f.count, "{f:?}");
                assert!(
                    f.fired_at.as_micros() - until > CATCH_UP_MS * 1000,
                    "a fire within the catch-up window was recorded missed: {f:?}"
                );
                for t in (at..=until).step_by(SECOND as usize) {
                    assert!(seen.insert(t, "missed").is_none(), "{t} twice");
                }
                missed += f.count;
            }
            FireOutcome::Submitted => {
                let at = f.at.as_micros();
                assert!(seen.insert(at, "submitted").is_none(), "fire {at} twice");
                tasks.insert(f.task.expect("a submitted fire has a task"), at);
            }
            other => panic!("an allow-all schedule made a {other:?} fire: {f:?}"),
        }
    }
    let first = *seen.keys().next().expect("fires");
    let last = *seen.keys().last().expect("fires");
    assert_eq!(
        seen.len() as u64,
        (last - first) / SECOND + 1,
        "a scheduled second is missing from the history"
    );
    // Exactly one task per submitted fire, and no task without a fire.
    let page = client
        .list(&taskgrid_api::ListQuery {
            tag: Some(format!("schedule:{NAME}")),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(page.tasks.len(), tasks.len(), "tasks vs submitted fires");
    for t in &page.tasks {
        let at = tasks
            .get(&t.id)
            .unwrap_or_else(|| panic!("task {} has no fire", t.id));
        let secs = i64::try_from(at / SECOND).unwrap();
        let stamp = chrono::DateTime::from_timestamp(secs, 0)
            .unwrap()
            .format("scheduled:%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        assert!(
            t.spec.tags.contains(&stamp),
            "{:?} lacks {stamp}",
            t.spec.tags
        );
    }
    (tasks.len(), missed)
}

fn seed() -> u64 {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("kill moments seed {s}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_second_schedule_fires_once_per_second_through_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let mut rng = Lcg(seed());
    let mut server = Server::start(data.path(), "127.0.0.1:0", &[]);
    let client = server.client(None);
    client
        .put_schedule(NAME, &definition(), false)
        .await
        .expect("schedule created");
    for i in 0..KILLS {
        next_fire(&server.client(None)).await;
        // The chaos: a kill at a random moment of the second.
        std::thread::sleep(kill_delay(&mut rng, i));
        server.proc.kill9();
        if i == KILLS / 2 {
            // A long outage: longer than the catch-up window. Not a wait
            // for anything (the coordinator is dead; no signal can come):
            // the outage itself is what is tested.
            std::thread::sleep(Duration::from_millis(CATCH_UP_MS + 2_500));
        }
        server = Server::start(data.path(), "127.0.0.1:0", &[]);
    }
    next_fire(&server.client(None)).await;
    let (runs, missed) = check_history(&server.client(None)).await;
    println!("{KILLS} kills: {runs} fires ran, {missed} recorded missed");
    assert!(missed >= 1, "the long outage left no missed record");
    assert!(runs >= KILLS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_taking_over_fires_each_second_once() {
    let db = TempDatabase::new();
    let url = db.url();
    let data = tempfile::tempdir().unwrap();
    let mut rng = Lcg(seed());
    let start = |listen: &str| {
        Server::start(
            data.path(),
            listen,
            &["--store", &url, "--lease-ms", "1000"],
        )
    };
    let mut leader = start("127.0.0.1:0");
    leader.await_leading();
    let mut standby = start("127.0.0.1:0");
    let list = format!("{},{}", leader.url(), standby.url());
    let client = Client::new(&list, None).unwrap();
    client
        .put_schedule(NAME, &definition(), false)
        .await
        .expect("schedule created");
    let deadline = Instant::now() + Duration::from_secs(300);
    for i in 0..KILLS {
        next_fire(&client).await;
        // The chaos, not a synchronisation: the kill's moment in the
        // second (the fire itself was waited for above, on its event).
        std::thread::sleep(kill_delay(&mut rng, i));
        let addr = leader.addr.clone();
        leader.proc.kill9();
        // The standby takes over; the killed one comes back as a standby
        // on its port.
        standby.await_leading();
        std::mem::swap(&mut leader, &mut standby);
        standby = start(&addr);
        assert!(Instant::now() < deadline, "too slow");
    }
    next_fire(&client).await;
    let (runs, missed) = check_history(&client).await;
    println!("{KILLS} failovers: {runs} fires ran, {missed} recorded missed");
    assert!(runs >= KILLS);
}
