//! Schedules: a recurrence (a cron expression or a fixed interval) in a time
//! zone, with a task template; and the pure function that says when it next
//! fires.
//!
//! [`ScheduleSpec::next_after`] is the whole of "when": a function of the
//! spec and an instant, with no clock and no state, so the engine, the API's
//! "next fires" and the tests all agree. Cron expressions are parsed and
//! evaluated by the `croner` crate (5 fields, or 6 with seconds first; `L`,
//! `W`, `#`, names), time zones come from the IANA database (`chrono-tz`).
//!
//! Daylight saving time (croner's rules, the same as Vixie cron's): a
//! fixed-time job (`30 2 * * *`) whose local time falls in a spring-forward
//! gap fires once, at the first instant after the gap; in a fall-back
//! overlap it fires once, at the first pass. An interval or wildcard job
//! (`*/15 * * * *`) skips the instants that do not exist and fires for each
//! matching instant that does, both passes of a repeated hour included.
//! Fixed intervals (`every 5m`) count real time and ignore the zone.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::{TaskId, TaskSpec, Timestamp, duration_micros};

/// Longest schedule name.
pub const SCHEDULE_NAME_MAX: usize = 128;

/// What a schedule repeats on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recurrence {
    /// A cron expression: 5 fields (minute hour day-of-month month
    /// day-of-week), or 6 with seconds first.
    Cron(String),
    /// A fixed interval: the instants `phase + k × every` after the Unix
    /// epoch (so `every 5m` fires at :00, :05, … of every hour).
    Every {
        /// The period, at least one second.
        #[serde(with = "crate::spec::duration_ms")]
        every: Duration,
        /// Offset of the fires from the epoch's multiples (less than `every`).
        #[serde(default, with = "crate::spec::duration_ms")]
        phase: Duration,
    },
}

/// What a fire does while the schedule's previous task is still live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    /// Record the fire as skipped (the default).
    #[default]
    Skip,
    /// Keep one fire waiting and run it when the previous task ends; more
    /// are skipped.
    BufferOne,
    /// Keep every fire waiting and run them one after another.
    BufferAll,
    /// Cancel the previous task and run the new one.
    CancelPrevious,
    /// Run the new task beside the previous ones.
    AllowAll,
}

impl Overlap {
    /// Every policy, in the order of the docs.
    pub const ALL: [Overlap; 5] = [
        Overlap::Skip,
        Overlap::BufferOne,
        Overlap::BufferAll,
        Overlap::CancelPrevious,
        Overlap::AllowAll,
    ];

    /// The policy's name (`skip`, `buffer-one`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer-one",
            Overlap::BufferAll => "buffer-all",
            Overlap::CancelPrevious => "cancel-previous",
            Overlap::AllowAll => "allow-all",
        }
    }
}

impl FromStr for Overlap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Overlap::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown overlap policy {s:?} (expected one of: {})",
                    Overlap::ALL.map(Overlap::as_str).join(", ")
                )
            })
    }
}

/// When a schedule fires, and what it does about overlaps and downtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// The recurrence.
    pub recurrence: Recurrence,
    /// IANA time zone the cron expression is read in (`None`: UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// Each fire is delayed by up to this much (a fixed pseudo-random
    /// amount per scheduled time), to spread load.
    #[serde(default, with = "crate::spec::duration_ms")]
    pub jitter: Duration,
    /// No fire before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Timestamp>,
    /// No fire after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Timestamp>,
    /// At most this many fires that submit a task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs: Option<u64>,
    /// What a fire does while the previous task is still live.
    #[serde(default)]
    pub overlap: Overlap,
    /// Fires missed (coordinator down, standby taking over) by at most
    /// this much are still run; older ones are recorded as missed.
    #[serde(default = "catch_up_default", with = "crate::spec::duration_ms")]
    pub catch_up: Duration,
}

fn catch_up_default() -> Duration {
    ScheduleSpec::CATCH_UP_DEFAULT
}

/// A schedule's spec that cannot be used; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct BadSchedule {
    /// The offending field (`cron`, `tz`, `every`, `name`, `template.run_at`…).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> BadSchedule {
    BadSchedule {
        field,
        reason: reason.into(),
    }
}

impl ScheduleSpec {
    /// The default catch-up window: one minute.
    pub const CATCH_UP_DEFAULT: Duration = Duration::from_secs(60);
    /// Longest jitter or catch-up window.
    pub const WINDOW_MAX: Duration = Duration::from_secs(366 * 24 * 3600);

