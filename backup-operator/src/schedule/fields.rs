//! The five crontab fields, parsed the way the CronJob controller's parser
//! (robfig/cron v3's standard parser) reads them: numbers, `*`, `?`, ranges
//! `a-b`, steps `*/n`, `a/n` (= `a-max/n`) and `a-b/n`, comma lists, and
//! the names `JAN`-`DEC` / `SUN`-`SAT` in any case. Day-of-week is 0-6 for
//! the controller; 7 (also Sunday in crontab) is accepted here and written
//! as 0 into the CronJob ([`cronjob_field`]).

/// Set when the field was `*` or `?`: day-of-month and day-of-week then
/// combine with AND instead of OR (vixie cron's rule).
pub const STAR: u64 = 1 << 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    pub minute: u64,
    pub hour: u64,
    pub dom: u64,
    pub month: u64,
    pub dow: u64,
}

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
    what: &'static str,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const MINUTE: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
    what: "minute",
};
const HOUR: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
    what: "hour",
};
const DOM: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
    what: "day of month",
};
const MONTH: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &MONTHS,
    what: "month",
};
/// 7 is folded into 0 after parsing.
const DOW: Bounds = Bounds {
    min: 0,
    max: 7,
    names: &DAYS,
    what: "day of week",
};

pub fn parse(pattern: &str) -> Result<Fields, String> {
    let parts: Vec<&str> = pattern.split_whitespace().collect();
    let [mi, h, dom, mo, dow] = parts.as_slice() else {
        return Err(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
            parts.len()
        ));
    };
    let mut dow = field(dow, &DOW)?;
    if dow & (1 << 7) != 0 {
        dow = (dow & !(1 << 7)) | 1;
    }
    Ok(Fields {
        minute: field(mi, &MINUTE)?,
        hour: field(h, &HOUR)?,
        dom: field(dom, &DOM)?,
        month: field(mo, &MONTH)?,
        dow,
    })
}

fn number(s: &str, b: &Bounds) -> Result<u32, String> {
    let upper = s.to_ascii_uppercase();
    if let Some(i) = b.names.iter().position(|n| *n == upper) {
        // Month names count from 1, day names from 0.
        return Ok(i as u32 + b.min);
    }
    s.parse::<u32>()
        .map_err(|_| format!("{} {s:?} is not a number or name", b.what))
}

fn field(expr: &str, b: &Bounds) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in expr.split(',') {
        bits |= range(part, b)?;
    }
    Ok(bits)
}

fn range(expr: &str, b: &Bounds) -> Result<u64, String> {
    let (span, step) = match expr.split_once('/') {
        Some((span, step)) => {
            let step: u32 = step
                .parse()
                .map_err(|_| format!("{} step {step:?} is not a number", b.what))?;
            if step == 0 {
                return Err(format!("{} step must be at least 1", b.what));
            }
            (span, Some(step))
        }
        None => (expr, None),
    };
    // Day-of-week accepts 7 only when written; `*` and `a/n` end at 6.
    let top = if b.what == "day of week" { 6 } else { b.max };
    let (start, end, star) = if span == "*" || span == "?" {
        (b.min, top, true)
    } else if let Some((lo, hi)) = span.split_once('-') {
        (number(lo, b)?, number(hi, b)?, false)
    } else {
        let n = number(span, b)?;
        // `a/n` means `a-max/n`.
        (n, if step.is_some() { top } else { n }, false)
    };
    if start < b.min || end > b.max {
        return Err(format!(
            "{} {span:?} is outside {}-{}",
            b.what, b.min, b.max
        ));
    }
    if start > end {
        return Err(format!("{} range {span:?} runs backwards", b.what));
    }
    let step = step.unwrap_or(1);
    let mut bits = 0u64;
    let mut v = start;
    while v <= end {
        bits |= 1 << v;
        v += step;
    }
    // `*/n` with n > 1 is a list, not a star (the controller's rule).
    if star && step == 1 {
        bits |= STAR;
    }
    Ok(bits)
}

/// The day-of-week field as the CronJob controller accepts it: `7` (Sunday
/// in crontab) is rejected there, so a field that uses it is written as the
/// list of its days (0-6). Other fields are kept as the user wrote them.
pub fn cronjob_field(dow_expr: &str) -> Result<String, String> {
    let bits = field(dow_expr, &DOW)?;
    if bits & (1 << 7) == 0 {
        return Ok(dow_expr.to_string());
    }
    let days = (bits & !(1 << 7) & !STAR) | 1;
    let list: Vec<String> = (0..7)
        .filter(|d| days & (1 << d) != 0)
        .map(|d| d.to_string())
        .collect();
    Ok(list.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(list: &[u32]) -> u64 {
        list.iter().fold(0, |b, v| b | (1 << v))
    }

    #[test]
    fn fields_parse_like_the_cronjob_controller() {
        let f = parse("*/15 2-4 1,15 JAN-mar 1-5").expect("valid");
        assert_eq!(f.minute, bits(&[0, 15, 30, 45]));
        assert_eq!(f.hour, bits(&[2, 3, 4]));
        assert_eq!(f.dom, bits(&[1, 15]));
        assert_eq!(f.month, bits(&[1, 2, 3]));
        assert_eq!(f.dow, bits(&[1, 2, 3, 4, 5]));
        let f = parse("5/20 * ? * SUN,sat").expect("valid");
        assert_eq!(f.minute, bits(&[5, 25, 45]), "a/n is a-max/n");
        assert_eq!(f.hour & STAR, STAR);
        assert_eq!(f.dom & STAR, STAR, "? is a star");
        assert_eq!(f.dow, bits(&[0, 6]));
        assert_eq!(
            parse("* * * * 7").expect("7").dow,
            bits(&[0]),
            "7 is Sunday"
        );
        assert_eq!(parse("* * * * 5-7").expect("5-7").dow, bits(&[0, 5, 6]));
        assert_eq!(
            parse("* * */2 * *").expect("step").dom & STAR,
            0,
            "*/2 is no star"
        );
    }

    #[test]
    fn bad_fields_are_refused() {
        for bad in [
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
            "* * * * MON-",
            "* * * *",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sunday_seven_is_written_as_zero() {
        assert_eq!(cronjob_field("7").expect("ok"), "0");
        assert_eq!(cronjob_field("5-7").expect("ok"), "0,5,6");
        assert_eq!(cronjob_field("1-5").expect("ok"), "1-5", "unchanged");
        assert_eq!(cronjob_field("SUN").expect("ok"), "SUN");
    }
}
