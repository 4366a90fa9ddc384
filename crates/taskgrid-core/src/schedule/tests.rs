use super::*;
use chrono::NaiveDate;
use proptest::prelude::*;

fn ts(rfc3339: &str) -> Timestamp {
    let t = DateTime::parse_from_rfc3339(rfc3339).expect("a valid test instant");
    Timestamp::from_micros(u64::try_from(t.timestamp_micros()).expect("after the epoch"))
}

fn cron_in(expr: &str, tz: &str) -> ScheduleSpec {
    ScheduleSpec {
        tz: Some(tz.to_owned()),
        ..ScheduleSpec::cron(expr)
    }
}

#[test]
fn five_and_six_field_cron_and_every() {
    let daily = ScheduleSpec::cron("0 3 * * *");
    assert_eq!(
        daily.next_after(ts("2026-12-05T13:00:00Z")),
        Some(ts("2026-12-06T03:00:00Z"))
    );
    let secs = ScheduleSpec::cron("*/10 * * * * *");
    assert_eq!(
        secs.next_after(ts("2026-12-05T13:00:00.5Z")),
        Some(ts("2026-12-05T13:00:10Z"))
    );
    let every = ScheduleSpec::every(Duration::from_secs(300));
    assert_eq!(
        every.next_after(ts("2026-12-05T13:00:00Z")),
        Some(ts("2026-12-05T13:05:00Z"))
    );
    let phased = ScheduleSpec::new(Recurrence::Every {
        every: Duration::from_secs(300),
        phase: Duration::from_secs(30),
    });
    assert_eq!(
        phased.upcoming(ts("2026-12-05T13:00:00Z"), 2),
        vec![ts("2026-12-05T13:00:30Z"), ts("2026-12-05T13:05:30Z")]
    );
}

#[test]
fn cron_extensions_last_weekday_and_nth() {
    // The last day of the month.
    let last = ScheduleSpec::cron("0 0 L * *");
    assert_eq!(
        last.next_after(ts("2027-02-01T00:00:00Z")),
        Some(ts("2027-02-28T00:00:00Z"))
    );
    // The weekday nearest the 15th: 2027-05-15 is a Saturday → Friday 14th.
    let weekday = ScheduleSpec::cron("0 0 15W * *");
    assert_eq!(
        weekday.next_after(ts("2027-05-01T00:00:00Z")),
        Some(ts("2027-05-14T00:00:00Z"))
    );
    // The second Monday of the month: 2027-01-11.
    let nth = ScheduleSpec::cron("0 9 * * MON#2");
    assert_eq!(
        nth.next_after(ts("2027-01-01T00:00:00Z")),
        Some(ts("2027-01-11T09:00:00Z"))
    );
}

#[test]
fn bad_specs_name_the_field() {
    let e = ScheduleSpec::cron("0 3 * *").validate().unwrap_err();
    assert_eq!(e.field, "cron");
    assert!(e.reason.contains("4 fields"), "{e}");
    let e = ScheduleSpec::cron("0 25 * * *").validate().unwrap_err();
    assert_eq!(e.field, "cron");
    let e = cron_in("0 3 * * *", "Mars/Olympus").validate().unwrap_err();
    assert_eq!(e.field, "tz");
    assert!(e.reason.contains("Mars/Olympus"), "{e}");
    let e = ScheduleSpec::every(Duration::from_millis(500))
        .validate()
        .unwrap_err();
    assert_eq!(e.field, "every");
    let e = ScheduleSpec::new(Recurrence::Every {
        every: Duration::from_secs(60),
        phase: Duration::from_secs(60),
    })
    .validate()
    .unwrap_err();
    assert_eq!(e.field, "phase");
    let e = ScheduleSpec {
        start: Some(ts("2027-01-02T00:00:00Z")),
        end: Some(ts("2027-01-01T00:00:00Z")),
        ..ScheduleSpec::cron("* * * * *")
    }
    .validate()
    .unwrap_err();
    assert_eq!(e.field, "end");
    assert!(check_schedule_name("nightly-report.v2").is_ok());
    assert_eq!(check_schedule_name("a b").unwrap_err().field, "name");
    assert_eq!(check_schedule_name("").unwrap_err().field, "name");
}

