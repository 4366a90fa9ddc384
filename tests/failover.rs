//! No single point of failure, shown with real processes: three
//! coordinators on one PostgreSQL database, two workers and a client that
//! know all three, thousands of shell tasks, and the leader killed
//! (kill -9) at random moments again and again, each time restarted as a
//! standby. Afterwards every acknowledged task is in exactly one terminal
//! state, none is lost or stuck, and none has two recorded results. Each
//! failover (kill → the first task assigned by the new leader) is timed and
//! printed; `TASKGRID_FAILOVER_KILLS` sets how many kills (default 10),
//! `TASKGRID_FAILOVER_TASKS` how many tasks (default 10,000),
//! `TASKGRID_FAILOVER_LEASE_MS` the lease (default 1000; the product's
//! default is 3000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use taskgrid_api::SubmitRequest;
use taskgrid_client::Client;
use util::{Server, TempDatabase, worker};

/// Tasks submitted: `TASKGRID_FAILOVER_TASKS`, default 10,000 (more for
/// many kills with a long lease, so that work is left at every kill).
fn tasks() -> usize {
    std::env::var("TASKGRID_FAILOVER_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}
const BATCH: usize = 250;

/// One query on a thread of its own (the blocking client must not run on
/// the test's async threads): its rows, each as text columns.
fn query(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.simple_query(&sql)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect()
    })
    .join()
    .unwrap()
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

fn micros_now() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

/// The lease the coordinators run with, in milliseconds.
fn lease_ms() -> String {
    std::env::var("TASKGRID_FAILOVER_LEASE_MS").unwrap_or_else(|_| "1000".to_owned())
}

/// Starts a coordinator on `listen` for the database at `url`.
fn coordinator(data: &std::path::Path, listen: &str, url: &str) -> Server {
    Server::start(data, listen, &["--store", url, "--lease-ms", &lease_ms()])
}

/// Who leads now, through the client (which follows standbys to it): its
/// address and term, once some coordinator leads at a term above `after`.
async fn leader_after(client: &Client, after: u64) -> (String, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = client.coordinators().await
            && c.term > after
            && let Some(l) = c.leader
        {
            return (l.address, c.term);
        }
        assert!(Instant::now() < deadline, "no leader after term {after}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_survive_repeated_kills_of_the_leader() {
    let kills: usize = std::env::var("TASKGRID_FAILOVER_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(10);
    let db = TempDatabase::new();
    let url = db.url();
    let data = tempfile::tempdir().unwrap();

    // Three coordinators; each keeps its port across restarts, so the
    // URL list workers and clients were given stays true.
    let mut servers: Vec<Server> = Vec::new();
    let mut first = coordinator(data.path(), "127.0.0.1:0", &url);
    assert_eq!(first.await_leading(), 1);
    servers.push(first);
    for _ in 0..2 {
        servers.push(coordinator(data.path(), "127.0.0.1:0", &url));
    }
    let list = servers
        .iter()
        .rev()
        .map(Server::url)
        .collect::<Vec<_>>()
        .join(",");
    // Given in another order than they lead: the client must find the
    // leader itself.
    let client = Client::new(&list, None).unwrap();
    let _workers = [
        worker(&list, "w1", &["--slots", "8"]),
        worker(&list, "w2", &["--slots", "8"]),
    ];

    // Asked at a standby, the CLI is led to the leader, and names it, its
    // term and both standbys (once both are in the roster).
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.coordinators().await.map_or(0, |c| c.standbys.len()) < 2 {
        assert!(
            Instant::now() < deadline,
            "the standbys never joined the roster"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = util::taskgrid()
        .args(["workers", "--server", &servers[2].url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("leader {} ", servers[0].url())) && text.contains("term 1;"),
        "{text}"
    );
    assert!(
        text.contains(&servers[1].url()) && text.contains(&servers[2].url()),
        "{text}"
    );

    // Submit everything in batches while the killer runs.
    let submitter = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut refused = 0usize;
            for _ in 0..tasks() / BATCH {
                let batch = vec![SubmitRequest::shell(["sleep", "0.05"]); BATCH];
                match client.submit_batch(&batch).await {
                    Ok(ids) => acked.extend(ids),
                    // Not acknowledged (the leader died with the request in
                    // flight): it may or may not be stored; nothing is owed.
                    Err(e) => {
                        eprintln!("batch not acknowledged: {e}");
                        refused += 1;
                    }
                }
            }
            (acked, refused)
        })
    };

    let seed = micros_now();
    eprintln!("kill moments seeded with {seed}");
    let mut rng = Lcg(seed);
    let mut failovers = Vec::new();
    let mut term = 0;
    for kill in 0..kills {
        let (address, now) = leader_after(&client, term).await;
        term = now;
        // A random moment of the leader's term.
        tokio::time::sleep(Duration::from_millis(100 + rng.below(900))).await;
        let at = servers
            .iter()
            .position(|s| s.url() == address)
            .unwrap_or_else(|| panic!("the leader {address} is none of ours"));
        let killed_at = micros_now();
        let since = Instant::now();
        servers[at].proc.kill9();
        let listen = servers[at].addr.clone();
        servers[at] = coordinator(data.path(), &listen, &url);
        // The new leader assigns its first task: an attempt assigned after
        // the kill, which only it can have written.
        let first_assigned = loop {
            let rows = query(
                &url,
                &format!("SELECT min(assigned_at) FROM attempts WHERE assigned_at > {killed_at}"),
            );
            if let Some(Some(a)) = rows.first().and_then(|r| r.first()).cloned() {
                break a.parse::<u64>().unwrap();
            }
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "no task assigned within 60 s of kill {kill}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = Duration::from_micros(first_assigned - killed_at);
        eprintln!("kill {}: failover {took:?}", kill + 1);
        failovers.push(took);
    }

    let (acked, refused) = submitter.await.unwrap();
    // Wait until nothing is live.
    let deadline = Instant::now() + Duration::from_secs(300);
    let states = loop {
        let rows = query(&url, "SELECT state, count(*) FROM tasks GROUP BY state");
        let states: BTreeMap<String, u64> = rows
            .into_iter()
            .map(|r| {
                (
                    r[0].clone().unwrap(),
                    r[1].clone().unwrap().parse().unwrap(),
                )
            })
            .collect();
        let live: u64 = states
            .iter()
            .filter(|(s, _)| {
                !matches!(
                    s.as_str(),
                    "succeeded" | "failed" | "cancelled" | "timed_out" | "expired"
                )
            })
            .map(|(_, n)| n)
            .sum();
        if live == 0 {
            break states;
        }
        assert!(Instant::now() < deadline, "tasks stuck: {states:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "{} tasks acknowledged, {refused} batches not; end states {states:?}",
        acked.len()
    );

    // Every acknowledged task is stored, in a terminal state (checked
    // above for all), and succeeded: nobody cancelled anything and every
    // command succeeds, so any other end is a broken promise.
    let stored: BTreeMap<String, String> =
        query(&url, "SELECT encode(id, 'hex'), state FROM tasks")
            .into_iter()
            .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
            .collect();
    let mut seen = HashSet::new();
    for id in &acked {
        let hex = id.to_string().replace('-', "");
        assert!(seen.insert(hex.clone()), "task {id} acknowledged twice");
        match stored.get(&hex) {
            None => panic!("acknowledged task {id} was lost"),
            Some(state) => assert_eq!(state, "succeeded", "task {id}"),
        }
    }
    assert!(
        acked.len() >= tasks() - BATCH * refused,
        "only {} of {} acknowledged",
        acked.len(),
        tasks()
    );
    // No task has two recorded results.
    let doubled = query(
        &url,
        "SELECT encode(task_id, 'hex'), count(*) FROM attempts \
         WHERE outcome = 'succeeded' GROUP BY task_id HAVING count(*) > 1",
    );
    assert!(doubled.is_empty(), "tasks with two results: {doubled:?}");

    failovers.sort();
    let p = |q: f64| failovers[((failovers.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    eprintln!(
        "failover over {} kills (lease {} ms): p50 {:?}, p99 {:?}, max {:?}",
        failovers.len(),
        lease_ms(),
        p(0.5),
        p(0.99),
        failovers[failovers.len() - 1]
    );
}
