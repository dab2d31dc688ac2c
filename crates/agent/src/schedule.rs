//! When each definition fires next. A heap of (instant, DefID) ordered by instant: the agent
//! sleeps until the earliest and only recomputes the definitions that fired, so ten thousand
//! definitions cost nothing while idle. Schedules are evaluated in the configured time zone.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use pgbackman_core::cron::CronSchedule;
use pgbackman_db::agent::AgentDefinition;

pub struct Scheduler {
    tz: Tz,
    /// One parsed schedule per distinct pattern, shared: a parsed croner pattern costs ~5 KB
    /// (its year bitfield), and ten thousand definitions use at most a few thousand patterns.
    schedules: HashMap<i64, Arc<CronSchedule>>,
    heap: BinaryHeap<Reverse<(DateTime<Utc>, i64)>>,
    /// Creation time of each scheduled definition (catch-up never reaches before it).
    registered: HashMap<i64, DateTime<Utc>>,
    /// Fires up to this instant have been handed out; rebuilds continue from here, so a
    /// refresh at the very moment of a fire neither loses nor repeats it.
    cursor: DateTime<Utc>,
}

impl Scheduler {
    pub fn new(tz: Tz, now: DateTime<Utc>) -> Scheduler {
        Scheduler {
            tz,
            schedules: HashMap::new(),
            heap: BinaryHeap::new(),
            registered: HashMap::new(),
            cursor: now,
        }
    }

    /// The time zone schedules are evaluated in.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// Replaces the set of scheduled definitions. Returns the definitions whose schedule does
    /// not parse (the shell validates, so this means someone wrote the table directly).
    pub fn rebuild<'a>(
        &mut self,
        defs: impl IntoIterator<Item = &'a AgentDefinition>,
    ) -> Vec<(i64, String)> {
        self.schedules.clear();
        self.heap.clear();
        self.registered.clear();
        let mut parsed: HashMap<&[String; 5], Result<Arc<CronSchedule>, String>> = HashMap::new();
        let mut bad = Vec::new();
        for d in defs.into_iter().filter(|d| d.is_scheduled()) {
            let s = parsed.entry(&d.schedule).or_insert_with(|| {
                let [m, h, dom, mon, dow] = &d.schedule;
                CronSchedule::parse_fields(m, h, dom, mon, dow)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            });
            match s {
                Ok(s) => {
                    if let Some(t) = next_after(s, self.tz, self.cursor.max(d.registered)) {
                        self.heap.push(Reverse((t, d.def_id)));
                    }
                    self.schedules.insert(d.def_id, s.clone());
                    self.registered.insert(d.def_id, d.registered);
                }
                Err(e) => bad.push((d.def_id, e.clone())),
            }
        }
        bad
    }

    pub fn len(&self) -> usize {
        self.schedules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.schedules.is_empty()
    }

    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Every (DefID, instant) due at `now`, each followed by its next occurrence.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<(i64, DateTime<Utc>)> {
        let mut due = Vec::new();
        while let Some(Reverse((t, id))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            due.push((id, t));
            if let Some(s) = self.schedules.get(&id)
                && let Some(n) = next_after(s, self.tz, t)
            {
                self.heap.push(Reverse((n, id)));
            }
        }
        if now > self.cursor {
            self.cursor = now;
        }
        due
    }

    /// The most recent instant of each definition within `window` before `now`: what the agent
    /// runs once at start (the catalog refuses instants that already ran).
    pub fn missed(
        &self,
        now: DateTime<Utc>,
        window: chrono::Duration,
    ) -> Vec<(i64, DateTime<Utc>)> {
        let mut out: Vec<(i64, DateTime<Utc>)> = self
            .schedules
            .iter()
            .filter_map(|(id, s)| {
                let prev = s
                    .prev_before(&now.with_timezone(&self.tz))?
                    .with_timezone(&Utc);
                // An instant before the definition existed was never missed.
                let born = self.registered.get(id).copied().unwrap_or(now);
                (now - prev <= window && prev >= born).then_some((*id, prev))
            })
            .collect();
        out.sort_by_key(|(id, t)| (*t, *id));
        out
    }
}

