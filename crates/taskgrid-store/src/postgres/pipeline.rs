//! The write connection, pipelined: a commit is one round trip, or two,
//! never one or two per statement.
//!
//! The statements of a batch (`BEGIN`, the lease's fence, one bulk
//! statement per kind of change) are prepared once per connection and
//! sent together; PostgreSQL runs them in order and answers each. A
//! statement that fails in the server aborts the transaction, so every
//! statement after it fails too, and the batch is rolled back whole, as
//! one by one.
//!
//! In one round trip ([`WriteConn::run_and_commit`]) the `COMMIT` goes
//! with them, so every check must fail in the server: each statement
//! whose rows must be counted is sent in a form that fails unless it
//! touched one row per element of its first array ([`counted`]). In
//! two ([`WriteConn::run`]), the caller checks the answers in order (rows
//! touched against rows meant), then sends `COMMIT`, or `ROLLBACK` at the
//! first answer that is wrong: for a commit that must wait for its turn
//! first, and to say which task a counted statement missed.
//!
//! This is `tokio-postgres` on a single-threaded runtime of its own: the
//! caller (the group-commit writer's thread) blocks on each flight, as it
//! did on the blocking client, and the connection is driven only then.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;

use futures_util::future::{join, join_all};
use postgres::Row;
use postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::StoreError;

/// How long a write waits for a row lock before its commit fails.
const LOCK_TIMEOUT_MS: u32 = 10_000;

/// One statement of a batch, with the values it binds.
pub(super) struct Op<'a> {
    sql: &'static str,
    params: Vec<Param<'a>>,
}

/// A value a statement binds.
pub(super) type Param<'a> = Box<dyn ToSql + Sync + 'a>;

impl<'a> Op<'a> {
    /// A statement binding `params`, in order.
    pub(super) fn new(sql: &'static str, params: Vec<Param<'a>>) -> Op<'a> {
        Op { sql, params }
    }

    /// The values it binds, as the client takes them.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| &**p as &(dyn ToSql + Sync))
            .collect()
    }
}

/// Statement `sql` in the form that fails in the server unless it touched
/// (`RETURNING`) one row for each element of its first parameter, an
/// array: with an `invalid_text_representation` error ([`is_miscounted`])
/// whose message says how many of how many. A failed statement aborts its
/// transaction, so a `COMMIT` sent in the same flight rolls it back.
fn counted(sql: &str) -> String {
    format!(
        "WITH touched AS ({sql}) SELECT CASE WHEN count(*) = cardinality($1) THEN 0 \
         ELSE ('taskgrid: touched ' || count(*) || ' rows of ' || cardinality($1))::int END \
         FROM touched"
    )
}

/// Whether `e` is a counted statement's failure ([`counted`]): it
/// touched fewer or more rows than it was given.
pub(super) fn is_miscounted(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::INVALID_TEXT_REPRESENTATION)
}

/// What one flight of [`WriteConn::run_and_commit`] answered.
pub(super) struct Flown {
    /// Each statement's answer, in order. If one is an error, the
    /// transaction was rolled back: aborted in the server, or, for a
    /// statement the client could not send, ended with `ROLLBACK`
    /// instead of `COMMIT`.
    pub(super) answers: Vec<Result<Vec<Row>, postgres::Error>>,
    /// The `COMMIT`'s answer: `Ok` also when an error before it had
    /// aborted the transaction (then it rolled back).
    pub(super) commit: Result<(), postgres::Error>,
}

impl Flown {
    /// The first statement that failed, and why: `None` if the
    /// transaction committed.
    pub(super) fn failed(self) -> Result<Option<(usize, postgres::Error)>, StoreError> {
        if let Some((i, e)) = self
            .answers
            .into_iter()
            .enumerate()
            .find_map(|(i, a)| a.err().map(|e| (i, e)))
        {
            return Ok(Some((i, e)));
        }
        self.commit?;
        Ok(None)
    }
}

