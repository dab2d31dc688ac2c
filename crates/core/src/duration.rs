//! The one way a duration is shown to people (shell tables, agent log, messages): `108 ms`,
//! `4.2 s`, `42 s`, `3 min 20 s`, `2 h 05 min`, `3 d 04 h`. CSV and JSON keep the catalog's
//! interval text; this is for reading.

use std::time::Duration;

/// `secs` in the one human format (negative durations keep their sign).
pub fn human_secs(secs: f64) -> String {
    if !secs.is_finite() {
        return "-".into();
    }
    if secs < 0.0 {
        return format!("-{}", human_secs(-secs));
    }
    if secs < 1.0 {
        return format!("{} ms", (secs * 1000.0).round() as u64);
    }
    if secs < 10.0 {
        return format!("{:.1} s", (secs * 10.0).floor() / 10.0);
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {:02} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A [`Duration`] in the one human format.
pub fn human(d: Duration) -> String {
    human_secs(d.as_secs_f64())
}

/// Seconds of a PostgreSQL interval as `interval::text` prints it with the default
/// IntervalStyle (`00:00:00.108626`, `1 day 02:03:04`, `-00:00:01`, `3 days`); None for
/// anything else (months and years have no fixed length).
pub fn parse_pg_interval(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut words = s.split_whitespace().peekable();
    let mut seen = false;
    while let Some(w) = words.next() {
        if w.contains(':') {
            let (neg, hms) = match w.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, w.strip_prefix('+').unwrap_or(w)),
            };
            let parts: Vec<&str> = hms.split(':').collect();
            let [h, m, sec] = parts.as_slice() else {
                return None;
            };
            let v = h.parse::<f64>().ok()? * 3600.0
                + m.parse::<f64>().ok()? * 60.0
                + sec.parse::<f64>().ok()?;
            total += if neg { -v } else { v };
            seen = true;
            continue;
        }
        let n: f64 = w.parse().ok()?;
        let unit = words.next()?;
        let factor = match unit.trim_end_matches('s') {
            "day" => 86_400.0,
            "hour" => 3600.0,
            "min" | "minute" => 60.0,
            "sec" | "second" => 1.0,
            _ => return None,
        };
        total += n * factor;
        seen = true;
    }
    seen.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_format_from_milliseconds_to_days() {
        assert_eq!(human_secs(0.108_626), "109 ms");
        assert_eq!(human_secs(4.26), "4.2 s");
        assert_eq!(human_secs(42.4), "42 s");
        assert_eq!(human_secs(200.0), "3 min 20 s");
        assert_eq!(human_secs(7500.0), "2 h 05 min");
        assert_eq!(human_secs(3.0 * 86_400.0 + 4.0 * 3600.0), "3 d 04 h");
        assert_eq!(human_secs(-2.0), "-2.0 s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human(Duration::from_secs(30)), "30 s");
    }

    #[test]
    fn postgres_interval_text() {
        assert_eq!(parse_pg_interval("00:00:00.108626"), Some(0.108_626));
        assert_eq!(parse_pg_interval("1 day 02:03:04"), Some(93_784.0));
        assert_eq!(parse_pg_interval("2 days"), Some(172_800.0));
        assert_eq!(parse_pg_interval("-00:00:01"), Some(-1.0));
        assert_eq!(parse_pg_interval("1 mon"), None);
        assert_eq!(parse_pg_interval(""), None);
        assert_eq!(parse_pg_interval("fast"), None);
    }
}
