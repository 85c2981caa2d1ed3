//! Which snapshots retention keeps: restic's `forget --keep-*` rules
//! (last, hourly, daily, weekly, monthly, yearly, within) with restic
//! 0.18's decisions, plus the seed's caps (`maxBackups`, `maxDays`).
//!
//! How the two kinds combine (all limits apply together): a snapshot is
//! kept when a keep rule keeps it (every snapshot, when no keep rule is
//! set), it is not older than `max_age_days`, and it is among the newest
//! `max_count` of the snapshots that pass the first two tests. The newest
//! snapshot is always kept.
//!
//! Buckets (hour, day, ISO week, month, year) are taken in the policy's
//! time zone. restic takes them in the offset each snapshot recorded; for
//! snapshots written in that zone both are the same wall-clock time
//! (`testdata/restic-forget-vectors.tsv`, written by
//! `hack/retention-vectors.sh`, holds restic's own decisions).

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

/// A `--keep-within` span: restic's `1y2m3d4h` (years, months, days, hours).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Within {
    pub years: i32,
    pub months: i32,
    pub days: i32,
    pub hours: i32,
}

impl std::str::FromStr for Within {
    type Err = String;

    /// Parses restic's duration syntax: numbers each followed by one of
    /// `y`, `m`, `d`, `h` (e.g. `7d`, `1y6m`, `36h`).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut w = Within::default();
        let mut num = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: i32 = num
                .parse()
                .map_err(|_| format!("keep-within {s:?}: expected a number before {c:?}"))?;
            num.clear();
            match c {
                'y' => w.years = n,
                'm' => w.months = n,
                'd' => w.days = n,
                'h' => w.hours = n,
                _ => {
                    return Err(format!(
                        "keep-within {s:?}: unknown unit {c:?} (use y, m, d, h)"
                    ));
                }
            }
        }
        if !num.is_empty() {
            return Err(format!("keep-within {s:?}: {num} has no unit (y, m, d, h)"));
        }
        if w == Within::default() {
            return Err(format!("keep-within {s:?}: empty duration"));
        }
        Ok(w)
    }
}

/// The retention of one policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    pub within: Option<Within>,
    /// `maxBackups`: at most this many snapshots are kept.
    pub max_count: Option<u32>,
    /// `maxDays`: snapshots older than this (from now) are not kept.
    pub max_age_days: Option<u32>,
    /// Zone of the buckets (the policy's `timeZone`; UTC by default).
    pub zone: Option<TimeZone>,
}

impl Policy {
    /// Whether any rule or cap is set (forget does nothing otherwise).
    pub fn is_set(&self) -> bool {
        self.has_keep_rules() || self.max_count.is_some() || self.max_age_days.is_some()
    }

    fn has_keep_rules(&self) -> bool {
        [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ]
        .iter()
        .any(|n| n.is_some_and(|n| n > 0))
            || self.within.is_some()
    }
}

/// Resolves an IANA zone name for [`Policy::zone`].
pub fn zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name)
        .map_err(|e| format!("time zone {name:?}: {e} (use an IANA name such as Europe/Berlin)"))
}

/// For `times` sorted newest first, whether each is kept.
pub fn keep(times: &[Timestamp], p: &Policy, now: Timestamp) -> Vec<bool> {
    let tz = p.zone.clone().unwrap_or(TimeZone::UTC);
    let local: Vec<DateTime> = times.iter().map(|t| tz.to_datetime(*t)).collect();
    let mut kept = if p.has_keep_rules() {
        keep_rules(times, &local, p, &tz)
    } else {
        vec![true; times.len()]
    };
    if let Some(days) = p.max_age_days {
        let limit = now.as_second() - i64::from(days) * 86_400;
        for (k, t) in kept.iter_mut().zip(times) {
            *k &= t.as_second() >= limit;
        }
    }
    if let Some(max) = p.max_count {
        let mut n = 0u32;
        for k in kept.iter_mut().filter(|k| **k) {
            n += 1;
            *k = n <= max.max(1);
        }
    }
    if let Some(first) = kept.first_mut() {
        *first = true;
    }
    kept
}

/// restic 0.18's `ApplyPolicy` for the keep rules: walking newest first,
/// each rule with count left keeps a snapshot whose bucket differs from the
/// one it kept last, and the oldest snapshot while it has count left.
fn keep_rules(times: &[Timestamp], local: &[DateTime], p: &Policy, tz: &TimeZone) -> Vec<bool> {
    type Bucket = fn(&DateTime, usize) -> i64;
    let rules: [(Option<u32>, Bucket); 6] = [
        (p.last, |_, nr| nr as i64),
        (p.hourly, |t, _| ymd(t) * 100 + i64::from(t.hour())),
        (p.daily, |t, _| ymd(t)),
        (p.weekly, |t, _| {
            let w = t.date().iso_week_date();
            i64::from(w.year()) * 100 + i64::from(w.week())
        }),
        (p.monthly, |t, _| {
            i64::from(t.year()) * 100 + i64::from(t.month())
        }),
        (p.yearly, |t, _| i64::from(t.year())),
    ];
    let mut left: Vec<u32> = rules.iter().map(|r| r.0.unwrap_or(0)).collect();
    let mut last: Vec<Option<i64>> = vec![None; rules.len()];
    let within_from = p
        .within
        .zip(local.first())
        .and_then(|(w, newest)| within_start(newest, w, tz));
    let n = times.len();
    (0..n)
        .map(|nr| {
            let mut keep = within_from.is_some_and(|from| times[nr] > from);
            for (i, (_, bucket)) in rules.iter().enumerate() {
                if left[i] == 0 {
                    continue;
                }
                let val = bucket(&local[nr], nr);
                if last[i] != Some(val) || nr == n - 1 {
                    keep = true;
                    last[i] = Some(val);
                    left[i] -= 1;
                }
            }
            keep
        })
        .collect()
}

fn ymd(t: &DateTime) -> i64 {
    i64::from(t.year()) * 10_000 + i64::from(t.month()) * 100 + i64::from(t.day())
}

/// `newest.AddDate(-y, -m, -d).Add(-h hours)` as Go computes it: the date
/// fields are subtracted and then normalised (31 March minus one month is
/// 2 or 3 March, not 29 February), the wall-clock time is kept.
fn within_start(local: &DateTime, w: Within, tz: &TimeZone) -> Option<Timestamp> {
    let months = i64::from(local.year()) * 12 + i64::from(local.month())
        - 1
        - i64::from(w.years) * 12
        - i64::from(w.months);
    let first = Date::new(
        i16::try_from(months.div_euclid(12)).ok()?,
        i8::try_from(months.rem_euclid(12) + 1).ok()?,
        1,
    )
    .ok()?;
    let offset_days = i64::from(local.day()) - 1 - i64::from(w.days);
    let date = first
        .checked_add(jiff::Span::new().days(offset_days))
        .ok()?;
    let start = tz
        .to_ambiguous_zoned(date.to_datetime(local.time()))
        .compatible()
        .ok()?;
    let shift = jiff::SignedDuration::from_hours(i64::from(w.hours));
    start.timestamp().checked_sub(shift).ok()
}

#[cfg(test)]
mod tests;
