//! How a task's status is stored: the API's JSON without the fields that
//! say nothing (`null`, `false`, `0`).
//!
//! A task's status is rewritten at each of its changes; as the API shows
//! it (every field, `null` or not) a queued task's is 206 bytes where 47
//! say all of it, and the row's size decides how many rows share a page,
//! so how many pages each commit writes. Reading takes either form:
//! [`TaskStatus`] defaults every field but `state`.

use serde::ser::{Serialize, SerializeMap, Serializer};
use taskgrid_core::{TaskId, TaskStatus};

use crate::StoreError;

/// `status` as stored: JSON text without its empty fields.
pub(crate) fn to_json(id: TaskId, status: &TaskStatus) -> Result<String, StoreError> {
    serde_json::to_string(&Stored(status))
        .map_err(|e| StoreError::Invalid(format!("task {id}: cannot encode status: {e}")))
}

/// A status serialized with only the fields that hold something.
struct Stored<'a>(&'a TaskStatus);

impl Serialize for Stored<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Destructured, so that a field added to the status is a compile
        // error here until it is stored too.
        let TaskStatus {
            state,
            attempt,
            retries,
            worker,
            wake_at,
            queued_at,
            started_at,
            finished_at,
            cancel_requested,
            result,
            error,
            exit_code,
            usage,
        } = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("state", state)?;
        if *attempt != 0 {
            map.serialize_entry("attempt", attempt)?;
        }
        if *retries != 0 {
            map.serialize_entry("retries", retries)?;
        }
        if let Some(w) = worker {
            map.serialize_entry("worker", w)?;
        }
        for (key, at) in [
            ("wake_at", wake_at),
            ("queued_at", queued_at),
            ("started_at", started_at),
            ("finished_at", finished_at),
        ] {
            if let Some(at) = at {
                map.serialize_entry(key, at)?;
            }
        }
        if *cancel_requested {
            map.serialize_entry("cancel_requested", cancel_requested)?;
        }
        if let Some(r) = result {
            map.serialize_entry("result", r)?;
        }
        if let Some(e) = error {
            map.serialize_entry("error", e)?;
        }
        if let Some(c) = exit_code {
            map.serialize_entry("exit_code", c)?;
        }
        if let Some(u) = usage {
            map.serialize_entry("usage", u)?;
        }
        map.end()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on anything
mod tests {
    use taskgrid_core::{FailureCode, State, TaskFailure, TaskStatus, Timestamp, Usage, WorkerId};

    use super::to_json;

    fn id() -> taskgrid_core::TaskId {
        taskgrid_core::TaskId::from_u128(1)
    }

    #[test]
    fn a_new_status_is_stored_as_its_state_alone() {
        let s = TaskStatus::new(State::Queued);
        let text = to_json(id(), &s).unwrap();
        assert_eq!(text, r#"{"state":"queued"}"#);
        assert_eq!(serde_json::from_str::<TaskStatus>(&text).unwrap(), s);
    }

    #[test]
    fn every_field_that_holds_something_comes_back() {
        let s = TaskStatus {
            state: State::Failed,
            attempt: 3,
            retries: 2,
            worker: Some(WorkerId::new("w-1")),
            wake_at: Some(Timestamp::from_micros(1)),
            queued_at: Some(Timestamp::from_micros(2)),
            started_at: Some(Timestamp::from_micros(3)),
            finished_at: Some(Timestamp::from_micros(4)),
            cancel_requested: true,
            result: Some("{\"n\":1}".into()),
            error: Some(TaskFailure::new(FailureCode::Error, "exit 3")),
            exit_code: Some(3),
            usage: Some(Usage {
                cpu_seconds: 0.5,
                peak_rss_bytes: 1 << 20,
                signal: Some(9),
            }),
        };
        let text = to_json(id(), &s).unwrap();
        assert!(!text.contains("null"), "{text}");
        assert_eq!(serde_json::from_str::<TaskStatus>(&text).unwrap(), s);
    }

    #[test]
    fn the_api_form_with_every_field_still_reads() {
        let mut s = TaskStatus::new(State::Running);
        s.attempt = 1;
        s.worker = Some(WorkerId::new("w-1"));
        s.started_at = Some(Timestamp::from_micros(7));
        // What earlier builds stored: the API's form, nulls included.
        let full = serde_json::to_string(&s).unwrap();
        assert!(full.contains("\"result\":null"), "{full}");
        assert_eq!(serde_json::from_str::<TaskStatus>(&full).unwrap(), s);
        assert!(to_json(id(), &s).unwrap().len() < full.len() / 2);
    }
}
