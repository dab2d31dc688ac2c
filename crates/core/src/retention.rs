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
    /// A snapshot older than its period (snapshots have no redundancy).
    SnapshotExpired,
}

impl Rule {
    /// Whether the rule deletes the backup.
    pub fn deletes(self) -> bool {
        matches!(
            self,
            Rule::Expired | Rule::FailedExpired | Rule::SnapshotExpired
        )
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
            Rule::SnapshotExpired => {
                write!(f, "delete: snapshot older than its retention period")
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

/// Whose retention rules a catalog row follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// A backup definition (DefID): period plus redundancy.
    Definition(i64),
    /// A snapshot (SnapshotID): period only.
    Snapshot(i64),
}

/// One catalog row with its owner's retention settings, as read from the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRow {
    /// Whose rules apply.
    pub owner: Owner,
    /// The owner's retention period.
    pub period: Duration,
    /// The owner's redundancy (ignored for snapshots).
    pub redundancy: u32,
    /// The backup itself.
    pub row: BackupRow,
}

/// The rule for every row, in the order given; rows of one owner need not be adjacent.
///
/// The one function behind both `show_retention_plan` and the agent's deletions, so the plan
/// shown is exactly what the agent does.
pub fn plan(rows: &[PlannedRow], now: DateTime<Utc>) -> Vec<(i64, Rule)> {
    let mut groups: std::collections::BTreeMap<Owner, Vec<usize>> = Default::default();
    for (i, r) in rows.iter().enumerate() {
        groups.entry(r.owner).or_default().push(i);
    }
    let mut rules: Vec<Option<Rule>> = vec![None; rows.len()];
    for (owner, idx) in groups {
        let first = &rows[idx[0]];
        match owner {
            Owner::Definition(_) => {
                let b: Vec<BackupRow> = idx.iter().map(|&i| rows[i].row).collect();
                for (&i, (_, rule)) in
                    idx.iter()
                        .zip(definition_plan(&b, first.period, first.redundancy, now))
                {
                    rules[i] = Some(rule);
                }
            }
            Owner::Snapshot(_) => {
                for &i in &idx {
                    rules[i] = Some(
                        if snapshot_expired(rows[i].row.finished, rows[i].period, now) {
                            Rule::SnapshotExpired
                        } else {
                            Rule::WithinPeriod
                        },
                    );
                }
            }
        }
    }
    rows.iter()
        .zip(rules)
        .map(|(r, rule)| (r.row.bck_id, rule.unwrap_or(Rule::WithinPeriod)))
        .collect()
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
    decide(defs, listed, known, false)
}

/// [`quarantine`], where `trusted` (a DBA accepted the node's next listing after dropping many
/// databases on purpose) skips the "far fewer than before" checks. An empty listing is never
/// trusted.
fn decide(
    defs: &[(i64, String)],
    listed: &[String],
    known: Option<usize>,
    trusted: bool,
) -> Quarantine {
    if listed.is_empty() {
        return Quarantine::Suspicious("the node lists no database at all".into());
    }
    if !trusted
        && let Some(k) = known
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
    if !trusted && with_db >= 4 && gone.len() * 2 > with_db {
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

/// Status of a backup definition, as maintenance sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefStatus {
    /// Scheduled.
    Active,
    /// Kept but not scheduled.
    Stopped,
    /// Not scheduled; removed with its backups after the node's automatic_deletion_retention.
    Deleted,
}

/// One backup definition of a node, as maintenance sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDefinition {
    /// DefID.
    pub def_id: i64,
    /// Empty for CLUSTER and GLOBALS definitions.
    pub dbname: String,
    /// Current status.
    pub status: DefStatus,
    /// Set DELETED by quarantine rather than by a user: it comes back if its database does.
    pub quarantined: bool,
    /// When the status last changed: the clock of a DELETED definition.
    pub status_changed_at: DateTime<Utc>,
}

/// What maintenance does with one node's definitions after listing its databases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// Databases gone from a sane listing: set DELETED (quarantine).
    pub mark_deleted: Vec<i64>,
    /// Quarantined definitions whose database is back: set to their former status.
    pub reactivate: Vec<i64>,
    /// DELETED longer than the node's automatic_deletion_retention: removed with their backups.
    pub expire: Vec<i64>,
    /// The listing does not look like the node we know: nothing above is done; alert instead.
    pub suspicious: Option<String>,
}

