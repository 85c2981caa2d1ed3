//! The next run after a time, computed the way the CronJob controller does
//! (robfig/cron v3's `SpecSchedule.Next` with Go's `time.Date`): the search
//! walks the fields in wall-clock time but steps hours and minutes as
//! elapsed time. So at a DST fall-back a schedule inside the repeated hour
//! runs again in it, a time that a spring-forward jump skips is not run that
//! day, and in 30-minute DST zones the runs move as the controller's do.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use super::fields::{Fields, STAR};

/// Wall-clock fields of an instant in `tz`.
struct Wall {
    year: i16,
    month: i8,
    day: i8,
    hour: i8,
    minute: i8,
    second: i8,
    weekday: i8,
}

fn wall(t: Timestamp, tz: &TimeZone) -> Wall {
    let z = t.to_zoned(tz.clone());
    Wall {
        year: z.year(),
        month: z.month(),
        day: z.day(),
        hour: z.hour(),
        minute: z.minute(),
        second: z.second(),
        weekday: z.weekday().to_sunday_zero_offset(),
    }
}

/// Go's `time.Date(y, m, d, h, 0, 0, 0, loc)`: out-of-range months and days
/// roll over; a wall time in a gap or overlap is resolved with the offset in
/// force at (wall time read as UTC), corrected once, as Go does.
fn go_date(
    year: i64,
    month: i64,
    day: i64,
    hms: (i64, i64, i64),
    tz: &TimeZone,
) -> Option<Timestamp> {
    let (y, m) = (
        year + (month - 1).div_euclid(12),
        (month - 1).rem_euclid(12) + 1,
    );
    let first = Date::new(i16::try_from(y).ok()?, m as i8, 1).ok()?;
    let epoch = Date::constant(1970, 1, 1);
    let days = (first - epoch).get_days() as i64 + (day - 1);
    let local = days * 86_400 + hms.0 * 3_600 + hms.1 * 60 + hms.2;
    let offset_at = |secs: i64| -> Option<i64> {
        Some(i64::from(
            tz.to_offset(Timestamp::from_second(secs).ok()?).seconds(),
        ))
    };
    let guess = offset_at(local)?;
    let utc = local - guess;
    let offset = match offset_at(utc)? {
        o if o == guess => guess,
        o => o,
    };
    Timestamp::from_second(local - offset).ok()
}

fn day_matches(f: &Fields, w: &Wall) -> bool {
    let dom = f.dom & (1 << w.day) != 0;
    let dow = f.dow & (1 << w.weekday) != 0;
    if f.dom & STAR != 0 || f.dow & STAR != 0 {
        dom && dow
    } else {
        dom || dow
    }
}

/// The first run strictly after `after`; `None` if there is none within
/// five years (the controller's limit too).
pub fn next(f: &Fields, tz: &TimeZone, after: Timestamp) -> Option<Timestamp> {
    // The next whole second after `after`.
    let mut t = Timestamp::from_second(after.as_second().checked_add(1)?).ok()?;
    let mut added = false;
    let year_limit = wall(t, tz).year + 5;
    'wrap: loop {
        let mut w = wall(t, tz);
        if w.year > year_limit {
            return None;
        }
        while f.month & (1 << w.month) == 0 {
            if !added {
                added = true;
                t = go_date(w.year.into(), w.month.into(), 1, (0, 0, 0), tz)?;
            }
            t = add_date(t, tz, 1, 0)?;
            w = wall(t, tz);
            if w.month == 1 {
                continue 'wrap;
            }
        }
        while !day_matches(f, &w) {
            if !added {
                added = true;
                t = go_date(w.year.into(), w.month.into(), w.day.into(), (0, 0, 0), tz)?;
            }
            t = add_date(t, tz, 0, 1)?;
            w = wall(t, tz);
            // Back to midnight when a DST jump moved the hour.
            if w.hour != 0 {
                let h = i64::from(w.hour);
                let shift = if h > 12 { 24 - h } else { -h };
                t = Timestamp::from_second(t.as_second() + shift * 3_600).ok()?;
                w = wall(t, tz);
            }
            if w.day == 1 {
                continue 'wrap;
            }
        }
        while f.hour & (1 << w.hour) == 0 {
            if !added {
                added = true;
                t = go_date(
                    w.year.into(),
                    w.month.into(),
                    w.day.into(),
                    (w.hour.into(), 0, 0),
                    tz,
                )?;
            }
            t = Timestamp::from_second(t.as_second() + 3_600).ok()?;
            w = wall(t, tz);
            if w.hour == 0 {
                continue 'wrap;
            }
        }
        while f.minute & (1 << w.minute) == 0 {
            if !added {
                added = true;
                t = Timestamp::from_second(t.as_second().div_euclid(60) * 60).ok()?;
            }
            t = Timestamp::from_second(t.as_second() + 60).ok()?;
            w = wall(t, tz);
            if w.minute == 0 {
                continue 'wrap;
            }
        }
        // The seconds field of a 5-field schedule is 0.
        while w.second != 0 {
            added = true;
            t = Timestamp::from_second(t.as_second() + 1).ok()?;
            w = wall(t, tz);
            if w.second == 0 {
                continue 'wrap;
            }
        }
        return Some(t);
    }
}

/// Go's `t.AddDate(0, months, days)`: the wall date moves, the wall clock
/// (hour, minute, second) stays, re-resolved in the zone.
fn add_date(t: Timestamp, tz: &TimeZone, months: i64, days: i64) -> Option<Timestamp> {
    let w = wall(t, tz);
    go_date(
        i64::from(w.year),
        i64::from(w.month) + months,
        i64::from(w.day) + days,
        (w.hour.into(), w.minute.into(), w.second.into()),
        tz,
    )
}