    /// A spec with this recurrence and every default (UTC, no jitter, no
    /// bounds, overlap `skip`, catch-up one minute).
    pub fn new(recurrence: Recurrence) -> Self {
        ScheduleSpec {
            recurrence,
            tz: None,
            jitter: Duration::ZERO,
            start: None,
            end: None,
            max_runs: None,
            overlap: Overlap::Skip,
            catch_up: Self::CATCH_UP_DEFAULT,
        }
    }

    /// A cron spec (see [`Recurrence::Cron`]).
    pub fn cron(expr: impl Into<String>) -> Self {
        Self::new(Recurrence::Cron(expr.into()))
    }

    /// A fixed-interval spec with no phase.
    pub fn every(every: Duration) -> Self {
        Self::new(Recurrence::Every {
            every,
            phase: Duration::ZERO,
        })
    }

    /// Checks every field: the cron expression parses, the zone exists, the
    /// interval is at least a second, the bounds are ordered.
    pub fn validate(&self) -> Result<(), BadSchedule> {
        self.compile().map(|_| ())?;
        if self.jitter > Self::WINDOW_MAX {
            return Err(bad("jitter", "longer than 366 days"));
        }
        if self.catch_up > Self::WINDOW_MAX {
            return Err(bad("catch_up", "longer than 366 days"));
        }
        if let (Some(s), Some(e)) = (self.start, self.end)
            && e < s
        {
            return Err(bad("end", "before start"));
        }
        if self.max_runs == Some(0) {
            return Err(bad("max_runs", "must be at least 1"));
        }
        Ok(())
    }

