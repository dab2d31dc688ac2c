//! When is a backup definition overdue?
//!
//! A definition is overdue when the latest instant its schedule expected a backup, at least the
//! grace period ago, has no successful backup finished at or after it. Instants before `since`
//! (the definition's creation, its last status change, the node's last status change) were never
//! promised and do not count. Whether an alert is raised for it (once per episode) is the
//! catalog's business.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::cron::CronSchedule;

/// The scheduled instant a definition is overdue for, or None when it is not overdue.
///
/// `tz` is the time zone the schedule is evaluated in (the agent's), `grace` how long after
/// an instant its backup may take to succeed.
pub fn overdue_instant<Tz: TimeZone>(
    schedule: &CronSchedule,
    tz: &Tz,
    now: DateTime<Utc>,
    grace: Duration,
    since: DateTime<Utc>,
    last_success: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let grace = chrono::Duration::from_std(grace).ok()?;
    let cutoff = now.checked_sub_signed(grace)?;
    let expected = schedule
        .prev_before(&cutoff.with_timezone(tz))?
        .with_timezone(&Utc);
    if expected < since {
        return None;
    }
    match last_success {
        Some(s) if s >= expected => None,
        _ => Some(expected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::Oslo;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn daily_0330() -> CronSchedule {
        CronSchedule::parse_line("30 3 * * *").unwrap()
    }

    const H: u64 = 3600;

    #[test]
    fn table() {
        let s = daily_0330();
        let since = t("2026-01-01T00:00:00Z");
        // (now, grace, last success, expected overdue instant)
        let cases: &[(&str, u64, Option<&str>, Option<&str>)] = &[
            // Within the grace period of today's instant: yesterday's is the one that counts,
            // and it succeeded.
            (
                "2026-03-10T05:00:00Z",
                2 * H,
                Some("2026-03-09T03:40:00Z"),
                None,
            ),
            // Past the grace period without a success since 03:30.
            (
                "2026-03-10T06:00:00Z",
                2 * H,
                Some("2026-03-09T03:40:00Z"),
                Some("2026-03-10T03:30:00Z"),
            ),
            // A success after the instant (even a manual one) covers it.
            (
                "2026-03-10T06:00:00Z",
                2 * H,
                Some("2026-03-10T04:10:00Z"),
                None,
            ),
            // Never succeeded.
            (
                "2026-03-10T06:00:00Z",
                2 * H,
                None,
                Some("2026-03-10T03:30:00Z"),
            ),
            // Grace longer than a day: the instant before the cut-off (now - 30 h) is the one due.
            (
                "2026-03-10T06:00:00Z",
                30 * H,
                Some("2026-03-07T03:31:00Z"),
                Some("2026-03-08T03:30:00Z"),
            ),
        ];
        for (now, grace, last, want) in cases {
            let got = overdue_instant(
                &s,
                &Utc,
                t(now),
                Duration::from_secs(*grace),
                since,
                last.map(t),
            );
            assert_eq!(got, want.map(t), "now {now}, grace {grace}, last {last:?}");
        }
    }

    #[test]
    fn instants_before_since_were_never_expected() {
        let s = daily_0330();
        let now = t("2026-03-10T06:00:00Z");
        // Registered after today's 03:30: nothing expected yet.
        assert_eq!(
            overdue_instant(
                &s,
                &Utc,
                now,
                Duration::from_secs(H),
                t("2026-03-10T04:00:00Z"),
                None
            ),
            None
        );
        // Registered just before it: overdue.
        assert_eq!(
            overdue_instant(
                &s,
                &Utc,
                now,
                Duration::from_secs(H),
                t("2026-03-10T03:00:00Z"),
                None
            ),
            Some(t("2026-03-10T03:30:00Z"))
        );
    }

    #[test]
    fn evaluated_in_the_schedule_time_zone() {
        // 03:30 in Oslo is 02:30 UTC in winter, 01:30 UTC in summer.
        let s = daily_0330();
        let since = t("2026-01-01T00:00:00Z");
        assert_eq!(
            overdue_instant(
                &s,
                &Oslo,
                t("2026-02-10T03:01:00Z"),
                Duration::from_secs(1800),
                since,
                None
            ),
            Some(t("2026-02-10T02:30:00Z"))
        );
        assert_eq!(
            overdue_instant(
                &s,
                &Oslo,
                t("2026-07-10T02:01:00Z"),
                Duration::from_secs(1800),
                since,
                None
            ),
            Some(t("2026-07-10T01:30:00Z"))
        );
    }

    #[test]
    fn weekly_and_frequent_schedules() {
        let weekly = CronSchedule::parse_line("0 1 * * mon").unwrap();
        // 2026-03-11 is a Wednesday: Monday's 01:00 is the instant that counts.
        assert_eq!(
            overdue_instant(
                &weekly,
                &Utc,
                t("2026-03-11T12:00:00Z"),
                Duration::from_secs(4 * H),
                t("2026-01-01T00:00:00Z"),
                Some(t("2026-03-02T01:20:00Z"))
            ),
            Some(t("2026-03-09T01:00:00Z"))
        );
        let every15 = CronSchedule::parse_line("*/15 * * * *").unwrap();
        assert_eq!(
            overdue_instant(
                &every15,
                &Utc,
                t("2026-03-11T12:07:00Z"),
                Duration::from_secs(600),
                t("2026-01-01T00:00:00Z"),
                Some(t("2026-03-11T11:46:00Z"))
            ),
            None,
            "11:45 succeeded at 11:46; 12:00 is still within its grace"
        );
    }
}
