//! The leader's lease: which store may write a schema, and for how long.
//!
//! Two rows: `taskgrid_lease (term, holder, holder_pid)` and
//! `taskgrid_lease_expiry (term, expires_at)`. A store takes the lease when
//! it has lapsed, raising the term by one; a thread with a connection of
//! its own renews the expiry every [`PostgresOptions::renew_every`]; a
//! store that closes cleanly makes it lapse at once. Every write
//! transaction first reads the term row `FOR SHARE` and aborts unless the
//! term is still its own: a standby's takeover needs the row's update lock,
//! so it waits for a write in flight to commit, and every write after it
//! sees the new term. An old leader that wakes up after a pause (SIGSTOP, a
//! long GC, a network partition) commits nothing. The expiry lives apart
//! from the term so that renewals never wait behind the leader's writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Transaction};

use super::pipeline::Op;
use crate::{Cluster, Member, StoreError};

/// Reads the lease row `FOR SHARE` while the term is `$1`: this store
/// still leads, and no takeover can commit until the reading transaction
/// ends. Once the term moved on it fails, dividing by the rows it found
/// (none), which aborts the transaction in the server: in a pipelined
/// batch the statements after it then fail without running, so an old
/// leader takes no row lock a new one could wait for.
const FENCE: &str = "SELECT 1 / count(*)::int FROM \
     (SELECT 1 FROM taskgrid_lease WHERE id = 1 AND term = $1 FOR SHARE) AS current";

/// Whether `e` is the fence's failure: the term moved on.
pub(super) fn is_fenced(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::DIVISION_BY_ZERO)
}

/// How a [`PostgresStore`](super::PostgresStore) takes and keeps the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// How long the lease lasts unless renewed: a standby takes over this
    /// long after the leader stopped renewing (died, paused, cut off).
    pub lease: Duration,
    /// How often the leader renews it, and a standby tries to take it.
    pub renew_every: Duration,
    /// Wait as a standby while another store holds the lease, instead of
    /// failing with [`StoreError::Locked`].
    pub wait: bool,
    /// Where clients and workers reach this coordinator
    /// (`http://HOST:PORT`): recorded with the lease and in the roster, so
    /// that standbys can point them to the leader. Empty: not reachable.
    pub address: String,
}

impl PostgresOptions {
    /// Default lease: 3 s.
    pub const LEASE_DEFAULT: Duration = Duration::from_secs(3);
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            lease: Self::LEASE_DEFAULT,
            renew_every: Self::LEASE_DEFAULT / 3,
            wait: false,
            address: String::new(),
        }
    }
}

/// A held lease.
pub(super) struct Lease {
    term: i64,
    /// Set when a renewal found the term moved on: every write fails.
    lost: Arc<AtomicBool>,
    /// Dropping it stops the renewing thread.
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<JoinHandle<()>>,
    url: String,
    schema: String,
    /// This process, as the lease and the roster name it.
    holder: String,
}

/// One try at the lease: its new term, or `None` while it is held.
///
/// The expiry row is locked first (`FOR UPDATE`), which orders this try
/// against the holder's renewals: a renewal that lands first makes the
/// lease current again, and one that comes after finds the term moved on.
/// Raising the term then needs the term row's update lock, so it waits for
/// the old holder's write in flight, and every write after it is fenced.
fn try_take(
    client: &mut Client,
    holder: &str,
    pid: i32,
    options: &PostgresOptions,
) -> Result<Option<i64>, StoreError> {
    let mut tx = client.transaction()?;
    let lapsed = tx.query_opt(
        "SELECT term FROM taskgrid_lease_expiry WHERE id = 1 AND expires_at < now() FOR UPDATE",
        &[],
    )?;
    if lapsed.is_none() {
        return Ok(None);
    }
    let row = tx.query_one(
        "UPDATE taskgrid_lease SET term = term + 1, holder = $1, holder_pid = $2, address = $3 \
         WHERE id = 1 RETURNING term",
        &[&holder, &pid, &options.address],
    )?;
    let term = get::<i64>(&row, 0)?;
    tx.execute(
        "UPDATE taskgrid_lease_expiry SET term = $1, \
         expires_at = now() + $2 * interval '1 millisecond' WHERE id = 1",
        &[&term, &millis(options.lease)],
    )?;
    tx.commit()?;
    Ok(Some(term))
}