fn next_after(s: &CronSchedule, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    s.next_after(&after.with_timezone(&tz))
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn def(id: i64, sched: &str) -> AgentDefinition {
        let f: Vec<String> = sched.split(' ').map(str::to_string).collect();
        AgentDefinition {
            def_id: id,
            pgsql_node_id: 1,
            node_fqdn: "n".into(),
            pgport: 5432,
            admin_user: "postgres".into(),
            admin_dbname: "postgres".into(),
            sslmode: "prefer".into(),
            node_status: "RUNNING".into(),
            node_profile: "standard".into(),
            node_backup_partition: "pgsql_node_1".into(),
            dbname: "db".into(),
            schedule: [
                f[0].clone(),
                f[1].clone(),
                f[2].clone(),
                f[3].clone(),
                f[4].clone(),
            ],
            backup_code: "FULL".into(),
            retention_period: "7 days".into(),
            retention_redundancy: 1,
            extra_backup_parameters: String::new(),
            job_status: "ACTIVE".into(),
            dump_format: "custom".into(),
            dump_jobs: 1,
            compression_level: 3,
            max_runtime_seconds: None,
            lock_wait_timeout_seconds: None,
            client_major: None,
            pause_recovery_on_standby: false,
            max_recovery_pause_seconds: None,
            checkpoint: None,
            max_rate: None,
            wal_wait_seconds: None,
            registered: Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap(),
            repository_id: None,
            encryption_recipients: None,
        }
    }

    #[test]
    fn fires_in_order_and_reschedules() {
        let start = Utc.with_ymd_and_hms(2026, 11, 21, 1, 59, 30).unwrap();
        let mut s = Scheduler::new(chrono_tz::UTC, start);
        let defs = [def(1, "0 2 * * *"), def(2, "*/30 * * * *")];
        assert!(s.rebuild(&defs).is_empty());
        assert_eq!(
            s.next_due(),
            Some(Utc.with_ymd_and_hms(2026, 11, 21, 2, 0, 0).unwrap())
        );
        let due = s.pop_due(Utc.with_ymd_and_hms(2026, 11, 21, 2, 0, 0).unwrap());
        assert_eq!(due.len(), 2);
        assert_eq!(
            s.next_due(),
            Some(Utc.with_ymd_and_hms(2026, 11, 21, 2, 30, 0).unwrap())
        );
    }

    #[test]
    fn stopped_definitions_and_nodes_do_not_fire() {
        let mut s = Scheduler::new(chrono_tz::UTC, Utc::now());
        let mut a = def(1, "* * * * *");
        a.job_status = "STOPPED".into();
        let mut b = def(2, "* * * * *");
        b.node_status = "STOPPED".into();
        s.rebuild(&[a, b]);
        assert!(s.is_empty());
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn rebuild_at_a_fire_instant_neither_loses_nor_repeats_it() {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 21, 1, 59, 0).unwrap();
        let mut s = Scheduler::new(chrono_tz::UTC, t0);
        s.rebuild(&[def(1, "0 2 * * *")]);
        let fire = Utc.with_ymd_and_hms(2026, 11, 21, 2, 0, 0).unwrap();
        s.rebuild(&[def(1, "0 2 * * *")]);
        assert_eq!(s.pop_due(fire), vec![(1, fire)]);
        s.rebuild(&[def(1, "0 2 * * *")]);
        assert!(s.pop_due(fire).is_empty());
    }

    #[test]
    fn schedules_follow_the_time_zone_across_dst() {
        let tz: Tz = "Europe/Oslo".parse().unwrap();
        // 02:30 local every day; 29 March 2026 has no 02:30 in Oslo.
        let start = Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
        let mut s = Scheduler::new(tz, start);
        s.rebuild(&[def(1, "30 2 * * *")]);
        let mut fires = Vec::new();
        let mut now = start;
        for _ in 0..3 {
            now = s.next_due().unwrap();
            fires.extend(s.pop_due(now));
        }
        let local: Vec<String> = fires
            .iter()
            .map(|(_, t)| t.with_timezone(&tz).format("%m-%d %H:%M").to_string())
            .collect();
        assert_eq!(local, ["03-29 03:00", "03-30 02:30", "03-31 02:30"]);
        let _ = now;
    }

    #[test]
    fn no_catch_up_of_instants_before_the_definition_existed() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 2, 10, 30).unwrap();
        let mut s = Scheduler::new(chrono_tz::UTC, now);
        let mut d = def(1, "* * * * *");
        d.registered = Utc.with_ymd_and_hms(2026, 11, 21, 2, 10, 20).unwrap();
        s.rebuild(&[d]);
        assert!(s.missed(now, chrono::Duration::hours(1)).is_empty());
    }

    #[test]
    fn missed_fires_run_once_within_the_window() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 2, 10, 0).unwrap();
        let mut s = Scheduler::new(chrono_tz::UTC, now);
        s.rebuild(&[
            def(1, "0 2 * * *"),
            def(2, "0 1 * * *"),
            def(3, "* * * * *"),
        ]);
        let m = s.missed(now, chrono::Duration::minutes(30));
        assert_eq!(
            m,
            vec![
                (1, Utc.with_ymd_and_hms(2026, 11, 21, 2, 0, 0).unwrap()),
                (3, Utc.with_ymd_and_hms(2026, 11, 21, 2, 9, 0).unwrap())
            ]
        );
    }
}
