//! The "random minute/hour inside the node's configured interval" rule of PgBackMan.
//!
//! A node's configuration holds `backup_minutes_interval` (e.g. `01-59`) and
//! `backup_hours_interval` (e.g. `01-06`). A backup definition registered without an explicit
//! minute or hour gets one picked uniformly inside the interval, so that many definitions spread
//! their load. The random number is passed in: [`HourMinuteInterval::pick`] is deterministic.

use std::fmt;

/// Which kind of interval: minutes (0-59) or hours (0-23).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntervalKind {
    /// Minutes of the hour, 0-59.
    Minutes,
    /// Hours of the day, 0-23.
    Hours,
}

impl IntervalKind {
    /// Largest value of the kind (59 or 23).
    pub fn max(self) -> u32 {
        match self {
            IntervalKind::Minutes => 59,
            IntervalKind::Hours => 23,
        }
    }

    fn name(self) -> &'static str {
        match self {
            IntervalKind::Minutes => "minutes",
            IntervalKind::Hours => "hours",
        }
    }

    fn example(self) -> &'static str {
        match self {
            IntervalKind::Minutes => "01-59",
            IntervalKind::Hours => "01-06",
        }
    }
}

/// An interval text is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {kind_name} interval \"{value}\": {reason}; write it as lo-hi with lo <= hi, from 0 to {max} (e.g. \"{example}\")",
    kind_name = kind.name(), max = kind.max(), example = kind.example()
)]
pub struct IntervalError {
    /// Minutes or hours.
    pub kind: IntervalKind,
    /// The text as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// An inclusive range `lo..=hi` of minutes or hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HourMinuteInterval {
    lo: u32,
    hi: u32,
}

impl HourMinuteInterval {
    /// Builds an interval; `None` unless `lo <= hi <= kind.max()`.
    pub fn new(kind: IntervalKind, lo: u32, hi: u32) -> Option<HourMinuteInterval> {
        (lo <= hi && hi <= kind.max()).then_some(HourMinuteInterval { lo, hi })
    }

    /// Lowest value.
    pub fn lo(&self) -> u32 {
        self.lo
    }

    /// Highest value.
    pub fn hi(&self) -> u32 {
        self.hi
    }

    /// How many values the interval holds (`hi - lo + 1`).
    pub fn len(&self) -> u32 {
        self.hi - self.lo + 1
    }

    /// Always false: an interval holds at least one value.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `v` lies in the interval.
    pub fn contains(&self, v: u32) -> bool {
        (self.lo..=self.hi).contains(&v)
    }

    /// Picks a value from `random`: `random % len + lo`. Deterministic; uniform over the
    /// interval when `random` is uniform over `u32` (the bias is below 1e-7).
    pub fn pick(&self, random: u32) -> u32 {
        random % self.len() + self.lo
    }
}

impl fmt::Display for HourMinuteInterval {
    /// Zero-padded `lo-hi`, e.g. `01-59`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}-{:02}", self.lo, self.hi)
    }
}

/// Parses a minutes interval (`"01-59"`, or one number `"5"` meaning `5-5`), values 0-59.
pub fn parse_minutes_interval(s: &str) -> Result<HourMinuteInterval, IntervalError> {
    parse_interval(IntervalKind::Minutes, s)
}

/// Parses an hours interval (`"01-06"`, or one number `"3"` meaning `3-3`), values 0-23.
pub fn parse_hours_interval(s: &str) -> Result<HourMinuteInterval, IntervalError> {
    parse_interval(IntervalKind::Hours, s)
}

