//! Task priority: a number 0–255 where higher runs first, with four names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How urgent a task is. Higher numbers are dispatched first; within one
/// priority, tasks run in submission order (FIFO).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Priority(pub u8);

impl Priority {
    /// `low` (64): background work that may wait.
    pub const LOW: Priority = Priority(64);
    /// `normal` (128): the default.
    pub const NORMAL: Priority = Priority(128);
    /// `high` (192): ahead of normal work.
    pub const HIGH: Priority = Priority(192);
    /// `critical` (255): ahead of everything.
    pub const CRITICAL: Priority = Priority(255);

    fn name(self) -> Option<&'static str> {
        match self {
            Priority::LOW => Some("low"),
            Priority::NORMAL => Some("normal"),
            Priority::HIGH => Some("high"),
            Priority::CRITICAL => Some("critical"),
            _ => None,
        }
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::NORMAL
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.pad(n),
            None => f.pad(&self.0.to_string()),
        }
    }
}

impl fmt::Debug for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text is neither a priority name nor a number 0–255.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid priority {0:?}: expected critical, high, normal, low or a number 0-255")]
pub struct ParsePriorityError(pub String);

impl FromStr for Priority {
    type Err = ParsePriorityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "low" => Ok(Priority::LOW),
            "normal" => Ok(Priority::NORMAL),
            "high" => Ok(Priority::HIGH),
            "critical" => Ok(Priority::CRITICAL),
            n => n
                .parse::<u8>()
                .map(Priority)
                .map_err(|_| ParsePriorityError(s.to_owned())),
        }
    }
}

impl Serialize for Priority {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(n) => s.serialize_str(n),
            None => s.serialize_u8(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr<'a> {
            Num(i64),
            Name(std::borrow::Cow<'a, str>),
            Other(serde::de::IgnoredAny),
        }
        let bad = |what: String| serde::de::Error::custom(ParsePriorityError(what));
        match Repr::deserialize(d)? {
            Repr::Num(n) => u8::try_from(n)
                .map(Priority)
                .map_err(|_| bad(n.to_string())),
            Repr::Name(s) => s.parse().map_err(serde::de::Error::custom),
            Repr::Other(_) => Err(bad("of another type".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_parse() {
        assert_eq!("high".parse(), Ok(Priority::HIGH));
        assert_eq!("CRITICAL".parse(), Ok(Priority::CRITICAL));
        assert_eq!("7".parse(), Ok(Priority(7)));
        assert!("256".parse::<Priority>().is_err());
        assert!("urgent".parse::<Priority>().is_err());
        assert!(Priority::CRITICAL > Priority::HIGH && Priority::HIGH > Priority::NORMAL);
        assert!(Priority::NORMAL > Priority::LOW);
    }

    #[test]
    fn a_bad_priority_in_json_says_what_is_allowed() {
        let err = |j: &str| serde_json::from_str::<Priority>(j).unwrap_err().to_string();
        assert!(err("300").contains("invalid priority \"300\": expected critical, high"));
        assert!(err("-1").contains("invalid priority \"-1\""));
        assert!(err("1.5").contains("expected critical, high, normal, low or a number 0-255"));
        assert!(err("\"urgent\"").contains("invalid priority \"urgent\""));
        assert_eq!(
            serde_json::from_str::<Priority>("200").unwrap(),
            Priority(200)
        );
    }
}
