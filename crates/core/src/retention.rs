//! Retention and quarantine decisions (issue 4), as pure functions over what the catalog holds.
//!
//! Retention of a definition: PgBackMan's period + redundancy, with its defect fixed (reference
//! §8.2 item 14): only *successful* backups count toward redundancy, so the newest `redundancy`
//! good backups are kept whatever their age and however many failures came after them. Failed or
//! cancelled backups never protect anything and go once they are older than the period.
//! Snapshots expire by period only.
//!
//! Quarantine of definitions whose database disappeared (item 15): acted on only when the node's
//! listing looks sane; a node that suddenly lists no databases, or far fewer than before (a
//! fail-over to the wrong host, a half-started cluster), raises an alert instead.

use chrono::{DateTime, Duration, Utc};

/// One catalog row as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupRow {
    /// BckID.
    pub bck_id: i64,
    /// When the backup finished.
    pub finished: DateTime<Utc>,
    /// SUCCEEDED (only these count toward redundancy).
    pub succeeded: bool,
}

/// Why a backup is kept or deleted; shown by `show_retention_plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// One of the newest `redundancy` successful backups (the value is its rank, 1 = newest).
    Redundancy(u32),
    /// Finished within the retention period.
    WithinPeriod,
    /// A successful backup older than the period and beyond the redundancy.
    Expired,
    /// A failed or cancelled backup older than the period.
    FailedExpired,
}

impl Rule {
    /// Whether the rule deletes the backup.
    pub fn deletes(self) -> bool {
        matches!(self, Rule::Expired | Rule::FailedExpired)
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Redundancy(n) => write!(f, "kept: newest successful backup #{n} (redundancy)"),
            Rule::WithinPeriod => write!(f, "kept: within the retention period"),
            Rule::Expired => write!(
                f,
                "delete: older than the retention period, beyond the redundancy"
            ),
            Rule::FailedExpired => {
                write!(f, "delete: failed backup older than the retention period")
            }
        }
    }
}

/// The rule for every row of one definition, in the order given.
pub fn definition_plan(
    rows: &[BackupRow],
    period: Duration,
    redundancy: u32,
    now: DateTime<Utc>,
) -> Vec<(i64, Rule)> {
    let mut good: Vec<&BackupRow> = rows.iter().filter(|r| r.succeeded).collect();
    // Newest first; ties broken by BckID so the plan is deterministic.
    good.sort_by(|a, b| b.finished.cmp(&a.finished).then(b.bck_id.cmp(&a.bck_id)));
    let rank = |id: i64| {
        good.iter()
            .position(|r| r.bck_id == id)
            .map(|p| p as u32 + 1)
    };
    let cutoff = now - period;
    rows.iter()
        .map(|r| {
            let rule = match (r.succeeded, rank(r.bck_id)) {
                (true, Some(n)) if n <= redundancy => Rule::Redundancy(n),
                _ if r.finished >= cutoff => Rule::WithinPeriod,
                (true, _) => Rule::Expired,
                (false, _) => Rule::FailedExpired,
            };
            (r.bck_id, rule)
        })
        .collect()
}

/// A snapshot expires once it is older than its period.
pub fn snapshot_expired(finished: DateTime<Utc>, period: Duration, now: DateTime<Utc>) -> bool {
    finished < now - period
}

/// What to do with the definitions of one node after listing its databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quarantine {
    /// Every defined database exists.
    Nothing,
    /// These definitions' databases are gone: set them DELETED (reversible until the node's
    /// automatic_deletion_retention has passed).
    MarkDeleted(Vec<i64>),
    /// The listing does not look like the node we know: change nothing, raise an alert.
    Suspicious(String),
}