/// Parses an interval of the given kind; surrounding whitespace is ignored.
pub fn parse_interval(kind: IntervalKind, s: &str) -> Result<HourMinuteInterval, IntervalError> {
    let err = |reason: String| IntervalError {
        kind,
        value: s.to_string(),
        reason,
    };
    let text = s.trim();
    if text.is_empty() {
        return Err(err("it is empty".into()));
    }
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let number = |part: &str| -> Result<u32, IntervalError> {
        if part.is_empty() {
            return Err(err("a bound is missing (numbers cannot be negative)".into()));
        }
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(err(format!("\"{part}\" is not a number")));
        }
        let n: u32 = part.parse().unwrap_or(u32::MAX);
        if n > kind.max() {
            return Err(err(format!("{part} is out of range 0-{}", kind.max())));
        }
        Ok(n)
    };
    let lo = number(a)?;
    let hi = number(b)?;
    if lo > hi {
        return Err(err(format!("{a} is greater than {b}")));
    }
    Ok(HourMinuteInterval { lo, hi })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_intervals() {
        let cases: &[(IntervalKind, &str, u32, u32, &str)] = &[
            (IntervalKind::Minutes, "01-59", 1, 59, "01-59"),
            (IntervalKind::Minutes, "0-59", 0, 59, "00-59"),
            (IntervalKind::Minutes, "5", 5, 5, "05-05"),
            (IntervalKind::Minutes, " 10-20 ", 10, 20, "10-20"),
            (IntervalKind::Minutes, "59-59", 59, 59, "59-59"),
            (IntervalKind::Minutes, "000-0059", 0, 59, "00-59"),
            (IntervalKind::Hours, "01-06", 1, 6, "01-06"),
            (IntervalKind::Hours, "0-23", 0, 23, "00-23"),
            (IntervalKind::Hours, "23", 23, 23, "23-23"),
        ];
        for (kind, text, lo, hi, shown) in cases {
            let i = parse_interval(*kind, text).unwrap();
            assert_eq!((i.lo(), i.hi()), (*lo, *hi), "{text}");
            assert_eq!(i.to_string(), *shown);
            assert_eq!(parse_interval(*kind, &i.to_string()).unwrap(), i);
        }
        assert_eq!(parse_minutes_interval("01-59").unwrap().len(), 59);
        assert_eq!(parse_hours_interval("01-06").unwrap().to_string(), "01-06");
    }

    #[test]
    fn rejects_bad_intervals() {
        let cases: &[(IntervalKind, &str, &str)] = &[
            (IntervalKind::Minutes, "60-70", "60 is out of range 0-59"),
            (IntervalKind::Minutes, "60", "60 is out of range 0-59"),
            (IntervalKind::Minutes, "5-1", "5 is greater than 1"),
            (IntervalKind::Minutes, "a-b", "\"a\" is not a number"),
            (IntervalKind::Minutes, "", "it is empty"),
            (IntervalKind::Minutes, "   ", "it is empty"),
            (IntervalKind::Minutes, "-1-5", "a bound is missing"),
            (IntervalKind::Minutes, "-5", "a bound is missing"),
            (IntervalKind::Minutes, "5-", "a bound is missing"),
            (IntervalKind::Minutes, "1-2-3", "\"2-3\" is not a number"),
            (IntervalKind::Minutes, "1 - 5", "\"1 \" is not a number"),
            (IntervalKind::Minutes, "+1-5", "\"+1\" is not a number"),
            (IntervalKind::Minutes, "99999999999-1", "out of range"),
            (IntervalKind::Hours, "01-24", "24 is out of range 0-23"),
            (IntervalKind::Hours, "*", "\"*\" is not a number"),
        ];
        for (kind, text, why) in cases {
            let e = parse_interval(*kind, text).unwrap_err();
            assert!(e.reason.contains(why), "{text:?}: {}", e.reason);
            assert_eq!(e.value, *text);
            let shown = e.to_string();
            assert!(shown.contains("write it as lo-hi"), "{shown}");
        }
        assert_eq!(
            parse_minutes_interval("60-70").unwrap_err().to_string(),
            "invalid minutes interval \"60-70\": 60 is out of range 0-59; write it as lo-hi with lo <= hi, from 0 to 59 (e.g. \"01-59\")"
        );
        assert!(
            parse_hours_interval("5-1")
                .unwrap_err()
                .to_string()
                .contains("e.g. \"01-06\"")
        );
    }

    #[test]
    fn pick_is_in_range_and_reaches_every_value() {
        for kind in [IntervalKind::Minutes, IntervalKind::Hours] {
            for lo in 0..=kind.max() {
                for hi in lo..=kind.max() {
                    let i = HourMinuteInterval::new(kind, lo, hi).unwrap();
                    let mut seen = vec![false; (kind.max() + 1) as usize];
                    // Consecutive randoms cover every residue; extremes too.
                    let randoms = (0..i.len() * 2).chain([u32::MAX, u32::MAX - 1, 1 << 31]);
                    for r in randoms {
                        let v = i.pick(r);
                        assert!(i.contains(v), "{i} picked {v} from {r}");
                        assert_eq!(v, r % (hi - lo + 1) + lo);
                        seen[v as usize] = true;
                    }
                    let reached: Vec<u32> =
                        (0..=kind.max()).filter(|v| seen[*v as usize]).collect();
                    assert_eq!(reached, (lo..=hi).collect::<Vec<_>>(), "{i}");
                }
            }
        }
    }

    #[test]
    fn pick_is_uniform_over_consecutive_randoms() {
        let i = parse_minutes_interval("01-59").unwrap();
        let mut counts = [0u32; 60];
        for r in 0..59 * 100 {
            counts[i.pick(r) as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        assert!(counts[1..].iter().all(|c| *c == 100));
    }

    #[test]
    fn new_checks_bounds() {
        assert!(HourMinuteInterval::new(IntervalKind::Hours, 0, 23).is_some());
        assert!(HourMinuteInterval::new(IntervalKind::Hours, 0, 24).is_none());
        assert!(HourMinuteInterval::new(IntervalKind::Minutes, 6, 5).is_none());
        assert!(
            !HourMinuteInterval::new(IntervalKind::Minutes, 5, 5)
                .unwrap()
                .is_empty()
        );
    }
}
