//! Monitoring verdicts: how a definition stands (the status probe for Nagios, Icinga and Zabbix,
//! and the fleet metrics), and the Prometheus text exposition format.
//!
//! The rules, worst first: a definition overdue (its latest scheduled instant past the grace
//! period without a success, [`crate::overdue`]) or whose last run failed is CRITICAL; a job
//! waiting in the queue past `stuck_after` (its agent does not take it), or a last run that was
//! cancelled, is a WARNING; a schedule that cannot be read is UNKNOWN; everything else is OK.
//! STOPPED definitions and definitions of nodes that are not RUNNING are not judged (OK).

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::cron::CronSchedule;

/// A verdict, in Nagios' vocabulary. Ordered by severity (`max` is the worse one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Nothing to act on.
    Ok,
    /// The state cannot be judged.
    Unknown,
    /// Needs a look soon.
    Warning,
    /// Backups are missing or failing.
    Critical,
}

impl Verdict {
    /// The word Nagios prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Unknown => "UNKNOWN",
            Verdict::Warning => "WARNING",
            Verdict::Critical => "CRITICAL",
        }
    }

    /// The plugin exit status of the Nagios convention (also Icinga's and Zabbix' external
    /// checks): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    pub fn nagios_code(self) -> u8 {
        match self {
            Verdict::Ok => 0,
            Verdict::Warning => 1,
            Verdict::Critical => 2,
            Verdict::Unknown => 3,
        }
    }
}

/// What the catalog says about one definition.
#[derive(Debug, Clone)]
pub struct DefinitionFacts<'a> {
    /// None when the stored schedule cannot be read.
    pub schedule: Option<&'a CronSchedule>,
    /// ACTIVE definition of a RUNNING node: the only ones that are judged.
    pub active: bool,
    /// Scheduled instants before this were never promised.
    pub since: DateTime<Utc>,
    /// How long after a scheduled instant its backup may take to succeed.
    pub grace: Duration,
    /// SUCCEEDED, ERROR or CANCELLED: the newest backup of the definition.
    pub last_status: Option<&'a str>,
    /// The error of the newest backup, when it failed.
    pub last_error: Option<&'a str>,
    /// When the newest successful backup finished.
    pub last_success: Option<DateTime<Utc>>,
    /// The oldest `not_before` of its QUEUED jobs.
    pub oldest_queued: Option<DateTime<Utc>>,
}

/// How a definition stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// The scheduled instant without a success, when overdue.
    pub overdue_since: Option<DateTime<Utc>>,
    /// The next scheduled instant (active definitions only).
    pub next_run: Option<DateTime<Utc>>,
    /// Seconds since the last success.
    pub success_age: Option<i64>,
    /// Why, in a few words (empty when OK).
    pub reason: String,
}

/// Judges one definition at `now`, its schedule evaluated in `tz` (the agent's zone).
pub fn judge<Tz: TimeZone>(
    f: &DefinitionFacts<'_>,
    tz: &Tz,
    now: DateTime<Utc>,
    stuck_after: Duration,
) -> Judgement {
    let success_age = f.last_success.map(|s| (now - s).num_seconds().max(0));
    let mut j = Judgement {
        verdict: Verdict::Ok,
        overdue_since: None,
        next_run: None,
        success_age,
        reason: String::new(),
    };
    if !f.active {
        j.reason = "not scheduled (definition STOPPED or node not RUNNING)".into();
        return j;
    }
    let Some(schedule) = f.schedule else {
        j.verdict = Verdict::Unknown;
        j.reason = "its schedule cannot be read".into();
        return j;
    };
    j.next_run = schedule
        .next_after(&now.with_timezone(tz))
        .map(|t| t.with_timezone(&Utc));
    j.overdue_since =
        crate::overdue::overdue_instant(schedule, tz, now, f.grace, f.since, f.last_success);
    let stuck = f.oldest_queued.and_then(|q| {
        let waited = (now - q).to_std().ok()?;
        (waited > stuck_after).then_some(waited)
    });
    let (verdict, reason) = if let Some(t) = j.overdue_since {
        (
            Verdict::Critical,
            format!(
                "overdue: no successful backup since the run due at {}",
                t.format("%Y-%m-%d %H:%M UTC")
            ),
        )
    } else if f.last_status == Some("ERROR") {
        (
            Verdict::Critical,
            format!(
                "last backup failed: {}",
                f.last_error.unwrap_or("no error recorded")
            ),
        )
    } else if let Some(w) = stuck {
        (
            Verdict::Warning,
            format!(
                "a job has waited {} min in the queue: is the agent of its backup server running?",
                w.as_secs() / 60
            ),
        )
    } else if f.last_status == Some("CANCELLED") {
        (Verdict::Warning, "last backup was cancelled".into())
    } else {
        (Verdict::Ok, String::new())
    };
    j.verdict = verdict;
    j.reason = reason;
    j
}

