//! The shell's display zone: listings print times in it, with their UTC offset, and a time the
//! user types without a zone is read in it. It is the local zone unless `[shell] timezone` or
//! `set timezone=…` names an IANA zone. CSV and JSON carry ISO 8601 times with an offset (UTC).
//!
//! One display zone per process (as `$TZ` is): rendering has no session, so the zone lives here.

use std::sync::RwLock;

use anyhow::{Result, bail};
use chrono::{DateTime, FixedOffset, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// A display zone: an IANA zone, or the host's local zone when it has no IANA name we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Iana(Tz),
    Local,
}

impl std::fmt::Display for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Zone::Iana(tz) => f.write_str(tz.name()),
            Zone::Local => f.write_str("local time of this host"),
        }
    }
}

static DISPLAY: RwLock<Option<Zone>> = RwLock::new(None);

/// The display zone now (the local zone until one is set; looked up once, not per cell).
pub fn display() -> Zone {
    if let Some(z) = DISPLAY.read().ok().and_then(|z| *z) {
        return z;
    }
    let z = local_zone();
    set_display(z);
    z
}

pub fn set_display(z: Zone) {
    if let Ok(mut d) = DISPLAY.write() {
        *d = Some(z);
    }
}

/// The host's zone: `$TZ`, else /etc/timezone, else the /etc/localtime link, as an IANA name.
pub fn local_zone() -> Zone {
    let from_tz = std::env::var("TZ")
        .ok()
        .map(|v| v.trim_start_matches(':').to_string());
    let from_file = || {
        std::fs::read_to_string("/etc/timezone")
            .ok()
            .map(|s| s.trim().to_string())
    };
    let from_link = || {
        let p = std::fs::read_link("/etc/localtime").ok()?;
        let s = p.to_string_lossy().into_owned();
        s.split_once("zoneinfo/").map(|(_, n)| n.to_string())
    };
    if let Some(v) = &from_tz {
        // A TZ we cannot name (POSIX rules such as "CET-1CEST") is still honoured by Local.
        return v.parse().map_or(Zone::Local, Zone::Iana);
    }
    from_file()
        .or_else(from_link)
        .and_then(|n| n.parse().ok())
        .map_or(Zone::Local, Zone::Iana)
}

/// Parses a `timezone` setting: an IANA name (case as in the database, `UTC` too), or `local`.
pub fn parse_zone(name: &str) -> Result<Zone> {
    let n = name.trim();
    if n.is_empty() || n.eq_ignore_ascii_case("local") {
        return Ok(local_zone());
    }
    if let Ok(tz) = n.parse::<Tz>() {
        return Ok(Zone::Iana(tz));
    }
    // Case slips are common ("europe/oslo"): say which name was meant.
    let close = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|t| t.name().eq_ignore_ascii_case(n))
        .map(|t| format!("; did you mean {}?", t.name()))
        .unwrap_or_default();
    bail!(
        "time zone {} is not an IANA time zone name{close}\nHINT: use a name such as Europe/Oslo, America/New_York or UTC (the names in /usr/share/zoneinfo), or local",
        pgbackman_core::text::quote(n)
    )
}

impl Zone {
    fn offset_at(&self, t: &DateTime<Utc>) -> FixedOffset {
        match self {
            Zone::Iana(tz) => tz.offset_from_utc_datetime(&t.naive_utc()).fix(),
            Zone::Local => chrono::Local.offset_from_utc_datetime(&t.naive_utc()).fix(),
        }
    }

    /// `t` in this zone, for a table cell or a message: `2026-12-01 02:00:00+01:00`.
    pub fn show(&self, t: &DateTime<Utc>) -> String {
        t.with_timezone(&self.offset_at(t))
            .format("%Y-%m-%d %H:%M:%S%:z")
            .to_string()
    }

    /// A wall-clock time in this zone. A time that occurs twice (clocks set back) is the first;
    /// one that does not occur (clocks set forward) is refused.
    fn resolve(&self, naive: NaiveDateTime, text: &str) -> Result<DateTime<Utc>> {
        let r: LocalResult<DateTime<Utc>> = match self {
            Zone::Iana(tz) => tz
                .from_local_datetime(&naive)
                .map(|t| t.with_timezone(&Utc)),
            Zone::Local => chrono::Local
                .from_local_datetime(&naive)
                .map(|t| t.with_timezone(&Utc)),
        };
        match r {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t),
            LocalResult::None => bail!(
                "{} does not exist in {self} (the clocks jump forward over it)\nHINT: give a time outside the change, or one with an offset such as 2026-03-29T02:30:00+01:00",
                pgbackman_core::text::quote(text)
            ),
        }
    }
}

/// A time the user typed, and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Typed {
    pub at: DateTime<Utc>,
    /// The zone it was read in when it named none (the display zone); None when it named one.
    pub read_in: Option<Zone>,
}

impl Typed {
    /// For a confirmation: the instant in the display zone, and how the text was read.
    pub fn describe(&self) -> String {
        match self.read_in {
            Some(z) => format!("{} (read in {z})", z.show(&self.at)),
            None => format!("{} (as given)", display().show(&self.at)),
        }
    }
}

const WALL: [&str; 5] = [
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y%m%d%H%M",
];

