//! The write connection, pipelined: a commit is two round trips, not one
//! or two per statement.
//!
//! The statements of a batch (`BEGIN`, the lease's fence, one bulk
//! statement per kind of change) are prepared once per connection and
//! sent together; PostgreSQL runs them in order and answers each. The
//! caller checks the answers in that order (rows touched against rows
//! meant), then sends `COMMIT`, or `ROLLBACK` at the first answer that
//! is wrong. A statement that fails in the server aborts the
//! transaction, so every statement after it fails too, and the batch is
//! rolled back whole, as one by one.
//!
//! This is `tokio-postgres` on a single-threaded runtime of its own: the
//! caller (the group-commit writer's thread) blocks on each flight, as it
//! did on the blocking client, and the connection is driven only then.

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

/// The connection `apply` writes on.
pub(super) struct WriteConn {
    rt: tokio::runtime::Runtime,
    client: Client,
    /// Statements prepared on this connection, by their text.
    prepared: HashMap<&'static str, Statement>,
    /// A transaction was begun and not ended (a panic between the two
    /// flights): it is rolled back before the next one begins.
    open: bool,
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
        let statement = self.prepared(&[sql])?.remove(0);
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
        self.end_open()?;
        let sqls: Vec<&'static str> = ops.iter().map(|op| op.sql).collect();
        let statements = self.prepared(&sqls)?;
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = ops.iter().map(Op::params).collect();
        self.open = true;
        let client = &self.client;
        let (begun, answers) = self.rt.block_on(async {
            // Polled in order on the first poll: each request is written
            // before any answer is awaited.
            join(
                client.batch_execute("BEGIN"),
                join_all(
                    statements
                        .iter()
                        .zip(&params)
                        .map(|(s, p)| client.query(s, p.as_slice())),
                ),
            )
            .await
        });
        if let Err(e) = begun {
            let _ = self.rollback();
            return Err(e.into());
        }
        Ok(answers)
    }

    /// Commits the open transaction.
    pub(super) fn commit(&mut self) -> Result<(), StoreError> {
        let done = self.rt.block_on(self.client.batch_execute("COMMIT"));
        self.open = false;
        Ok(done?)
    }

    /// Rolls the open transaction back.
    pub(super) fn rollback(&mut self) -> Result<(), StoreError> {
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

    /// The statements `sqls`, in order, preparing those not prepared
    /// yet on this connection in one flight.
    fn prepared(&mut self, sqls: &[&'static str]) -> Result<Vec<Statement>, StoreError> {
        let mut missing: Vec<&'static str> = sqls
            .iter()
            .copied()
            .filter(|sql| !self.prepared.contains_key(sql))
            .collect();
        if !missing.is_empty() {
            missing.sort_unstable();
            missing.dedup();
            let client = &self.client;
            let done = self
                .rt
                .block_on(join_all(missing.iter().map(|sql| client.prepare(sql))));
            for (sql, statement) in missing.into_iter().zip(done) {
                self.prepared.insert(sql, statement?);
            }
        }
        sqls.iter()
            .map(|sql| {
                self.prepared
                    .get(sql)
                    .cloned()
                    .ok_or_else(|| StoreError::Invalid(format!("statement not prepared: {sql}")))
            })
            .collect()
    }
}

/// The write connection's runtime could not be built.
#[derive(Debug, thiserror::Error)]
#[error("postgres write connection: runtime: {0}")]
struct RuntimeError(std::io::Error);
