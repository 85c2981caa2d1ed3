//! Cron schedules read the way the Kubernetes CronJob controller reads them.
//!
//! Kubernetes accepts 5 fields (minute hour day-of-month month day-of-week,
//! Sunday = 0 or 7, names like `MON`/`JAN`) and the macros `@yearly`,
//! `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`. It
//! rejects `CRON_TZ=`/`TZ=` inside the schedule (the field is `timeZone`).
//! Extensions Kubernetes does not know (`L`, `W`, `#`, seconds, years) are
//! rejected here too, so that `nextRunTime` never promises a run the CronJob
//! controller would not make.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A validated schedule in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
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
            "@MIDNIGHT" => "0 0 * * *".to_string(),
            "@YEARLY" | "@ANNUALLY" | "@MONTHLY" | "@WEEKLY" | "@DAILY" | "@HOURLY" => {
                upper.clone()
            }
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
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .sloppy_ranges(true)
            .build()
            .parse(&pattern)
            .map_err(|e| invalid(&e.to_string()))?;
        let tz = match time_zone {
            None | Some("") | Some("UTC") | Some("Etc/UTC") => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|_| ScheduleError::UnknownTimeZone(name.to_string()))?
            }
        };
        Ok(Self { cron, tz })
    }

    /// The first run strictly after `after`.
    ///
    /// A wall-clock time that a DST jump skips is not run that day, as the
    /// CronJob controller (robfig/cron) does; croner would run it at the first
    /// instant after the jump, so such candidates are passed over.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let mut start = after.to_zoned(self.tz.clone());
        for _ in 0..8 {
            let candidate = self.cron.find_next_occurrence(&start, false).ok()?;
            if self.cron.is_time_matching(&candidate).unwrap_or(false) {
                return Some(candidate.timestamp());
            }
            start = candidate;
        }
        None
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
        let start = at.to_zoned(self.tz.clone());
        let prev = self
            .cron
            .find_previous_occurrence(&start, true)
            .ok()?
            .timestamp();
        (prev > not_before).then_some(prev)
    }
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
    fn dst_fall_back_runs_once() {
        // 2026-10-25 02:30 happens twice in Berlin (CEST then CET): one run only.
        let s = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).expect("valid");
        let first = s.next_after(ts("2026-10-24T12:00:00Z")).expect("next");
        assert_eq!(first.to_string(), "2026-10-25T00:30:00Z");
        let second = s.next_after(first).expect("next");
        assert!(second >= ts("2026-10-26T00:00:00Z"), "ran twice: {second}");
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