/// Parses a typed time in `zone`: RFC 3339 (with its offset), or a wall-clock time
/// (`YYYY-MM-DD HH:MM[:SS]`, or a date alone at midnight when `date_only` allows it) followed
/// by an optional zone: an IANA name, `UTC`, `Z` or an offset such as `+02:00`.
pub fn parse_typed(v: &str, zone: Zone, date_only: bool) -> Result<Option<Typed>> {
    let v = v.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(Some(Typed {
            at: t.with_timezone(&Utc),
            read_in: None,
        }));
    }
    // A trailing word that names a zone takes the place of the display zone.
    let (wall, named) = match v.rsplit_once(' ') {
        Some((w, z)) => match named_zone(z) {
            Some(z) => (w.trim(), Some(z)),
            None => (v, None),
        },
        None => (v, None),
    };
    let naive = WALL
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(wall, f).ok())
        .or_else(|| {
            date_only
                .then(|| chrono::NaiveDate::parse_from_str(wall, "%Y-%m-%d").ok())
                .flatten()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        });
    let Some(naive) = naive else {
        return Ok(None);
    };
    Ok(Some(match named {
        Some(Named::Fixed(off)) => Typed {
            at: off
                .from_local_datetime(&naive)
                .single()
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|| naive.and_utc()),
            read_in: None,
        },
        Some(Named::Zone(z)) => Typed {
            at: z.resolve(naive, v)?,
            read_in: None,
        },
        None => Typed {
            at: zone.resolve(naive, v)?,
            read_in: Some(zone),
        },
    }))
}

enum Named {
    Fixed(FixedOffset),
    Zone(Zone),
}

fn named_zone(z: &str) -> Option<Named> {
    if z == "Z" || z.eq_ignore_ascii_case("UTC") {
        return Some(Named::Fixed(FixedOffset::east_opt(0)?));
    }
    if let Some(sign) = z
        .strip_prefix('+')
        .map(|r| (1, r))
        .or_else(|| z.strip_prefix('-').map(|r| (-1, r)))
    {
        let (s, rest) = sign;
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        if digits.len() == 4 || digits.len() == 2 {
            let h: i32 = digits.get(0..2)?.parse().ok()?;
            let m: i32 = digits
                .get(2..)
                .filter(|m| !m.is_empty())
                .map_or(Some(0), |m| m.parse().ok())?;
            return FixedOffset::east_opt(s * (h * 3600 + m * 60)).map(Named::Fixed);
        }
        return None;
    }
    z.parse::<Tz>().ok().map(|t| Named::Zone(Zone::Iana(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America::New_York, Europe::Oslo};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn wall_clock_is_read_in_the_display_zone() {
        let t = parse_typed("2026-12-01 02:00", Zone::Iana(Oslo), false)
            .unwrap()
            .unwrap();
        assert_eq!(t.at, at("2026-12-01T01:00:00Z"));
        assert_eq!(t.read_in, Some(Zone::Iana(Oslo)));
        assert_eq!(
            t.describe(),
            "2026-12-01 02:00:00+01:00 (read in Europe/Oslo)"
        );
    }

    #[test]
    fn explicit_zones_are_taken_as_given() {
        let z = Zone::Iana(Oslo);
        for (text, utc) in [
            ("2026-12-01T02:00:00-05:00", "2026-12-01T07:00:00Z"),
            ("2026-12-01 02:00 America/New_York", "2026-12-01T07:00:00Z"),
            ("2026-12-01 02:00 UTC", "2026-12-01T02:00:00Z"),
            ("2026-12-01 02:00 +05:30", "2026-11-30T20:30:00Z"),
            ("2026-12-01 02:00:00 -0500", "2026-12-01T07:00:00Z"),
        ] {
            let t = parse_typed(text, z, false).unwrap().unwrap();
            assert_eq!(t.at, at(utc), "{text}");
            assert_eq!(t.read_in, None, "{text}");
        }
        let _ = New_York;
    }

    #[test]
    fn dates_alone_and_gaps() {
        let z = Zone::Iana(Oslo);
        assert!(parse_typed("2026-12-01", z, false).unwrap().is_none());
        let t = parse_typed("2026-12-01", z, true).unwrap().unwrap();
        assert_eq!(t.at, at("2026-11-30T23:00:00Z"));
        let e = parse_typed("2026-03-29 02:30", z, false).unwrap_err();
        assert!(
            e.to_string().contains("does not exist in Europe/Oslo"),
            "{e}"
        );
        assert!(parse_typed("tomorrow", z, false).unwrap().is_none());
    }

    #[test]
    fn zone_names_are_validated() {
        assert_eq!(parse_zone("Europe/Oslo").unwrap(), Zone::Iana(Oslo));
        let e = parse_zone("europe/oslo").unwrap_err().to_string();
        assert!(e.contains("did you mean Europe/Oslo?"), "{e}");
        let e = parse_zone("Mars/Olympus").unwrap_err().to_string();
        assert!(
            e.contains("not an IANA time zone name") && e.contains("HINT"),
            "{e}"
        );
    }

    #[test]
    fn shown_with_offset() {
        let t = at("2026-07-01T12:00:00Z");
        assert_eq!(Zone::Iana(Oslo).show(&t), "2026-07-01 14:00:00+02:00");
        assert_eq!(
            Zone::Iana(chrono_tz::UTC).show(&t),
            "2026-07-01 12:00:00+00:00"
        );
    }
}