/// Decides quarantine for one node. `defs` are (DefID, dbname) of live definitions (CLUSTER and
/// GLOBALS ones have no database and are never quarantined); `listed` is what the node lists now;
/// `known` is how many databases it listed last time (None: never listed).
pub fn quarantine(defs: &[(i64, String)], listed: &[String], known: Option<usize>) -> Quarantine {
    if listed.is_empty() {
        return Quarantine::Suspicious("the node lists no database at all".into());
    }
    if let Some(k) = known
        && k >= 4
        && listed.len() * 2 < k
    {
        return Quarantine::Suspicious(format!(
            "the node lists {} databases where it listed {k}: a fail-over to another host or a half-started cluster?",
            listed.len()
        ));
    }
    let gone: Vec<i64> = defs
        .iter()
        .filter(|(_, db)| !db.is_empty() && !listed.iter().any(|l| l == db))
        .map(|(id, _)| *id)
        .collect();
    let with_db = defs.iter().filter(|(_, db)| !db.is_empty()).count();
    if with_db >= 4 && gone.len() * 2 > with_db {
        return Quarantine::Suspicious(format!(
            "{} of the {with_db} backed-up databases are missing from the node's listing",
            gone.len()
        ));
    }
    if gone.is_empty() {
        Quarantine::Nothing
    } else {
        Quarantine::MarkDeleted(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
    }

    fn row(id: i64, days_ago: i64, ok: bool) -> BackupRow {
        BackupRow {
            bck_id: id,
            finished: now() - Duration::days(days_ago),
            succeeded: ok,
        }
    }

    fn deleted(plan: &[(i64, Rule)]) -> Vec<i64> {
        plan.iter()
            .filter(|(_, r)| r.deletes())
            .map(|(id, _)| *id)
            .collect()
    }

    #[test]
    fn table_of_cases() {
        let week = Duration::days(7);
        // (rows, redundancy, expected deletions)
        let cases: Vec<(Vec<BackupRow>, u32, Vec<i64>)> = vec![
            // Nothing old: nothing deleted.
            (vec![row(1, 1, true), row(2, 2, true)], 1, vec![]),
            // Old successes beyond the redundancy go.
            (
                vec![row(1, 1, true), row(2, 10, true), row(3, 20, true)],
                1,
                vec![2, 3],
            ),
            // Redundancy keeps the newest N good ones whatever their age.
            (
                vec![row(1, 30, true), row(2, 40, true), row(3, 50, true)],
                2,
                vec![3],
            ),
            // All recent backups failed: the last good ones are kept (PgBackMan deleted them).
            (
                vec![
                    row(1, 0, false),
                    row(2, 1, false),
                    row(3, 2, false),
                    row(4, 30, true),
                    row(5, 31, true),
                ],
                1,
                vec![5],
            ),
            // Old failures go; they never protect anything.
            (
                vec![row(1, 1, true), row(2, 10, false), row(3, 11, false)],
                1,
                vec![2, 3],
            ),
            // Redundancy 0: pure period.
            (vec![row(1, 8, true), row(2, 6, true)], 0, vec![1]),
            // Only failures, all old: all go (they hold no usable backup).
            (vec![row(1, 9, false), row(2, 10, false)], 3, vec![1, 2]),
            // Empty definition.
            (vec![], 1, vec![]),
            // Exactly at the cutoff is within the period.
            (vec![row(1, 7, true), row(2, 7, true)], 0, vec![]),
        ];
        for (i, (rows, redundancy, want)) in cases.into_iter().enumerate() {
            let plan = definition_plan(&rows, week, redundancy, now());
            assert_eq!(deleted(&plan), want, "case {i}: {plan:?}");
            assert_eq!(plan.len(), rows.len());
        }
    }

    #[test]
    fn the_newest_good_backup_is_never_deleted_while_redundancy_is_positive() {
        // Every combination of 6 rows (age 0..60 days, success or not), redundancy 1..3.
        for mask in 0u32..64 {
            let rows: Vec<BackupRow> = (0..6)
                .map(|i| row(i, i64::from(i as u8) * 12, mask & (1 << i) != 0))
                .collect();
            for redundancy in 1..=3 {
                let plan = definition_plan(&rows, Duration::days(7), redundancy, now());
                let kept_good = plan
                    .iter()
                    .zip(&rows)
                    .filter(|((_, rule), r)| r.succeeded && !rule.deletes())
                    .count();
                let good = rows.iter().filter(|r| r.succeeded).count();
                assert!(
                    kept_good >= good.min(redundancy as usize),
                    "mask {mask:06b} r {redundancy}: {plan:?}"
                );
            }
        }
    }

    #[test]
    fn rules_explain_themselves() {
        let plan = definition_plan(
            &[row(1, 30, true), row(2, 1, false)],
            Duration::days(7),
            1,
            now(),
        );
        assert_eq!(
            plan,
            vec![(1, Rule::Redundancy(1)), (2, Rule::WithinPeriod)]
        );
        assert!(Rule::Expired.to_string().starts_with("delete"));
    }

    #[test]
    fn snapshots_expire_by_period() {
        assert!(snapshot_expired(
            now() - Duration::days(8),
            Duration::days(7),
            now()
        ));
        assert!(!snapshot_expired(
            now() - Duration::days(6),
            Duration::days(7),
            now()
        ));
    }

    #[test]
    fn quarantine_acts_only_on_sane_listings() {
        let defs: Vec<(i64, String)> = vec![
            (1, "a".into()),
            (2, "b".into()),
            (3, "c".into()),
            (4, "d".into()),
            (5, String::new()),
        ];
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            quarantine(&defs, &l(&["a", "b", "c", "d", "x"]), Some(5)),
            Quarantine::Nothing
        );
        assert_eq!(
            quarantine(&defs, &l(&["a", "b", "c", "x"]), Some(5)),
            Quarantine::MarkDeleted(vec![4])
        );
        // Nothing listed, or far fewer than before: an alert, not a mass deletion.
        assert!(matches!(
            quarantine(&defs, &[], Some(5)),
            Quarantine::Suspicious(_)
        ));
        assert!(matches!(
            quarantine(&defs, &l(&["postgres"]), Some(10)),
            Quarantine::Suspicious(_)
        ));
        // Most backed-up databases gone at once: suspicious too.
        assert!(matches!(
            quarantine(&defs, &l(&["a", "x", "y", "z"]), Some(4)),
            Quarantine::Suspicious(_)
        ));
        // The CLUSTER definition (no database) is never quarantined.
        assert_eq!(
            quarantine(&[(9, String::new())], &l(&["x"]), None),
            Quarantine::Nothing
        );
    }
}