#[test]
fn start_and_end_bound_the_fires() {
    let spec = ScheduleSpec {
        start: Some(ts("2027-01-01T00:00:00Z")),
        end: Some(ts("2027-01-01T00:02:00Z")),
        ..ScheduleSpec::cron("* * * * *")
    };
    // Fires at `start` itself, and at `end` itself, and never after.
    assert_eq!(
        spec.upcoming(ts("2026-01-01T00:00:00Z"), 10),
        vec![
            ts("2027-01-01T00:00:00Z"),
            ts("2027-01-01T00:01:00Z"),
            ts("2027-01-01T00:02:00Z")
        ]
    );
}

#[test]
fn spring_forward_gap_in_berlin_and_new_york() {
    // Europe/Berlin: 2027-03-28 02:00 CET → 03:00 CEST; 02:30 does not exist.
    let berlin = cron_in("30 2 * * *", "Europe/Berlin");
    let fires = berlin.upcoming(ts("2027-03-27T00:00:00Z"), 3);
    // 27th 02:30 CET = 01:30Z; 28th: the gap, so once, right after it
    // (03:00 CEST = 01:00Z); 29th 02:30 CEST = 00:30Z.
    assert_eq!(
        fires,
        vec![
            ts("2027-03-27T01:30:00Z"),
            ts("2027-03-28T01:00:00Z"),
            ts("2027-03-29T00:30:00Z")
        ]
    );
    // America/New_York: 2027-03-14 02:00 EST → 03:00 EDT.
    let ny = cron_in("30 2 * * *", "America/New_York");
    assert_eq!(
        ny.upcoming(ts("2027-03-13T12:00:00Z"), 3),
        vec![
            ts("2027-03-14T07:00:00Z"),
            ts("2027-03-15T06:30:00Z"),
            ts("2027-03-16T06:30:00Z")
        ]
    );
    // An every-15-minutes job skips the instants that do not exist.
    let quarter = cron_in("*/15 * * * *", "Europe/Berlin");
    let fires = quarter.upcoming(ts("2027-03-28T00:30:00Z"), 4);
    // 01:45 CET (00:45Z), then 03:00 CEST (01:00Z): nothing in between.
    assert_eq!(
        fires,
        vec![
            ts("2027-03-28T00:45:00Z"),
            ts("2027-03-28T01:00:00Z"),
            ts("2027-03-28T01:15:00Z"),
            ts("2027-03-28T01:30:00Z")
        ]
    );
}

#[test]
fn fall_back_overlap_fires_a_fixed_time_once() {
    // Europe/Berlin: 2027-10-31 03:00 CEST → 02:00 CET; 02:30 happens twice.
    let berlin = cron_in("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        berlin.upcoming(ts("2027-10-30T12:00:00Z"), 2),
        vec![ts("2027-10-31T00:30:00Z"), ts("2027-11-01T01:30:00Z")]
    );
    // America/New_York: 2027-11-07 02:00 EDT → 01:00 EST; 01:30 twice.
    let ny = cron_in("30 1 * * *", "America/New_York");
    assert_eq!(
        ny.upcoming(ts("2027-11-06T12:00:00Z"), 2),
        vec![ts("2027-11-07T05:30:00Z"), ts("2027-11-08T06:30:00Z")]
    );
    // An hourly wildcard job fires in both passes of the repeated hour.
    let hourly = cron_in("0 * * * *", "America/New_York");
    assert_eq!(
        hourly.upcoming(ts("2027-11-07T04:30:00Z"), 3),
        vec![
            ts("2027-11-07T05:00:00Z"),
            ts("2027-11-07T06:00:00Z"),
            ts("2027-11-07T07:00:00Z")
        ]
    );
}

#[test]
fn jitter_is_bounded_and_stable() {
    let spec = ScheduleSpec {
        jitter: Duration::from_secs(30),
        ..ScheduleSpec::cron("* * * * *")
    };
    let at = ts("2027-01-01T00:00:00Z");
    let j = spec.jitter_for("a", at);
    assert!(j <= Duration::from_secs(30));
    assert_eq!(j, spec.jitter_for("a", at));
    let spread: std::collections::HashSet<_> = (0..50)
        .map(|m| spec.jitter_for("a", at.plus(Duration::from_secs(60 * m))))
        .collect();
    assert!(spread.len() > 40, "jitter does not vary: {spread:?}");
    assert_eq!(
        ScheduleSpec::cron("* * * * *").jitter_for("a", at),
        Duration::ZERO
    );
}