/// Decides everything maintenance does for one node: quarantine (only on a sane listing, see
/// [`quarantine`]), reactivation of quarantined definitions whose database came back, and
/// removal of definitions DELETED for longer than `deletion_retention`. A suspicious listing
/// changes nothing at all, so one bad listing can never lead to a deletion (reference §8.2 item
/// 15).
pub fn node_plan(
    defs: &[NodeDefinition],
    listed: &[String],
    known: Option<usize>,
    trusted: bool,
    deletion_retention: Duration,
    now: DateTime<Utc>,
) -> NodePlan {
    let live: Vec<(i64, String)> = defs
        .iter()
        .filter(|d| d.status != DefStatus::Deleted)
        .map(|d| (d.def_id, d.dbname.clone()))
        .collect();
    let mark_deleted = match decide(&live, listed, known, trusted) {
        Quarantine::Suspicious(why) => {
            return NodePlan {
                suspicious: Some(why),
                ..NodePlan::default()
            };
        }
        Quarantine::MarkDeleted(ids) => ids,
        Quarantine::Nothing => Vec::new(),
    };
    let is_listed = |db: &str| !db.is_empty() && listed.iter().any(|l| l == db);
    let deleted = defs.iter().filter(|d| d.status == DefStatus::Deleted);
    let reactivate: Vec<i64> = deleted
        .clone()
        .filter(|d| d.quarantined && is_listed(&d.dbname))
        .map(|d| d.def_id)
        .collect();
    let expire = deleted
        .filter(|d| {
            !reactivate.contains(&d.def_id) && d.status_changed_at + deletion_retention < now
        })
        .map(|d| d.def_id)
        .collect();
    NodePlan {
        mark_deleted,
        reactivate,
        expire,
        suspicious: None,
    }
}

