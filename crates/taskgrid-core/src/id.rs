//! Identifiers: [`TaskId`] (a 128-bit, time-ordered id such as a UUIDv7) and
//! [`WorkerId`] (the stable name an executor registers with).
//!
//! The core never generates ids itself — that needs a clock and randomness —
//! the shell mints them and passes them in.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Timestamp;

/// A task's id: 128 bits, shown in the hyphenated UUID form.
///
/// Ids minted as UUIDv7 sort by creation time, which keeps store indexes and
/// cursors in submission order.
///
/// Kept as two `u64` halves (high first, so the derived order is numeric
/// order) for 8-byte alignment: a `u128` would pad every struct holding one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TaskId {
    hi: u64,
    lo: u64,
}

impl TaskId {
    /// Wraps a raw 128-bit value.
    pub const fn from_u128(v: u128) -> Self {
        Self {
            hi: (v >> 64) as u64,
            lo: v as u64,
        }
    }
    /// The raw 128-bit value.
    pub const fn as_u128(self) -> u128 {
        ((self.hi as u128) << 64) | self.lo as u128
    }
    /// Big-endian bytes, the order in which ids sort.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.as_u128().to_be_bytes()
    }
    /// The smallest UUIDv7 of the millisecond of `at`: every v7 id minted
    /// before that millisecond is below it (ids sort by creation time).
    pub const fn created_before(at: Timestamp) -> Self {
        Self::from_u128(((at.as_millis() as u128) & ((1 << 48) - 1)) << 80)
    }
    /// Builds an id from big-endian bytes.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Self::from_u128(u128::from_be_bytes(b))
    }
}

impl std::hash::Hash for TaskId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hi);
        state.write_u64(self.lo);
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.as_u128();
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xffff_ffff_ffff
        )
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text given is not a task id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid task id {0:?}: expected 32 hex digits, optionally hyphenated")]
pub struct ParseIdError(pub String);

impl FromStr for TaskId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseIdError(s.to_owned()));
        }
        u128::from_str_radix(&hex, 16)
            .map(TaskId::from_u128)
            .map_err(|_| ParseIdError(s.to_owned()))
    }
}

impl Serialize for TaskId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The stable name of a worker (or of the embedded local executor).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(Arc<str>);

impl WorkerId {
    /// Makes a worker id from any string.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self(Arc::from(name.as_ref()))
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_round_trips_through_text() {
        let id = TaskId::from_u128(0x0192_3f4e_5a6b_7c8d_9eaf_b0c1_d2e3_f405);
        let s = id.to_string();
        assert_eq!(s, "01923f4e-5a6b-7c8d-9eaf-b0c1d2e3f405");
        assert_eq!(s.parse::<TaskId>(), Ok(id));
        assert_eq!(s.replace('-', "").parse::<TaskId>(), Ok(id));
    }

    #[test]
    fn task_id_rejects_garbage() {
        assert!("xyz".parse::<TaskId>().is_err());
        assert!(
            "01923f4e-5a6b-7c8d-9eaf-b0c1d2e3f40"
                .parse::<TaskId>()
                .is_err()
        );
        assert!(
            "g1923f4e-5a6b-7c8d-9eaf-b0c1d2e3f405"
                .parse::<TaskId>()
                .is_err()
        );
    }
}