fn zones() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
    ])
}

fn exprs() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "30 2 * * *",
        "*/15 * * * *",
        "0 * * * *",
        "15 1,2,3 * * *",
        "*/20 * * * * *",
        "0 0 L * *",
        "0 12 * * MON-FRI",
    ])
}

/// Around the 2027 transitions of the zones above.
fn instants() -> impl Strategy<Value = Timestamp> {
    let base = NaiveDate::from_ymd_opt(2027, 3, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc().timestamp())
        .expect("a valid date");
    (0u64..300 * 24 * 3600).prop_map(move |s| {
        Timestamp::from_micros((u64::try_from(base).expect("positive") + s) * 1_000_000)
    })
}

/// Whether `t` is a fire of `expr` in `tz`: its local time matches the
/// expression, or `t` is the first instant after a spring-forward gap and
/// the expression matches a wall-clock minute the gap skipped (such a fire
/// runs once, right after the gap).
fn matches(expr: &str, tz: &str, t: Timestamp) -> bool {
    let spec = cron_in(expr, tz);
    let Ok(Compiled::Cron(cron, zone)) = spec.compile() else {
        return false;
    };
    let secs = i64::try_from(t.as_micros() / 1_000_000).expect("fits");
    let local = |secs: i64| {
        Utc.timestamp_opt(secs, 0)
            .single()
            .expect("valid")
            .with_timezone(&zone)
            .naive_local()
    };
    // Match on wall-clock fields: the same naive time read as UTC.
    let wall = |naive: chrono::NaiveDateTime| {
        cron.is_time_matching(&Utc.from_utc_datetime(&naive))
            .unwrap_or(false)
    };
    let at = local(secs);
    if wall(at) {
        return true;
    }
    let gap_start = local(secs - 1) + chrono::TimeDelta::seconds(1);
    let mut skipped = gap_start;
    while skipped < at {
        if wall(skipped) {
            return true;
        }
        skipped += chrono::TimeDelta::seconds(1);
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Monotone: the next fire is strictly later, and the one after that
    /// later still.
    #[test]
    fn next_fire_is_strictly_monotone(expr in exprs(), tz in zones(), t in instants()) {
        let spec = cron_in(expr, tz);
        let a = spec.next_after(t).expect("fires again");
        prop_assert!(a > t);
        let b = spec.next_after(a).expect("fires again");
        prop_assert!(b > a);
    }

    /// Never skipped: asking from any instant between a fire and the next
    /// gives that next fire; and a fixed-time job fires at most once a day.
    #[test]
    fn no_fire_is_skipped(expr in exprs(), tz in zones(), t in instants(), frac in 0.0f64..1.0) {
        let spec = cron_in(expr, tz);
        let a = spec.next_after(t).expect("fires");
        let b = spec.next_after(a).expect("fires");
        let gap = b.as_micros() - a.as_micros();
        let mid = Timestamp::from_micros(a.as_micros() + (gap as f64 * frac) as u64);
        if mid < b {
            prop_assert_eq!(spec.next_after(mid), Some(b));
        }
        prop_assert!(matches(expr, tz, a));
        if expr == "30 2 * * *" {
            prop_assert!(gap >= 22 * 3600 * 1_000_000, "{:?} then {:?}", a, b);
        }
    }

    /// Fixed intervals: exact multiples of the period plus the phase.
    #[test]
    fn intervals_are_exact(every in 1u64..100_000, phase_frac in 0.0f64..1.0, t in instants()) {
        let every_d = Duration::from_secs(every);
        let phase = Duration::from_secs((every as f64 * phase_frac) as u64).min(every_d - Duration::from_secs(1));
        let spec = ScheduleSpec::new(Recurrence::Every { every: every_d, phase });
        let a = spec.next_after(t).expect("fires");
        prop_assert!(a > t);
        prop_assert!(a.as_micros() - t.as_micros() <= every * 1_000_000);
        prop_assert_eq!((a.as_micros() - phase.as_micros() as u64) % (every * 1_000_000), 0);
    }
}