/// The DELETED definitions of a node that could not be listed (STOPPED, unreachable) to remove
/// now: only those a user set DELETED, past `deletion_retention`. A quarantined definition waits
/// for a listing: its database may have come back.
pub fn expired_without_listing(
    defs: &[NodeDefinition],
    deletion_retention: Duration,
    now: DateTime<Utc>,
) -> Vec<i64> {
    defs.iter()
        .filter(|d| {
            d.status == DefStatus::Deleted
                && !d.quarantined
                && d.status_changed_at + deletion_retention < now
        })
        .map(|d| d.def_id)
        .collect()
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

    fn planned(owner: Owner, redundancy: u32, row: BackupRow) -> PlannedRow {
        PlannedRow {
            owner,
            period: Duration::days(7),
            redundancy,
            row,
        }
    }

    #[test]
    fn plan_groups_rows_by_owner_whatever_their_order() {
        let d1 = Owner::Definition(1);
        let d2 = Owner::Definition(2);
        let s1 = Owner::Snapshot(1);
        // Interleaved owners: each keeps its own newest good backup; the snapshot goes by age.
        let rows = vec![
            planned(d1, 1, row(10, 30, true)),
            planned(d2, 1, row(20, 30, true)),
            planned(s1, 0, row(30, 8, true)),
            planned(d1, 1, row(11, 20, true)),
            planned(d2, 1, row(21, 40, true)),
            planned(Owner::Snapshot(2), 0, row(31, 1, true)),
        ];
        let p = plan(&rows, now());
        assert_eq!(
            p,
            vec![
                (10, Rule::Expired),
                (20, Rule::Redundancy(1)),
                (30, Rule::SnapshotExpired),
                (11, Rule::Redundancy(1)),
                (21, Rule::Expired),
                (31, Rule::WithinPeriod),
            ]
        );
        // The same rows in another order get the same rules.
        let mut rev = rows.clone();
        rev.reverse();
        let mut q = plan(&rev, now());
        q.reverse();
        assert_eq!(p, q);
        // A definition with the same number as a snapshot is another owner.
        let same_id = vec![
            planned(Owner::Definition(5), 1, row(1, 30, true)),
            planned(Owner::Snapshot(5), 0, row(2, 30, true)),
        ];
        assert_eq!(
            plan(&same_id, now()),
            vec![(1, Rule::Redundancy(1)), (2, Rule::SnapshotExpired)]
        );
    }

    fn ndef(
        id: i64,
        db: &str,
        status: DefStatus,
        quarantined: bool,
        days_ago: i64,
    ) -> NodeDefinition {
        NodeDefinition {
            def_id: id,
            dbname: db.into(),
            status,
            quarantined,
            status_changed_at: now() - Duration::days(days_ago),
        }
    }

    #[test]
    fn node_plan_table() {
        use DefStatus::*;
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let fortnight = Duration::days(14);
        // (definitions, listed, known, trusted, want (mark, reactivate, expire), suspicious?)
        type Case = (
            Vec<NodeDefinition>,
            Vec<String>,
            Option<usize>,
            bool,
            (Vec<i64>, Vec<i64>, Vec<i64>),
            bool,
        );
        let cases: Vec<Case> = vec![
            // All present: nothing.
            (
                vec![ndef(1, "a", Active, false, 1)],
                l(&["a", "postgres"]),
                Some(2),
                false,
                (vec![], vec![], vec![]),
                false,
            ),
            // A dropped database: its definition is quarantined (ACTIVE or STOPPED alike).
            (
                vec![
                    ndef(1, "a", Active, false, 1),
                    ndef(2, "b", Stopped, false, 1),
                ],
                l(&["postgres"]),
                Some(3),
                false,
                (vec![1, 2], vec![], vec![]),
                false,
            ),
            // It came back before the deadline: reactivated, not expired.
            (
                vec![ndef(1, "a", Deleted, true, 20)],
                l(&["a"]),
                Some(1),
                false,
                (vec![], vec![1], vec![]),
                false,
            ),
            // Still gone after the deadline: expired. Before it: kept.
            (
                vec![
                    ndef(1, "a", Deleted, true, 15),
                    ndef(2, "b", Deleted, true, 13),
                ],
                l(&["postgres"]),
                Some(1),
                false,
                (vec![], vec![], vec![1]),
                false,
            ),
            // DELETED by a user: never reactivated, expired after the deadline even if listed.
            (
                vec![
                    ndef(1, "a", Deleted, false, 15),
                    ndef(2, "b", Deleted, false, 1),
                ],
                l(&["a", "b"]),
                Some(2),
                false,
                (vec![], vec![], vec![1]),
                false,
            ),
            // A DELETED CLUSTER definition expires too; a live one is never quarantined.
            (
                vec![
                    ndef(1, "", Deleted, false, 15),
                    ndef(2, "", Active, false, 15),
                ],
                l(&["postgres"]),
                Some(1),
                false,
                (vec![], vec![], vec![1]),
                false,
            ),
            // An empty listing: nothing at all, not even expiry; an alert.
            (
                vec![
                    ndef(1, "a", Active, false, 1),
                    ndef(2, "b", Deleted, true, 30),
                ],
                vec![],
                Some(2),
                false,
                (vec![], vec![], vec![]),
                true,
            ),
            // Far fewer databases than last time: an alert, and nothing expires meanwhile.
            (
                vec![
                    ndef(1, "a", Active, false, 1),
                    ndef(2, "z", Deleted, true, 30),
                ],
                l(&["a"]),
                Some(10),
                false,
                (vec![], vec![], vec![]),
                true,
            ),
            // ... unless a DBA accepted the listing.
            (
                vec![
                    ndef(1, "a", Active, false, 1),
                    ndef(2, "z", Deleted, true, 30),
                ],
                l(&["a"]),
                Some(10),
                true,
                (vec![], vec![], vec![2]),
                false,
            ),
            // Most backed-up databases gone at once: an alert; accepted, they are quarantined.
            (
                (1..=4)
                    .map(|i| ndef(i, &format!("d{i}"), Active, false, 1))
                    .collect(),
                l(&["d1", "x"]),
                None,
                false,
                (vec![], vec![], vec![]),
                true,
            ),
            (
                (1..=4)
                    .map(|i| ndef(i, &format!("d{i}"), Active, false, 1))
                    .collect(),
                l(&["d1", "x"]),
                None,
                true,
                (vec![2, 3, 4], vec![], vec![]),
                false,
            ),
            // Even accepted, an empty listing is refused.
            (
                vec![ndef(1, "a", Active, false, 1)],
                vec![],
                None,
                true,
                (vec![], vec![], vec![]),
                true,
            ),
        ];
        for (i, (defs, listed, known, trusted, want, suspicious)) in cases.into_iter().enumerate() {
            let p = node_plan(&defs, &listed, known, trusted, fortnight, now());
            assert_eq!(
                (
                    p.mark_deleted.clone(),
                    p.reactivate.clone(),
                    p.expire.clone()
                ),
                want,
                "case {i}: {p:?}"
            );
            assert_eq!(p.suspicious.is_some(), suspicious, "case {i}: {p:?}");
        }
    }

    #[test]
    fn without_a_listing_only_user_deleted_definitions_expire() {
        use DefStatus::*;
        let defs = vec![
            ndef(1, "a", Deleted, false, 15),
            ndef(2, "b", Deleted, true, 30),
            ndef(3, "c", Deleted, false, 13),
            ndef(4, "d", Active, false, 30),
            ndef(5, "", Deleted, false, 20),
        ];
        assert_eq!(
            expired_without_listing(&defs, Duration::days(14), now()),
            vec![1, 5]
        );
    }
}