/// Counts of verdicts, for the one-line summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Definitions judged OK.
    pub ok: usize,
    /// Definitions judged WARNING.
    pub warning: usize,
    /// Definitions judged CRITICAL.
    pub critical: usize,
    /// Definitions judged UNKNOWN.
    pub unknown: usize,
}

impl Tally {
    /// Counts one verdict.
    pub fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Ok => self.ok += 1,
            Verdict::Warning => self.warning += 1,
            Verdict::Critical => self.critical += 1,
            Verdict::Unknown => self.unknown += 1,
        }
    }

    /// Definitions counted.
    pub fn total(&self) -> usize {
        self.ok + self.warning + self.critical + self.unknown
    }

    /// The worst verdict counted (OK when nothing was).
    pub fn worst(&self) -> Verdict {
        if self.critical > 0 {
            Verdict::Critical
        } else if self.warning > 0 {
            Verdict::Warning
        } else if self.unknown > 0 {
            Verdict::Unknown
        } else {
            Verdict::Ok
        }
    }
}

/// The plugin output of the Nagios convention: one line, `SERVICE STATE - text | perfdata`.
/// `problems` are the worst definitions first; at most three are named (the line must stay
/// short), and `|` cannot appear in the text (it starts the performance data).
pub fn nagios_line(t: &Tally, problems: &[String]) -> String {
    nagios_line_with(t, &Tally::default(), problems)
}

/// [`nagios_line`] with the WAL archives' tally (`wal`, not shown when there is none): the
/// state is the worst of both, and the performance data gains `wal_critical` and `wal_warning`.
pub fn nagios_line_with(t: &Tally, wal: &Tally, problems: &[String]) -> String {
    let mut text = format!(
        "{} critical, {} warning, {} unknown, {} ok of {} backup definitions",
        t.critical,
        t.warning,
        t.unknown,
        t.ok,
        t.total()
    );
    if wal.total() > 0 {
        let _ = write!(
            text,
            "; {} critical, {} warning of {} WAL archives",
            wal.critical,
            wal.warning,
            wal.total()
        );
    }
    for p in problems.iter().take(3) {
        text.push_str("; ");
        text.push_str(p);
    }
    if problems.len() > 3 {
        let _ = write!(text, "; and {} more", problems.len() - 3);
    }
    let text: String = text
        .chars()
        .map(|c| if c == '|' || c.is_control() { ' ' } else { c })
        .collect();
    let mut line = format!(
        "PGBACKMAN {} - {text} | critical={} warning={} unknown={} ok={}",
        t.worst().max(wal.worst()).as_str(),
        t.critical,
        t.warning,
        t.unknown,
        t.ok
    );
    if wal.total() > 0 {
        let _ = write!(
            line,
            " wal_critical={} wal_warning={}",
            wal.critical, wal.warning
        );
    }
    line
}

/// The verdict of a WAL archive from the codes of its open WAL conditions: a lagging receiver,
/// a lagging standby or a slot holding much WAL need a look (WARNING); an archive that does not
/// archive, has a hole, or lost its slot is CRITICAL.
pub fn wal_verdict(open_codes: &[String]) -> Verdict {
    open_codes
        .iter()
        .map(|c| match c.as_str() {
            "WAL_RECEIVER_LAG" | "REPLICATION_LAG" | "WAL_SLOT_RETAINED" => Verdict::Warning,
            _ => Verdict::Critical,
        })
        .max()
        .unwrap_or(Verdict::Ok)
}

