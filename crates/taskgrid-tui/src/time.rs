//! Times and durations on the screen.
//!
//! [`crate::update`] reads no clock: the refresh task sends the wall clock
//! with each read ([`crate::Msg::Now`]), and times are shown relative to
//! it (`in 4m 10s`, `12s ago`). Until it has come, and beside a relative
//! time where there is room, a time is shown in UTC
//! (`2025-03-01 03:00:00Z`): the dashboard has no time zone database.

use std::time::Duration;

use taskgrid_core::Timestamp;

/// The units of [`span`], largest first, in milliseconds.
const UNITS: [(u64, &str); 5] = [
    (86_400_000, "d"),
    (3_600_000, "h"),
    (60_000, "m"),
    (1_000, "s"),
    (1, "ms"),
];

/// `d` in at most `units` of its largest units, e.g. `1h 30m`, `5m`,
/// `1s 500ms` (`0s` when zero). Smaller units are left out, not rounded.
pub(crate) fn span(d: Duration, units: usize) -> String {
    let mut left = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let Some(first) = UNITS.iter().position(|(ms, _)| left >= *ms) else {
        return "0s".to_owned();
    };
    let mut parts = Vec::new();
    for (ms, name) in UNITS.iter().skip(first).take(units.max(1)) {
        let n = left / ms;
        left %= ms;
        if n > 0 {
            parts.push(format!("{n}{name}"));
        }
    }
    parts.join(" ")
}

/// `t` seen from `now`, to the second: `in 4m 10s`, `12s ago`, or `now`
/// within a second.
pub(crate) fn relative(t: Timestamp, now: Timestamp) -> String {
    let (ahead, d) = if t >= now {
        (true, t.since(now))
    } else {
        (false, now.since(t))
    };
    if d < Duration::from_secs(1) {
        return "now".to_owned();
    }
    let d = span(Duration::from_secs(d.as_secs()), 2);
    if ahead {
        format!("in {d}")
    } else {
        format!("{d} ago")
    }
}

/// `t` relative to `now` when the clock is known, else in UTC.
pub(crate) fn when(t: Timestamp, now: Option<Timestamp>) -> String {
    match now {
        Some(now) => relative(t, now),
        None => utc(t),
    }
}

/// `t` in UTC, to the second: `2025-03-01 03:00:00Z`.
pub(crate) fn utc(t: Timestamp) -> String {
    let secs = t.as_micros() / 1_000_000;
    let (y, m, d) = civil(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        s / 3_600,
        s / 60 % 60,
        s % 60
    )
}

/// The date `days` days after 1970-01-01 in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, for days on or after the
/// epoch).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_micros(secs * 1_000_000)
    }

    #[test]
    fn spans_show_their_largest_units() {
        assert_eq!(span(Duration::from_secs(300), 4), "5m");
        assert_eq!(span(Duration::from_secs(5_400), 4), "1h 30m");
        assert_eq!(span(Duration::from_millis(1_500), 4), "1s 500ms");
        assert_eq!(span(Duration::from_secs(90_061), 2), "1d 1h");
        assert_eq!(span(Duration::from_secs(3_605), 2), "1h", "0m then cut");
        assert_eq!(span(Duration::ZERO, 2), "0s");
    }

    #[test]
    fn relative_times_count_from_now() {
        let now = at(1_000_000);
        assert_eq!(relative(at(1_000_250), now), "in 4m 10s");
        assert_eq!(relative(at(999_988), now), "12s ago");
        assert_eq!(
            relative(Timestamp::from_micros(now.as_micros() + 999_999), now),
            "now"
        );
        assert_eq!(when(at(1_000_060), Some(now)), "in 1m");
        assert_eq!(when(at(0), None), "1970-01-01 00:00:00Z");
    }

    #[test]
    fn utc_dates_match_the_calendar() {
        assert_eq!(utc(at(951_782_400)), "2000-02-29 00:00:00Z");
        assert_eq!(utc(at(1_700_000_000)), "2023-11-14 22:13:20Z");
        assert_eq!(utc(at(4_107_542_399)), "2100-02-28 23:59:59Z");
    }
}