/// The connection `apply` writes on.
pub(super) struct WriteConn {
    rt: tokio::runtime::Runtime,
    client: Client,
    /// Statements prepared on this connection, by their text and whether
    /// in their [counted] form.
    prepared: HashMap<(&'static str, bool), Statement>,
    /// A transaction was begun and not ended (a panic in a flight or
    /// between the two): it is rolled back before the next one begins.
    open: bool,
    /// Round trips made (for tests: how many a commit takes).
    #[cfg(test)]
    pub(super) flights: usize,
}

impl WriteConn {
    /// Connects with `config`, with `search_path` set to `schema`.
    pub(super) fn connect(
        config: &tokio_postgres::Config,
        schema: &str,
    ) -> Result<WriteConn, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| StoreError::backend(RuntimeError(e)))?;
        let client = rt.block_on(async {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            // Driven whenever the writer blocks on a flight; it ends when
            // the client is dropped.
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgres write connection closed");
                }
            });
            // Every statement here reaches its rows by key (the batch's
            // task ids, from `UNNEST`ed arrays). Left to itself, the
            // planner joins those arrays by hashing the rows of the whole
            // state (every queued task, say) or of the whole attempts
            // table, per statement: a cost that grows with the table
            // (40 ms for 1,000 rows of a 60,000-row table, 5 ms by key).
            // Without hash and merge joins it looks each row up in its
            // primary key. That plan suits every batch size, so it is made
            // once per statement (a generic plan), not again at every
            // commit for the batch's arrays.
            //
            // Two write connections never wait for each other's rows: the
            // writer gives them groups of different tasks. Were that ever
            // wrong, the one waiting on the other's lock would wait for
            // ever (the other commits only after it): `lock_timeout` turns
            // that into a failed commit.
            client
                .batch_execute(&format!(
                    "SET search_path TO {schema}; \
                     SET enable_hashjoin = off; SET enable_mergejoin = off; \
                     SET plan_cache_mode = force_generic_plan; \
                     SET lock_timeout = '{LOCK_TIMEOUT_MS}ms'"
                ))
                .await?;
            Ok::<_, postgres::Error>(client)
        })?;
        Ok(WriteConn {
            rt,
            client,
            prepared: HashMap::new(),
            open: false,
            #[cfg(test)]
            flights: 0,
        })
    }

    /// One plain statement outside any transaction (for the checks that
    /// come before one: the only writer reads what is committed).
    pub(super) fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.end_open()?;
        let statement = self.prepared(&[(sql, false)])?.remove(0);
        self.flown();
        Ok(self.rt.block_on(self.client.query(&statement, params))?)
    }

    /// Begins a transaction and runs `ops` in it, in one flight; the
    /// answers come back in the order of `ops`. The transaction stays open:
    /// end it with [`commit`](Self::commit) or
    /// [`rollback`](Self::rollback). A failed `BEGIN` is an error.
    pub(super) fn run(
        &mut self,
        ops: &[Op<'_>],
    ) -> Result<Vec<Result<Vec<Row>, postgres::Error>>, StoreError> {
        // A failed `BEGIN` leaves the transaction marked open: the next
        // use of the connection rolls it back (`end_open`).
        Ok(self.flight(ops, None)?.answers)
    }

    /// Begins a transaction, runs `ops` in it and commits it, in one
    /// flight; each op whose `counted` flag is set is sent in its
    /// [counted] form, so that touching a row too few or too many aborts
    /// the transaction in the server. It committed if [`Flown::failed`]
    /// finds no failure.
    pub(super) fn run_and_commit(
        &mut self,
        ops: &[Op<'_>],
        counted: &[bool],
    ) -> Result<Flown, StoreError> {
        self.flight(ops, Some(counted))
    }

    /// `BEGIN`, then `ops`, then, with `counted` (which of them to send
    /// [counted]), `COMMIT`; without, the transaction stays open. One
    /// flight. A failed `BEGIN` is an error.
    fn flight(&mut self, ops: &[Op<'_>], counted: Option<&[bool]>) -> Result<Flown, StoreError> {
        self.end_open()?;
        let commit = counted.is_some();
        let keys: Vec<(&'static str, bool)> = match counted {
            Some(counted) => {
                // A short list would drop ops from a committed transaction.
                assert_eq!(counted.len(), ops.len(), "one flag per op");
                ops.iter()
                    .zip(counted)
                    .map(|(op, &c)| (op.sql, c))
                    .collect()
            }
            None => ops.iter().map(|op| (op.sql, false)).collect(),
        };
        let statements = self.prepared(&keys)?;
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = ops.iter().map(Op::params).collect();
        // Open until the flight is back (a panic in it leaves the
        // transaction to be rolled back before the next one), and after
        // it without the `COMMIT`, until the caller ends it.
        self.open = true;
        self.flown();
        let client = &self.client;
        // A statement the client could not send (its values failed to
        // encode) fails at its first poll without the server knowing:
        // the transaction is then not aborted, and must not commit.
        let unsent = Cell::new(false);
        let ((begun, answers), ended) = self.rt.block_on(async {
            // Polled in order on the first poll: each request is written
            // before any answer is awaited, and the end after them all.
            join(
                join(
                    client.batch_execute("BEGIN"),
                    join_all(statements.iter().zip(&params).map(|(s, p)| {
                        let query = client.query(s, p.as_slice());
                        async {
                            let answer = query.await;
                            if matches!(&answer, Err(e) if e.code().is_none()) {
                                unsent.set(true);
                            }
                            answer
                        }
                    })),
                ),
                async {
                    if !commit {
                        Ok(())
                    } else if unsent.get() {
                        client.batch_execute("ROLLBACK").await
                    } else {
                        client.batch_execute("COMMIT").await
                    }
                },
            )
            .await
        });
        self.open = !commit;
        begun?;
        Ok(Flown {
            answers,
            commit: ended,
        })
    }

    /// Counts a round trip (tests ask how many a commit took).
    fn flown(&mut self) {
        #[cfg(test)]
        {
            self.flights += 1;
        }
    }

    /// Commits the open transaction.
    pub(super) fn commit(&mut self) -> Result<(), StoreError> {
        self.flown();
        let done = self.rt.block_on(self.client.batch_execute("COMMIT"));
        self.open = false;
        Ok(done?)
    }

    /// Rolls the open transaction back.
    pub(super) fn rollback(&mut self) -> Result<(), StoreError> {
        self.flown();
        let done = self.rt.block_on(self.client.batch_execute("ROLLBACK"));
        self.open = false;
        Ok(done?)
    }

    /// The plan PostgreSQL makes for `op` on this connection.
    #[cfg(test)]
    pub(super) fn explain(&mut self, op: &Op<'_>) -> Result<String, StoreError> {
        self.end_open()?;
        let rows = self.rt.block_on(
            self.client
                .query(&format!("EXPLAIN {}", op.sql), &op.params()),
        )?;
        let lines = rows
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(lines.join("\n"))
    }

    /// Rolls back a transaction a panic left open.
    fn end_open(&mut self) -> Result<(), StoreError> {
        if self.open {
            self.rollback()?;
        }
        Ok(())
    }

    /// The statements `keys` (text, and whether [counted]), in order,
    /// preparing those not prepared yet on this connection in one flight.
    fn prepared(&mut self, keys: &[(&'static str, bool)]) -> Result<Vec<Statement>, StoreError> {
        let mut missing: Vec<(&'static str, bool)> = keys
            .iter()
            .copied()
            .filter(|key| !self.prepared.contains_key(key))
            .collect();
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            self.flown();
            let client = &self.client;
            let texts: Vec<Cow<'static, str>> = missing
                .iter()
                .map(|&(sql, c)| if c { counted(sql).into() } else { sql.into() })
                .collect();
            let done = self
                .rt
                .block_on(join_all(texts.iter().map(|sql| client.prepare(sql))));
            for (key, statement) in missing.into_iter().zip(done) {
                self.prepared.insert(key, statement?);
            }
        }
        keys.iter()
            .map(|key| {
                self.prepared.get(key).cloned().ok_or_else(|| {
                    StoreError::Invalid(format!("statement not prepared: {}", key.0))
                })
            })
            .collect()
    }
}

/// The write connection's runtime could not be built.
#[derive(Debug, thiserror::Error)]
#[error("postgres write connection: runtime: {0}")]
struct RuntimeError(std::io::Error);