/// Column `i` of a lease row; a value of the wrong type is corrupt data.
fn get<'a, T: postgres::types::FromSql<'a>>(
    row: &'a postgres::Row,
    i: usize,
) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("the lease row, column {i}: {e}")))
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Lease {
    /// Takes the lease of the schema `client` works in, waiting as a
    /// standby with `options.wait`.
    pub(super) fn take(
        client: &mut Client,
        url: &str,
        schema: &str,
        options: &PostgresOptions,
    ) -> Result<Lease, StoreError> {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let pid = std::process::id();
        let mut holder = if host.is_empty() {
            format!("pid {pid}")
        } else {
            format!("pid {pid} on {host}")
        };
        // Stores of one process (tests, embedders) are each a holder.
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nth = OPENED.fetch_add(1, Ordering::Relaxed);
        if nth > 0 {
            holder = format!("{holder} (store {})", nth + 1);
        }
        let pid = i32::try_from(pid).unwrap_or(i32::MAX);
        // Two rows: the term, which every write reads FOR SHARE (so a
        // takeover waits for a write in flight), and its expiry, which the
        // renewals update — apart, so that a renewal never waits behind
        // its own leader's writes.
        client.batch_execute(
            "CREATE TABLE IF NOT EXISTS taskgrid_lease (
                id          integer     NOT NULL PRIMARY KEY CHECK (id = 1),
                term        bigint      NOT NULL,
                holder      text        NOT NULL,
                holder_pid  integer     NOT NULL
            );
            CREATE TABLE IF NOT EXISTS taskgrid_lease_expiry (
                id          integer     NOT NULL PRIMARY KEY CHECK (id = 1),
                term        bigint      NOT NULL,
                expires_at  timestamptz NOT NULL
            );
            ALTER TABLE taskgrid_lease ADD COLUMN IF NOT EXISTS address text NOT NULL DEFAULT '';
            INSERT INTO taskgrid_lease VALUES (1, 0, '', 0) ON CONFLICT DO NOTHING;
            INSERT INTO taskgrid_lease_expiry VALUES (1, 0, '-infinity') ON CONFLICT DO NOTHING;
            CREATE TABLE IF NOT EXISTS taskgrid_coordinators (
                holder      text        NOT NULL PRIMARY KEY,
                address     text        NOT NULL,
                expires_at  timestamptz NOT NULL
            );",
        )?;
        // A leader that steps down says so on this channel: a standby takes
        // over at once instead of at its next try.
        let channel = format!("taskgrid_lease_{schema}");
        if options.wait {
            client.batch_execute(&format!("LISTEN {channel}"))?;
        }
        let mut waiting = false;
        let term = loop {
            if let Some(term) = try_take(client, &holder, pid, options)? {
                break term;
            }
            let current = client.query_opt(
                "SELECT term, holder, holder_pid FROM taskgrid_lease WHERE id = 1",
                &[],
            )?;
            let (term, who, their_pid) = match current {
                Some(r) => (
                    get::<i64>(&r, 0)?,
                    get::<String>(&r, 1)?,
                    get::<i32>(&r, 2)?,
                ),
                None => (0, String::new(), 0),
            };
            if options.wait {
                // In the roster: the leader lists its standbys.
                present(client, &holder, options)?;
            }
            if !options.wait {
                return Err(StoreError::Locked {
                    dir: format!("{} (schema {schema})", super::redact(url)),
                    lock_file: format!("the leader's lease, term {term}, held by {who}"),
                    pid: u32::try_from(their_pid).ok(),
                });
            }
            if !waiting {
                waiting = true;
                tracing::warn!(term, holder = %who, "standby: another coordinator leads; waiting for its lease");
                eprintln!(
                    "standby: {} (schema {schema}) is led by {who} (term {term}); taking over when its lease lapses",
                    super::redact(url)
                );
            }
            // Try again when the leader steps down, or its lease may have
            // lapsed (a leader that died says nothing).
            let _ = client
                .notifications()
                .timeout_iter(options.renew_every / 2)
                .next();
        };
        if options.wait {
            client.batch_execute(&format!("UNLISTEN {channel}"))?;
        }
        if let Err(e) = present(client, &holder, options) {
            tracing::debug!(error = %e, "could not update the coordinators' roster");
        }
        tracing::info!(term, "took the leader's lease");
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let mut renewal = super::connect(url, schema)?;
        // A renewal that cannot finish within the lease is no renewal: fail
        // it (and, past the lease, give the lease up) rather than hang.
        renewal.batch_execute(&format!(
            "SET statement_timeout = {}",
            options.lease.as_millis().max(1)
        ))?;
        let renewer = {
            let lost = lost.clone();
            let (holder, options) = (holder.clone(), options.clone());
            std::thread::Builder::new()
                .name("taskgrid-pg-lease".to_owned())
                .spawn(move || renew(&mut renewal, term, &holder, &options, &lost, &stopped))?
        };
        Ok(Lease {
            term,
            lost,
            stop: Some(stop),
            renewer: Some(renewer),
            url: url.to_owned(),
            schema: schema.to_owned(),
            holder,
        })
    }

    /// Stops renewing without letting go: as if this process were paused.
    #[cfg(test)]
    pub(super) fn stop_renewing(&mut self) {
        drop(self.stop.take());
        if let Some(r) = self.renewer.take() {
            let _ = r.join();
        }
    }

    pub(super) fn term(&self) -> u64 {
        u64::try_from(self.term).unwrap_or(0)
    }

    /// Fails the transaction unless this lease's term is still current;
    /// holds a share lock on the lease row until it ends.
    pub(super) fn fence(&self, tx: &mut Transaction<'_>) -> Result<(), StoreError> {
        self.not_lost()?;
        match tx.query_one(FENCE, &[&self.term]) {
            Ok(_) => Ok(()),
            Err(e) if is_fenced(&e) => Err(self.lose()),
            Err(e) => Err(e.into()),
        }
    }

    /// The fence as the first statement of a pipelined batch: it fails
    /// ([`is_fenced`]) once the term is no longer this lease's (then
    /// [`lose`](Self::lose) it). Fails at once when a renewal already
    /// found the term moved on.
    pub(super) fn fence_op(&self) -> Result<Op<'static>, StoreError> {
        self.not_lost()?;
        Ok(Op::new(FENCE, vec![Box::new(self.term)]))
    }

    /// Fails at once when a renewal or a fence already found the term
    /// moved on.
    fn not_lost(&self) -> Result<(), StoreError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(StoreError::Fenced { term: self.term() });
        }
        Ok(())
    }

    /// Marks the lease lost (the fence found the term moved on): every
    /// later write fails at once.
    pub(super) fn lose(&self) -> StoreError {
        self.lost.store(true, Ordering::Release);
        StoreError::Fenced { term: self.term() }
    }

    /// Stops renewing and lets the lease lapse at once.
    pub(super) fn release(mut self) {
        drop(self.stop.take());
        if let Some(r) = self.renewer.take() {
            let _ = r.join();
        }
        if let Ok(mut c) = super::connect(&self.url, &self.schema) {
            let _ = c.execute(
                "UPDATE taskgrid_lease_expiry SET expires_at = '-infinity' \
                 WHERE id = 1 AND term = $1",
                &[&self.term],
            );
            let _ = c.execute(
                "DELETE FROM taskgrid_coordinators WHERE holder = $1",
                &[&self.holder],
            );
            let _ = c.batch_execute(&format!("NOTIFY taskgrid_lease_{}", self.schema));
        }
    }
}

