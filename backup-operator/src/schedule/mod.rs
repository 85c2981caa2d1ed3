//! Cron schedules read the way the Kubernetes CronJob controller reads them.
//!
//! Kubernetes accepts 5 fields (minute hour day-of-month month day-of-week,
//! Sunday = 0 or 7, names like `MON`/`JAN`) and the macros `@yearly`,
//! `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`. It
//! rejects `CRON_TZ=`/`TZ=` inside the schedule (the field is `timeZone`).
//! Extensions Kubernetes does not know (`L`, `W`, `#`, seconds, years) are
//! rejected here too, so that `nextRunTime` never promises a run the CronJob
//! controller would not make.

mod fields;
mod next;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use fields::Fields;

/// A validated schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    fields: Fields,
    tz: TimeZone,
}

/// Why a schedule was refused; the message is shown to the user as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// The cron expression is not valid crontab syntax.
    #[error("invalid schedule {schedule:?}: {reason}")]
    InvalidCron { schedule: String, reason: String },
    /// The time zone is not a known IANA name.
    #[error("unknown time zone {0:?}: use an IANA name such as Europe/Berlin")]
    UnknownTimeZone(String),
}

impl Schedule {
    /// Parses `schedule` (crontab syntax) in `time_zone` (IANA name; `None` = UTC).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let invalid = |reason: &str| ScheduleError::InvalidCron {
            schedule: schedule.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = schedule.trim();
        if trimmed.is_empty() {
            return Err(invalid("the schedule is empty"));
        }
        let upper = trimmed.to_ascii_uppercase();
        if upper.starts_with("CRON_TZ=") || upper.starts_with("TZ=") {
            return Err(invalid(
                "time zones inside the schedule are not supported; set spec.timeZone",
            ));
        }
        let pattern = match upper.as_str() {
            "@YEARLY" | "@ANNUALLY" => "0 0 1 1 *".to_string(),
            "@MONTHLY" => "0 0 1 * *".to_string(),
            "@WEEKLY" => "0 0 * * 0".to_string(),
            "@DAILY" | "@MIDNIGHT" => "0 0 * * *".to_string(),
            "@HOURLY" => "0 * * * *".to_string(),
            other if other.starts_with('@') => {
                return Err(invalid(
                    "unknown macro; use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly",
                ));
            }
            other => {
                let fields = other.split_whitespace().count();
                if fields != 5 {
                    return Err(invalid(&format!(
                        "expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
                    )));
                }
                if other.contains(['L', 'W', '#']) && !has_only_names(other) {
                    return Err(invalid(
                        "L, W and # are not supported by Kubernetes CronJobs",
                    ));
                }
                other.to_string()
            }
        };
        let fields = fields::parse(&pattern).map_err(|e| invalid(&e))?;
        let tz = match time_zone {
            None | Some("") | Some("UTC") | Some("Etc/UTC") => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|_| ScheduleError::UnknownTimeZone(name.to_string()))?
            }
        };
        Ok(Self { fields, tz })
    }

    /// The first run strictly after `after`, as the CronJob controller
    /// computes it (robfig/cron v3's walk, see `schedule/next.rs`): a wall-clock time that a DST jump skips
    /// is not run that day; one inside a repeated hour runs in both.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        next::next(&self.fields, &self.tz, after)
    }

    /// Seconds between the next two runs after `now`: the interval alerts
    /// compare the age of the last success with.
    pub fn interval_seconds(&self, now: Timestamp) -> Option<f64> {
        let first = self.next_after(now)?;
        let second = self.next_after(first)?;
        Some((second - first).get_seconds() as f64)
    }

    /// The newest run at or before `at`, but not before `not_before`; used to
    /// decide whether a run was missed (at most one catch-up, never a burst).
    pub fn last_due(&self, not_before: Timestamp, at: Timestamp) -> Option<Timestamp> {
        // Walk forward from a window before `at`, widened until it holds a
        // run (at most a few hundred steps for any schedule).
        const WINDOWS: [i64; 5] = [3_600, 86_400, 32 * 86_400, 367 * 86_400, 5 * 367 * 86_400];
        for w in WINDOWS {
            let from = Timestamp::from_second(at.as_second().saturating_sub(w))
                .ok()?
                .max(not_before);
            let Some(mut t) = self.next_after(from).filter(|t| *t <= at) else {
                if from == not_before {
                    return None;
                }
                continue;
            };
            while let Some(n) = self.next_after(t).filter(|n| *n <= at) {
                t = n;
            }
            return (t > not_before).then_some(t);
        }
        None
    }
}

