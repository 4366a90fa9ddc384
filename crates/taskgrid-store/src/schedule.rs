//! What every backend does the same way with schedules and their fires: the
//! error of a duplicate fire, and the JSON the durable backends keep each
//! record as.

use taskgrid_core::Timestamp;

use crate::StoreError;

/// The error of a second fire of `schedule` at the scheduled time `at`.
pub(crate) fn duplicate_fire(schedule: &str, at: Timestamp) -> StoreError {
    StoreError::Invalid(format!(
        "schedule {schedule:?}: a fire at {at:?} is already recorded"
    ))
}

/// `value`, a record of schedule `name`, as JSON text.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn to_json<T: serde::Serialize>(
    name: &str,
    what: &str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Invalid(format!("schedule {name:?}: cannot encode {what}: {e}")))
}

/// A record of schedule `name` from the JSON text a backend read: bad JSON
/// is corrupt data.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    name: &str,
    what: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("schedule {name:?}: bad {what} JSON: {e}")))
}