    fn compile(&self) -> Result<Compiled, BadSchedule> {
        let tz: chrono_tz::Tz = match &self.tz {
            None => chrono_tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                bad(
                    "tz",
                    format!("unknown time zone {name:?} (an IANA name such as Europe/Berlin)"),
                )
            })?,
        };
        match &self.recurrence {
            Recurrence::Cron(expr) => {
                let fields = expr.split_whitespace().count();
                if !(5..=6).contains(&fields) && !expr.trim_start().starts_with('@') {
                    return Err(bad(
                        "cron",
                        format!("{expr:?} has {fields} fields; expected 5, or 6 with seconds"),
                    ));
                }
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .year(Year::Disallowed)
                    .build()
                    .parse(expr)
                    .map_err(|e| bad("cron", format!("{expr:?}: {e}")))?;
                Ok(Compiled::Cron(Box::new(cron), tz))
            }
            Recurrence::Every { every, phase } => {
                if *every < Duration::from_secs(1) {
                    return Err(bad("every", "must be at least 1s"));
                }
                if phase >= every {
                    return Err(bad("phase", "must be shorter than the interval"));
                }
                Ok(Compiled::Every {
                    every: duration_micros(*every).max(1),
                    phase: duration_micros(*phase),
                })
            }
        }
    }

    /// The first fire strictly after `after`, within `start` and `end`;
    /// `None` if there is none (the spec is invalid, or it has ended).
    /// A pure function of the spec and `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let compiled = self.compile().ok()?;
        let mut from = after;
        if let Some(s) = self.start
            && s.as_micros() > 0
            && from < s
        {
            // Fires at `start` itself count.
            from = Timestamp::from_micros(s.as_micros() - 1);
        }
        let next = compiled.next_after(from)?;
        match self.end {
            Some(e) if next > e => None,
            _ => Some(next),
        }
    }

    /// Up to `n` fires strictly after `after`, in order.
    pub fn upcoming(&self, after: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// The delay of the fire scheduled at `at`: a fixed pseudo-random
    /// fraction of `jitter`, the same for the same schedule and instant (so
    /// a restart fires it when it would have).
    pub fn jitter_for(&self, name: &str, at: Timestamp) -> Duration {
        let max = duration_micros(self.jitter);
        if max == 0 {
            return Duration::ZERO;
        }
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in name.bytes().chain(at.as_micros().to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Duration::from_micros(mix(h) % (max + 1))
    }
}

enum Compiled {
    Cron(Box<Cron>, chrono_tz::Tz),
    Every { every: u64, phase: u64 },
}

impl Compiled {
    fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match self {
            Compiled::Every { every, phase } => {
                let t = after.as_micros();
                let k = if t < *phase {
                    0
                } else {
                    (t - phase) / every + 1
                };
                k.checked_mul(*every)
                    .and_then(|x| x.checked_add(*phase))
                    .map(Timestamp::from_micros)
            }
            Compiled::Cron(cron, tz) => {
                // Whole seconds: the next fire strictly after `after` is the
                // next one strictly after its second.
                let secs = i64::try_from(after.as_micros() / 1_000_000).ok()?;
                let utc: DateTime<Utc> = Utc.timestamp_opt(secs, 0).single()?;
                let local = utc.with_timezone(tz);
                let next = cron.find_next_occurrence(&local, false).ok()?;
                let s = u64::try_from(next.timestamp()).ok()?;
                Some(Timestamp::from_micros(s.checked_mul(1_000_000)?))
            }
        }
    }
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Checks a schedule's name: 1 to [`SCHEDULE_NAME_MAX`] bytes of letters,
/// digits, `-`, `_`, `.` and `:` (it is used in URLs and tags).
pub fn check_schedule_name(name: &str) -> Result<(), BadSchedule> {
    if name.is_empty() {
        return Err(bad("name", "must not be empty"));
    }
    if name.len() > SCHEDULE_NAME_MAX {
        return Err(bad(
            "name",
            format!("longer than {SCHEDULE_NAME_MAX} bytes"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(bad(
            "name",
            format!("{c:?} is not allowed (letters, digits, '-', '_', '.', ':')"),
        ));
    }
    Ok(())
}

/// A schedule as stored: its definition and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// The schedule's name: its identity (unique).
    pub name: String,
    /// When it fires.
    pub spec: ScheduleSpec,
    /// The task each fire submits.
    pub template: TaskSpec,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its definition last changed.
    pub updated_at: Timestamp,
    /// Paused: it does not fire (fires due while paused are not run later).
    #[serde(default)]
    pub paused: bool,
    /// Why it was paused (or anything the operator wants to say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Where it stands.
    #[serde(default)]
    pub state: ScheduleState,
}

/// Where a schedule stands: rewritten in the same commit as each fire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Every scheduled time up to and including this one has been dealt
    /// with (fired, skipped, buffered or recorded as missed).
    pub cursor: Timestamp,
    /// Fires that submitted a task (counted against `max_runs`).
    #[serde(default)]
    pub runs: u64,
    /// Scheduled times waiting for the previous task to end (overlap
    /// `buffer-one` and `buffer-all`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buffered: Vec<Timestamp>,
    /// The tasks this schedule submitted that were live at the last fire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<TaskId>,
    /// The last task a fire submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_task: Option<TaskId>,
}

/// What one fire of a schedule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FireOutcome {
    /// A task was submitted.
    Submitted,
    /// Not run: the previous task was still live (overlap `skip`, or a
    /// full buffer).
    Skipped,
    /// Not run: it was due longer ago than the catch-up window (the
    /// coordinator was down); `count` fires from `at` to `until`.
    Missed,
    /// Not run: submitting its task failed (a full queue).
    Failed,
}

impl FireOutcome {
    /// The outcome's name.
    pub fn as_str(self) -> &'static str {
        match self {
            FireOutcome::Submitted => "submitted",
            FireOutcome::Skipped => "skipped",
            FireOutcome::Missed => "missed",
            FireOutcome::Failed => "failed",
        }
    }
}

impl FromStr for FireOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "submitted" => Ok(FireOutcome::Submitted),
            "skipped" => Ok(FireOutcome::Skipped),
            "missed" => Ok(FireOutcome::Missed),
            "failed" => Ok(FireOutcome::Failed),
            _ => Err(format!("unknown fire outcome {s:?}")),
        }
    }
}

/// One fire of a schedule: unique on (schedule, scheduled time), committed
/// with the submit of its task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireRecord {
    /// The schedule.
    pub schedule: String,
    /// The scheduled time (before jitter); for a missed range, its first.
    pub at: Timestamp,
    /// When the coordinator acted on it.
    pub fired_at: Timestamp,
    /// What it did.
    pub outcome: FireOutcome,
    /// The task it submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
    /// Why it did not run (the task still live, the error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a missed range: its last scheduled time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// For a missed range: how many fires it holds.
    #[serde(default = "one_fire", skip_serializing_if = "is_one")]
    pub count: u64,
    /// Run on demand (trigger or backfill), not by the recurrence.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
}

fn one_fire() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

#[cfg(test)]
mod tests;