/// The renewing thread: renews every `renew_every` until told to stop, and
/// marks the lease lost when the term moved on (or a renewal failed for
/// longer than the lease).
fn renew(
    client: &mut Client,
    term: i64,
    holder: &str,
    options: &PostgresOptions,
    lost: &AtomicBool,
    stop: &mpsc::Receiver<()>,
) {
    let mut last_ok = std::time::Instant::now();
    loop {
        match stop.recv_timeout(options.renew_every) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        match client.execute(
            "UPDATE taskgrid_lease_expiry \
             SET expires_at = now() + $2 * interval '1 millisecond' \
             WHERE id = 1 AND term = $1",
            &[&term, &millis(options.lease)],
        ) {
            Ok(1) => {
                last_ok = std::time::Instant::now();
                // The roster is for people: a failure here is no lost lease.
                if let Err(e) = present(client, holder, options) {
                    tracing::debug!(error = %e, "could not update the coordinators' roster");
                }
            }
            Ok(_) => {
                tracing::error!(
                    term,
                    "lost the leader's lease: another coordinator took over"
                );
                lost.store(true, Ordering::Release);
                return;
            }
            Err(e) if last_ok.elapsed() > options.lease => {
                tracing::error!(term, error = %e, "could not renew the leader's lease in time");
                lost.store(true, Ordering::Release);
                return;
            }
            Err(e) => {
                tracing::warn!(term, error = %e, "renewing the leader's lease failed; retrying")
            }
        }
    }
}

/// Says in the roster that `holder` is alive at `options.address` for
/// another lease, and forgets those that have not said so for a minute.
fn present(client: &mut Client, holder: &str, options: &PostgresOptions) -> Result<(), StoreError> {
    client.execute(
        "INSERT INTO taskgrid_coordinators (holder, address, expires_at) \
         VALUES ($1, $2, now() + $3 * interval '1 millisecond') \
         ON CONFLICT (holder) DO UPDATE SET address = EXCLUDED.address, expires_at = EXCLUDED.expires_at",
        &[&holder, &options.address, &millis(options.lease)],
    )?;
    client.execute(
        "DELETE FROM taskgrid_coordinators WHERE expires_at < now() - interval '1 minute'",
        &[],
    )?;
    Ok(())
}

/// Who leads the store `client` works in and who stands by, from the lease
/// and the roster.
pub(super) fn cluster(client: &mut Client) -> Result<Cluster, StoreError> {
    let lease = client.query_opt(
        "SELECT l.term, l.holder, l.address, e.expires_at > now() \
         FROM taskgrid_lease l JOIN taskgrid_lease_expiry e ON e.id = l.id WHERE l.id = 1",
        &[],
    )?;
    let Some(lease) = lease else {
        return Ok(Cluster::default());
    };
    let term = u64::try_from(get::<i64>(&lease, 0)?).unwrap_or(0);
    let holder = get::<String>(&lease, 1)?;
    let leader = get::<bool>(&lease, 3)?.then(|| Member {
        holder: holder.clone(),
        address: get::<String>(&lease, 2).unwrap_or_default(),
    });
    let mut standbys = Vec::new();
    for r in client.query(
        "SELECT holder, address FROM taskgrid_coordinators \
         WHERE expires_at > now() AND holder <> $1 ORDER BY holder",
        &[&holder],
    )? {
        standbys.push(Member {
            holder: get::<String>(&r, 0)?,
            address: get::<String>(&r, 1)?,
        });
    }
    Ok(Cluster {
        term,
        leader,
        standbys,
    })
}
