use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse().expect("test timestamp")
}

/// Applies restic's `forget` flags (`--keep-daily 7 ...`) to a policy.
fn policy_of(flags: &str, zone_name: &str) -> Policy {
    let mut p = Policy {
        zone: Some(zone(zone_name).expect("zone")),
        ..Policy::default()
    };
    let words: Vec<&str> = flags.split_whitespace().collect();
    for pair in words.chunks(2) {
        let v = pair[1];
        let n = || Some(v.parse::<u32>().expect("count"));
        match pair[0] {
            "--keep-last" => p.last = n(),
            "--keep-hourly" => p.hourly = n(),
            "--keep-daily" => p.daily = n(),
            "--keep-weekly" => p.weekly = n(),
            "--keep-monthly" => p.monthly = n(),
            "--keep-yearly" => p.yearly = n(),
            "--keep-within" => p.within = Some(v.parse().expect("within")),
            other => panic!("unknown flag {other}"),
        }
    }
    p
}

fn times_of(col: &str) -> Vec<Timestamp> {
    col.split_whitespace().map(ts).collect()
}

#[test]
fn decisions_equal_restic_0_18_on_the_recorded_lists() {
    let vectors = include_str!("../testdata/restic-forget-vectors.tsv");
    let mut cases = 0;
    for line in vectors.lines().filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [zone_name, flags, kept, removed] = cols[..] else {
            panic!("bad vector line {line:?}");
        };
        let want_keep = times_of(kept);
        let mut all = want_keep.clone();
        all.extend(times_of(removed));
        all.sort_by(|a, b| b.cmp(a));
        let p = policy_of(flags, zone_name);
        // `now` does not matter without max_age_days.
        let decided = keep(&all, &p, all[0]);
        let mut got: Vec<Timestamp> = all
            .iter()
            .zip(&decided)
            .filter(|(_, k)| **k)
            .map(|(t, _)| *t)
            .collect();
        let mut want = want_keep;
        want.sort_by(|a, b| b.cmp(a));
        got.sort_by(|a, b| b.cmp(a));
        let missing: Vec<_> = want.iter().filter(|t| !got.contains(t)).collect();
        let extra: Vec<_> = got.iter().filter(|t| !want.contains(t)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{zone_name} {flags}: restic keeps but we drop {missing:?}; we keep but restic drops {extra:?}"
        );
        cases += 1;
    }
    assert!(cases >= 50, "only {cases} recorded cases");
}

#[test]
fn within_parses_restic_durations() {
    let w: Within = "1y2m3d4h".parse().expect("parse");
    assert_eq!(
        w,
        Within {
            years: 1,
            months: 2,
            days: 3,
            hours: 4
        }
    );
    assert_eq!("36h".parse::<Within>().expect("36h").hours, 36);
    for bad in ["", "7", "7w", "d", "1y-2m"] {
        assert!(bad.parse::<Within>().is_err(), "{bad:?} accepted");
    }
}

#[test]
fn within_normalises_dates_as_go_does() {
    // 31 March minus one month is 2 March in a leap year (Feb 31 -> Mar 2).
    let tz = TimeZone::UTC;
    let newest = tz.to_datetime(ts("2024-03-31T10:00:00Z"));
    let w = Within {
        months: 1,
        ..Within::default()
    };
    assert_eq!(
        within_start(&newest, w, &tz),
        Some(ts("2024-03-02T10:00:00Z"))
    );
    let w = Within {
        days: 31,
        hours: 2,
        ..Within::default()
    };
    assert_eq!(
        within_start(&newest, w, &tz),
        Some(ts("2024-02-29T08:00:00Z"))
    );
}

#[test]
fn caps_apply_on_top_of_keep_rules() {
    // One snapshot a day for 30 days, newest first.
    let now = ts("2024-06-30T12:00:00Z");
    let times: Vec<Timestamp> = (0..30)
        .map(|d| {
            now.checked_sub(jiff::SignedDuration::from_hours(24 * d))
                .expect("t")
        })
        .collect();
    let count = |k: &[bool]| k.iter().filter(|k| **k).count();
    let daily = Policy {
        daily: Some(20),
        ..Policy::default()
    };
    assert_eq!(count(&keep(&times, &daily, now)), 20);
    let capped = Policy {
        max_count: Some(5),
        ..daily.clone()
    };
    let k = keep(&times, &capped, now);
    assert_eq!(count(&k), 5);
    assert!(k[..5].iter().all(|k| *k), "the newest five");
    let aged = Policy {
        max_age_days: Some(10),
        ..daily
    };
    assert_eq!(count(&keep(&times, &aged, now)), 11, "days 0..=10");
    // Caps alone keep the newest (the seed's maxBackups / maxDays).
    let seed = Policy {
        max_count: Some(7),
        ..Policy::default()
    };
    assert_eq!(count(&keep(&times, &seed, now)), 7);
    // The newest is kept even when it is older than max_age_days.
    let old = Policy {
        max_age_days: Some(1),
        ..Policy::default()
    };
    let later = now
        .checked_add(jiff::SignedDuration::from_hours(24 * 400))
        .expect("t");
    assert_eq!(keep(&times, &old, later), {
        let mut v = vec![false; 30];
        v[0] = true;
        v
    });
}

#[test]
fn buckets_follow_the_policy_zone() {
    // 23:30 UTC on two days is the next day in Berlin: the daily buckets
    // differ by zone, so the count of kept snapshots does too.
    let times = [
        ts("2024-06-02T23:30:00Z"),
        ts("2024-06-02T21:30:00Z"),
        ts("2024-06-01T23:30:00Z"),
        ts("2024-06-01T21:30:00Z"),
    ];
    let mut p = Policy {
        daily: Some(10),
        ..Policy::default()
    };
    // UTC: two days, the newest of each (0 and 2) plus the oldest.
    assert_eq!(keep(&times, &p, times[0]), [true, false, true, true]);
    p.zone = Some(zone("Europe/Berlin").expect("zone"));
    // Berlin (+02:00): 01:30 Jun 3, 23:30 Jun 2, 01:30 Jun 2, 23:30 Jun 1:
    // the second and third now share a day instead of the first and second.
    assert_eq!(keep(&times, &p, times[0]), [true, true, false, true]);
    assert!(zone("Mars/Olympus").is_err());
}

#[test]
fn the_oldest_is_kept_while_a_rule_has_count_left() {
    let times = [
        ts("2024-06-03T10:00:00Z"),
        ts("2024-06-01T10:30:00Z"),
        ts("2024-06-01T10:00:00Z"),
    ];
    let daily = |n| Policy {
        daily: Some(n),
        ..Policy::default()
    };
    assert_eq!(keep(&times, &daily(5), times[0]), [true, true, true]);
    assert_eq!(keep(&times, &daily(2), times[0]), [true, true, false]);
}
