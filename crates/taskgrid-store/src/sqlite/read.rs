//! The SQLite read path: queries and the decoding of rows back into the core
//! types. Rows come from outside the process, so anything unexpected in them
//! is a [`StoreError::Corrupt`], never a panic.

use std::fmt::Write as _;

use rusqlite::types::{FromSql, Value};
use rusqlite::{Connection, Row, params, params_from_iter};
use serde::de::DeserializeOwned;
use taskgrid_core::{
    AttemptRecord, AuditEntry, FireRecord, OutputChunk, ScheduleRecord, State, Stream, TaskId,
    TaskRecord, TaskStatus, Timestamp, WorkerId,
};

use crate::attempt::{parse_outcome, usage_of};
use crate::schedule;
use crate::{
    FinishedScan, FinishedTask, StoreError, TaskQuery, counts_in_order, finished_before_at,
    state_index,
};

const TASK_COLUMNS: &str = "id, created_at, spec, status, progress, checkpoint";

/// Every non-terminal task, in id order.
pub(super) fn load_active(conn: &Connection) -> Result<Vec<TaskRecord>, StoreError> {
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE state IN (");
    for (i, s) in State::ALL.iter().filter(|s| !s.is_terminal()).enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(sql, "{sep}'{}'", s.as_str());
    }
    sql.push_str(") ORDER BY id");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(task_row(row)?);
    }
    Ok(out)
}

/// One task by id.
pub(super) fn get(conn: &Connection, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
    let key = id.to_bytes();
    let mut rows = stmt.query(params![&key[..]])?;
    rows.next()?.map(task_row).transpose()
}

/// The tasks matching `q`, in id order (descending with `newest_first`).
pub(super) fn list(conn: &Connection, q: &TaskQuery) -> Result<Vec<TaskRecord>, StoreError> {
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE 1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(s) = q.state {
        sql.push_str(" AND state = ?");
        args.push(Value::Text(s.as_str().to_owned()));
    }
    if let Some(queue) = &q.queue {
        sql.push_str(" AND queue = ?");
        args.push(Value::Text(queue.clone()));
    }
    if let Some(parent) = q.parent {
        sql.push_str(" AND parent = ?");
        args.push(Value::Blob(parent.to_bytes().to_vec()));
    }
    if let Some(worker) = &q.worker {
        sql.push_str(
            " AND id IN (SELECT task_id FROM attempts WHERE worker = ? \
             AND (outcome IS NULL OR outcome <> 'rejected'))",
        );
        args.push(Value::Text(worker.as_str().to_owned()));
    }
    if let Some(tag) = &q.tag {
        sql.push_str(" AND id IN (SELECT task_id FROM task_tags WHERE tag = ?)");
        args.push(Value::Text(tag.clone()));
    }
    if let Some(after) = q.after {
        sql.push_str(if q.newest_first {
            " AND id < ?"
        } else {
            " AND id > ?"
        });
        args.push(Value::Blob(after.to_bytes().to_vec()));
    }
    sql.push_str(if q.newest_first {
        " ORDER BY id DESC LIMIT ?"
    } else {
        " ORDER BY id LIMIT ?"
    });
    args.push(Value::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));

    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(task_row(row)?);
    }
    Ok(out)
}

/// The attempts of a task, in attempt order.
pub(super) fn attempts(conn: &Connection, id: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT attempt, worker, assigned_at, started_at, finished_at, outcome, error, exit_code, \
         cpu_seconds, peak_rss_bytes, signal FROM attempts WHERE task_id = ?1 ORDER BY attempt",
    )?;
    let key = id.to_bytes();
    let mut rows = stmt.query(params![&key[..]])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let outcome = match col::<Option<String>>(row, 5)? {
            None => None,
            Some(s) => Some(
                parse_outcome(&s)
                    .ok_or_else(|| corrupt(id, format!("unknown attempt outcome {s:?}")))?,
            ),
        };
        out.push(AttemptRecord {
            task: id,
            attempt: col(row, 0)?,
            worker: WorkerId::new(col::<String>(row, 1)?),
            assigned_at: timestamp(col(row, 2)?),
            started_at: col::<Option<i64>>(row, 3)?.map(timestamp),
            finished_at: col::<Option<i64>>(row, 4)?.map(timestamp),
            outcome,
            error: col(row, 6)?,
            exit_code: col(row, 7)?,
            usage: usage_of(col(row, 8)?, col(row, 9)?, col(row, 10)?),
        });
    }
    Ok(out)
}

/// Output chunks of a task after `after_seq`.
pub(super) fn output(
    conn: &Connection,
    id: TaskId,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<(u64, OutputChunk)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, attempt, stream, data FROM output WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let key = id.to_bytes();
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = stmt.query(params![&key[..], after, limit])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = col(row, 0)?;
        let seq = u64::try_from(seq)
            .map_err(|_| corrupt(id, format!("negative output sequence {seq}")))?;
        let stream: String = col(row, 2)?;
        let stream = match stream.as_str() {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            "log" => Stream::Log,
            other => return Err(corrupt(id, format!("unknown output stream {other:?}"))),
        };
        let chunk = OutputChunk {
            task: id,
            attempt: col(row, 1)?,
            stream,
            data: col(row, 3)?,
        };
        out.push((seq, chunk));
    }
    Ok(out)
}