/// `schedule` as written into a CronJob: the controller rejects day-of-week
/// `7`, so a day-of-week field using it is written as its days with Sunday
/// as `0`; anything else is kept as the user wrote it.
pub fn for_cronjob(schedule: &str) -> String {
    let trimmed = schedule.trim();
    let parts: Vec<&str> = trimmed.split_whitespace().collect();
    if let [mi, h, dom, mo, dow] = parts.as_slice()
        && let Ok(fixed) = fields::cronjob_field(dow)
        && fixed != *dow
    {
        return format!("{mi} {h} {dom} {mo} {fixed}");
    }
    trimmed.to_string()
}

/// True when every `L`/`W` in the pattern belongs to a day or month name
/// (`WED`, `JUL`, ...), which Kubernetes accepts.
fn has_only_names(pattern: &str) -> bool {
    const NAMES: [&str; 19] = [
        "SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "JAN", "FEB", "MAR", "APR", "MAY", "JUN",
        "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    let mut rest = pattern.to_string();
    for name in NAMES {
        rest = rest.replace(name, "");
    }
    !rest.contains(['L', 'W', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    fn next(schedule: &str, tz: Option<&str>, after: &str) -> String {
        Schedule::parse(schedule, tz)
            .expect("valid schedule")
            .next_after(ts(after))
            .expect("a next run")
            .to_string()
    }

    #[test]
    fn interval_is_the_gap_between_the_next_two_runs() {
        let at = ts("2026-01-01T03:07:00Z");
        let every = |s: &str| {
            Schedule::parse(s, None)
                .expect("valid")
                .interval_seconds(at)
        };
        assert_eq!(every("*/15 * * * *"), Some(900.0));
        assert_eq!(every("@daily"), Some(86_400.0));
        // Weekdays at 02:00: from Thursday 2026-01-01 the next two runs are
        // Friday and Monday; from Wednesday, Thursday and Friday.
        assert_eq!(every("0 2 * * 1-5"), Some(3.0 * 86_400.0));
        let wed = ts("2025-12-31T03:00:00Z");
        let weekdays = Schedule::parse("0 2 * * 1-5", None).expect("valid");
        assert_eq!(weekdays.interval_seconds(wed), Some(86_400.0));
    }

    #[test]
    fn five_fields_in_utc() {
        assert_eq!(
            next("0 2 * * *", None, "2026-01-01T03:00:00Z"),
            "2026-01-02T02:00:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", None, "2026-01-01T03:00:00Z"),
            "2026-01-01T03:15:00Z"
        );
    }

    #[test]
    fn macros() {
        assert_eq!(
            next("@daily", None, "2026-01-01T03:00:00Z"),
            "2026-01-02T00:00:00Z"
        );
        assert_eq!(
            next("@midnight", None, "2026-01-01T03:00:00Z"),
            "2026-01-02T00:00:00Z"
        );
        assert_eq!(
            next("@hourly", None, "2026-01-01T03:10:00Z"),
            "2026-01-01T04:00:00Z"
        );
        assert_eq!(
            next("@weekly", None, "2026-01-01T03:10:00Z"),
            "2026-01-04T00:00:00Z"
        );
        assert_eq!(
            next("@monthly", None, "2026-01-01T03:10:00Z"),
            "2026-02-01T00:00:00Z"
        );
        assert_eq!(
            next("@yearly", None, "2026-01-01T03:10:00Z"),
            "2027-01-01T00:00:00Z"
        );
    }

    #[test]
    fn sunday_is_zero_and_seven() {
        // 2026-01-01 is a Thursday; the next Sunday is the 4th.
        assert_eq!(
            next("0 0 * * 0", None, "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", None, "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * MON", None, "2026-01-01T00:00:00Z"),
            "2026-01-05T00:00:00Z"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_like_vixie_cron() {
        // Both restricted: either matches (the 15th, or any Monday).
        assert_eq!(
            next("0 0 15 * 1", None, "2026-01-01T00:00:00Z"),
            "2026-01-05T00:00:00Z"
        );
    }

    #[test]
    fn time_zone_shifts_the_run() {
        assert_eq!(
            next("0 2 * * *", Some("Europe/Berlin"), "2026-01-01T03:00:00Z"),
            "2026-01-02T01:00:00Z"
        );
        assert_eq!(
            next(
                "0 2 * * *",
                Some("America/New_York"),
                "2026-07-01T00:00:00Z"
            ),
            "2026-07-01T06:00:00Z"
        );
    }

    #[test]
    fn dst_spring_forward_skips_the_missing_hour() {
        // 2026-03-29 02:30 does not exist in Berlin; the next run is on the 30th.
        assert_eq!(
            next("30 2 * * *", Some("Europe/Berlin"), "2026-03-28T02:00:00Z"),
            "2026-03-30T00:30:00Z"
        );
        assert_eq!(
            next("30 2 * * *", Some("Europe/Berlin"), "2026-03-29T02:00:00Z"),
            "2026-03-30T00:30:00Z"
        );
    }

    #[test]
    fn dst_fall_back_runs_again_in_the_repeated_hour_as_the_controller_does() {
        // 2028-10-29 02:00 happens twice in Berlin (CEST, then CET): the
        // CronJob controller fires in both, so nextRunTime names both.
        let s = Schedule::parse("0 2 * * *", Some("Europe/Berlin")).expect("valid");
        let first = s.next_after(ts("2028-10-28T12:00:00Z")).expect("next");
        assert_eq!(first.to_string(), "2028-10-29T00:00:00Z");
        let second = s.next_after(first).expect("next");
        assert_eq!(second.to_string(), "2028-10-29T01:00:00Z");
        assert_eq!(
            s.next_after(second).expect("next").to_string(),
            "2028-10-30T01:00:00Z"
        );
        // America/New_York, 2026-11-01: 01:30 EDT and 01:30 EST.
        let ny = Schedule::parse("30 1 * * *", Some("America/New_York")).expect("valid");
        let a = ny.next_after(ts("2026-10-31T12:00:00Z")).expect("next");
        assert_eq!(a.to_string(), "2026-11-01T05:30:00Z");
        assert_eq!(
            ny.next_after(a).expect("next").to_string(),
            "2026-11-01T06:30:00Z"
        );
    }

    /// Next runs around every DST transition of 2026-2028 in five zones
    /// (Berlin, New York, Lord Howe's 30-minute shift, Santiago, Kolkata
    /// without DST), as robfig/cron v3 (the CronJob controller's library)
    /// computes them; regenerate with `hack/cron-vectors.sh`.
    #[test]
    fn next_runs_equal_the_cronjob_controllers_around_dst() {
        let data = include_str!("testdata/robfig-vectors.tsv");
        let mut checked = 0;
        let mut wrong = Vec::new();
        for line in data.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let [spec, zone, after, want] = f.as_slice() else {
                panic!("bad vector line {line:?}");
            };
            let s = Schedule::parse(spec, Some(zone)).expect("valid vector schedule");
            let after = Timestamp::from_second(after.parse().expect("secs")).expect("ts");
            let want: i64 = want.parse().expect("secs");
            let got = s.next_after(after).map_or(0, |t| t.as_second());
            if got != want {
                wrong.push(format!(
                    "{spec} {zone} after {after}: got {got}, robfig {want}"
                ));
            }
            checked += 1;
        }
        assert!(checked > 1000, "vectors present");
        assert!(
            wrong.is_empty(),
            "{} of {checked} differ:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }

    #[test]
    fn sunday_seven_is_written_as_zero_into_the_cronjob() {
        assert_eq!(for_cronjob(" 0 0 * * 7 "), "0 0 * * 0");
        assert_eq!(for_cronjob("0 0 * * 1-7"), "0 0 * * 0,1,2,3,4,5,6");
        assert_eq!(for_cronjob("0 0 * * 1-5"), "0 0 * * 1-5");
        assert_eq!(for_cronjob("@daily"), "@daily");
    }

    #[test]
    fn invalid_input_is_refused_with_a_reason() {
        for bad in [
            "",
            "* * * *",
            "0 0 * * * *",
            "61 * * * *",
            "CRON_TZ=UTC 0 0 * * *",
            "@every 1h",
            "0 0 L * *",
            "0 0 * * 5#2",
            "nonsense",
        ] {
            let err = Schedule::parse(bad, None).expect_err(bad);
            assert!(
                matches!(err, ScheduleError::InvalidCron { .. }),
                "{bad}: {err}"
            );
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn unknown_time_zone_is_refused() {
        let err = Schedule::parse("0 0 * * *", Some("Mars/Olympus")).expect_err("unknown tz");
        assert_eq!(err, ScheduleError::UnknownTimeZone("Mars/Olympus".into()));
    }

    #[test]
    fn last_due_finds_one_missed_run() {
        let s = Schedule::parse("0 * * * *", None).expect("valid");
        let due = s.last_due(ts("2026-01-01T00:30:00Z"), ts("2026-01-01T03:10:00Z"));
        assert_eq!(due, Some(ts("2026-01-01T03:00:00Z")));
        assert_eq!(
            s.last_due(ts("2026-01-01T03:00:00Z"), ts("2026-01-01T03:10:00Z")),
            None
        );
    }
}