/// A label value of the Prometheus text format: backslash, double quote and line feed escaped
/// (the only three the format defines); everything else is kept as is (UTF-8).
pub fn escape_label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A HELP text: backslash and line feed escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn value_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Writes the Prometheus text exposition format (version 0.0.4): every family once, with its
/// HELP and TYPE, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family; `kind` is `gauge` or `counter`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the family started last. Label names are ours (identifiers); values are
    /// escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", value_text(value));
    }

    /// The text to serve.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const H: u64 = 3600;

    fn facts<'a>(s: &'a CronSchedule) -> DefinitionFacts<'a> {
        DefinitionFacts {
            schedule: Some(s),
            active: true,
            since: t("2026-01-01T00:00:00Z"),
            grace: Duration::from_secs(2 * H),
            last_status: Some("SUCCEEDED"),
            last_error: None,
            last_success: Some(t("2026-03-10T03:40:00Z")),
            oldest_queued: None,
        }
    }

    #[test]
    fn verdicts() {
        let s = CronSchedule::parse_line("30 3 * * *").unwrap();
        let now = t("2026-03-10T12:00:00Z");
        let stuck = Duration::from_secs(900);
        let ok = judge(&facts(&s), &Utc, now, stuck);
        assert_eq!(ok.verdict, Verdict::Ok);
        assert_eq!(ok.next_run, Some(t("2026-03-11T03:30:00Z")));
        assert_eq!(ok.success_age, Some(8 * 3600 + 20 * 60));

        let mut f = facts(&s);
        f.last_success = Some(t("2026-03-09T03:40:00Z"));
        let late = judge(&f, &Utc, now, stuck);
        assert_eq!(late.verdict, Verdict::Critical);
        assert_eq!(late.overdue_since, Some(t("2026-03-10T03:30:00Z")));
        assert!(late.reason.contains("overdue"), "{}", late.reason);

        let mut f = facts(&s);
        f.last_status = Some("ERROR");
        f.last_error = Some("pg_dump: exit status 1");
        let failed = judge(&f, &Utc, now, stuck);
        assert_eq!(failed.verdict, Verdict::Critical);
        assert!(failed.reason.contains("pg_dump: exit status 1"));

        let mut f = facts(&s);
        f.oldest_queued = Some(t("2026-03-10T11:00:00Z"));
        assert_eq!(judge(&f, &Utc, now, stuck).verdict, Verdict::Warning);
        f.oldest_queued = Some(t("2026-03-10T11:55:00Z"));
        assert_eq!(judge(&f, &Utc, now, stuck).verdict, Verdict::Ok);

        let mut f = facts(&s);
        f.active = false;
        f.last_status = Some("ERROR");
        let off = judge(&f, &Utc, now, stuck);
        assert_eq!((off.verdict, off.next_run), (Verdict::Ok, None));

        let mut f = facts(&s);
        f.schedule = None;
        assert_eq!(judge(&f, &Utc, now, stuck).verdict, Verdict::Unknown);
    }

    #[test]
    fn tally_and_nagios_line() {
        let mut tally = Tally::default();
        assert_eq!(tally.worst(), Verdict::Ok);
        for v in [
            Verdict::Ok,
            Verdict::Warning,
            Verdict::Critical,
            Verdict::Ok,
        ] {
            tally.add(v);
        }
        assert_eq!(tally.worst(), Verdict::Critical);
        assert_eq!(tally.worst().nagios_code(), 2);
        let line = nagios_line(&tally, &["DefID 3 a|b\nc: failed".into()]);
        assert_eq!(
            line,
            "PGBACKMAN CRITICAL - 1 critical, 1 warning, 0 unknown, 2 ok of 4 backup definitions; \
             DefID 3 a b c: failed | critical=1 warning=1 unknown=0 ok=2"
        );
        assert!(!line.contains('\n'));
        let mut wal = Tally::default();
        wal.add(wal_verdict(&["WAL_RECEIVER_LAG".into()]));
        wal.add(wal_verdict(&[]));
        assert_eq!(
            wal_verdict(&["WAL_HOLE".into(), "REPLICATION_LAG".into()]),
            Verdict::Critical
        );
        let ok = Tally {
            ok: 1,
            ..Tally::default()
        };
        assert_eq!(
            nagios_line_with(&ok, &wal, &[]),
            "PGBACKMAN WARNING - 0 critical, 0 warning, 0 unknown, 1 ok of 1 backup definitions; \
             0 critical, 1 warning of 2 WAL archives | critical=0 warning=0 unknown=0 ok=1 wal_critical=0 wal_warning=1"
        );
    }

    #[test]
    fn exposition_escapes_label_values() {
        assert_eq!(escape_label_value("a\"b\\c\nd}"), "a\\\"b\\\\c\\nd}");
        let mut e = Exposition::new();
        e.family("x_seconds", "gauge", "Line one\nback\\slash");
        e.sample("x_seconds", &[("dbname", "q\"")], 1.5);
        e.sample("x_seconds", &[], 1_700_000_000.0);
        assert_eq!(
            e.finish(),
            "# HELP x_seconds Line one\\nback\\\\slash\n# TYPE x_seconds gauge\n\
             x_seconds{dbname=\"q\\\"\"} 1.5\nx_seconds 1700000000\n"
        );
        assert_eq!(value_text(f64::NAN), "NaN");
    }
}