/// Tasks per state, every state included.
pub(super) fn count_by_state(conn: &Connection) -> Result<Vec<(State, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM tasks GROUP BY state")?;
    let mut rows = stmt.query([])?;
    let mut counts = [0u64; State::ALL.len()];
    while let Some(row) = rows.next()? {
        let name: String = col(row, 0)?;
        let state: State = name
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("unknown task state {name:?}")))?;
        let n: i64 = col(row, 1)?;
        counts[state_index(state)] = u64::try_from(n).unwrap_or(0);
    }
    Ok(counts_in_order(&counts))
}

/// See [`crate::Store::meta`].
pub(super) fn meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
    let mut rows = stmt.query(params![key])?;
    match rows.next()? {
        Some(row) => Ok(Some(col(row, 0)?)),
        None => Ok(None),
    }
}

/// See [`crate::Store::audit`].
pub(super) fn audit(
    conn: &Connection,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT seq, record FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![before, limit])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = col(row, 0)?;
        let json: String = col(row, 1)?;
        let record = serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("audit entry {seq}: {e}")))?;
        out.push(AuditEntry {
            seq: seq as u64,
            record,
        });
    }
    Ok(out)
}

/// See [`crate::Store::finished_before`]: the status of each task read
/// tells whether it finished before the cutoff.
pub(super) fn finished_before(
    conn: &Connection,
    cutoff: Timestamp,
    after: Option<TaskId>,
    limit: usize,
) -> Result<FinishedScan, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, status, queue FROM tasks WHERE id > ?1 AND id < ?2 ORDER BY id LIMIT ?3",
    )?;
    let from = after.map_or([0u8; 16], TaskId::to_bytes);
    let bound = TaskId::created_before(cutoff).to_bytes();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = stmt.query(params![&from[..], &bound[..], limit])?;
    let mut scan = FinishedScan::default();
    while let Some(row) = rows.next()? {
        let key: Vec<u8> = col(row, 0)?;
        let key: [u8; 16] = key.try_into().map_err(|k: Vec<u8>| {
            StoreError::Corrupt(format!("task id of {} bytes, not 16", k.len()))
        })?;
        let id = TaskId::from_bytes(key);
        let status: TaskStatus = from_json(id, "status", &col::<String>(row, 1)?)?;
        scan.last = Some(id);
        if let Some(finished_at) = finished_before_at(&status, cutoff) {
            scan.finished.push(FinishedTask {
                id,
                queue: col(row, 2)?,
                finished_at,
            });
        }
    }
    Ok(scan)
}

/// A row of [`TASK_COLUMNS`] as a record.
fn task_row(row: &Row<'_>) -> Result<TaskRecord, StoreError> {
    let key: Vec<u8> = col(row, 0)?;
    let key: [u8; 16] = key.try_into().map_err(|k: Vec<u8>| {
        StoreError::Corrupt(format!("task id of {} bytes, not 16", k.len()))
    })?;
    let id = TaskId::from_bytes(key);
    Ok(TaskRecord {
        id,
        created_at: timestamp(col(row, 1)?),
        spec: from_json(id, "spec", &col::<String>(row, 2)?)?,
        status: from_json(id, "status", &col::<String>(row, 3)?)?,
        progress: col::<Option<String>>(row, 4)?
            .map(|p| from_json(id, "progress", &p))
            .transpose()?,
        checkpoint: col::<Option<String>>(row, 5)?.map(String::into_boxed_str),
    })
}

/// Column `i` of `row`; a value of the wrong type is corrupt data.
fn col<T: FromSql>(row: &Row<'_>, i: usize) -> Result<T, StoreError> {
    row.get(i).map_err(|e| match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(e.to_string()),
        e => StoreError::from(e),
    })
}

/// The inverse of [`super::write::micros`].
fn timestamp(v: i64) -> Timestamp {
    Timestamp::from_micros(v as u64)
}

fn from_json<T: DeserializeOwned>(id: TaskId, what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(id, format!("bad {what} JSON: {e}")))
}

fn corrupt(id: TaskId, msg: String) -> StoreError {
    StoreError::Corrupt(format!("task {id}: {msg}"))
}

pub(super) fn paused_queues(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT name FROM paused_queues ORDER BY name")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(col(row, 0)?);
    }
    Ok(out)
}

/// Every schedule, in name order.
pub(super) fn schedules(
    conn: &Connection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<ScheduleRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, record FROM schedules WHERE name > ?1 ORDER BY name LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = stmt.query(params![after.unwrap_or(""), limit])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let name: String = col(row, 0)?;
        let rec: ScheduleRecord = schedule::from_json(&name, "schedule", &col::<String>(row, 1)?)?;
        if rec.name != name {
            return Err(StoreError::Corrupt(format!(
                "schedule {name:?}: its record is named {:?}",
                rec.name
            )));
        }
        out.push(rec);
    }
    Ok(out)
}

/// The fires of `schedule` scheduled within `from..=to`, newest first.
pub(super) fn fires(
    conn: &Connection,
    schedule: &str,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    limit: usize,
) -> Result<Vec<FireRecord>, StoreError> {
    // The bounds as the column stores times (`write::micros`); a range
    // on the key's second column, read backwards.
    let mut stmt = conn.prepare_cached(
        "SELECT record FROM schedule_fires WHERE schedule = ?1 AND at >= ?2 AND at <= ?3 \
         ORDER BY at DESC, manual DESC LIMIT ?4",
    )?;
    let from = from.map_or(i64::MIN, super::write::micros);
    let to = to.map_or(i64::MAX, super::write::micros);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = stmt.query(params![schedule, from, to, limit])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(schedule::from_json(
            schedule,
            "fire",
            &col::<String>(row, 0)?,
        )?);
    }
    Ok(out)
}
