//! A streaming-replication standby of a [`TestCluster`], for tests of anything that runs against
//! a hot standby (recovery pausing now, physical backups later).
//!
//! ```no_run
//! let primary = pgbackman_testkit::TestCluster::start();
//! let standby = pgbackman_testkit::Standby::of(&primary, &["127.0.0.5"]);
//! primary.psql("postgres", "create table t (x int)");
//! standby.wait_replayed(&primary);
//! assert_eq!(standby.psql("postgres", "select pg_is_in_recovery()"), "t");
//! ```
//!
//! `pg_basebackup -R -X stream` from the primary's socket (the template's `pg_hba.conf` trusts
//! local replication, and `wal_level` is `replica`, PostgreSQL's default), then the copy gets its
//! own port, socket directory and listen addresses and starts as a hot standby that streams from
//! the primary. It lives in the same `<base>/run-<pid>-<n>` layout as every test cluster, so
//! `Drop` and the sweep of killed test processes clean it up alike.

use std::fs;
use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::thread::sleep;
use std::time::{Duration, Instant};

use pgbackman_pgctl::Cluster;

use crate::{COUNTER, START_ATTEMPTS, TestCluster, base_dir, configured, sweep_stale};

/// How long a standby may take to catch up in [`Standby::wait_replayed`].
const CATCH_UP: Duration = Duration::from_secs(30);

/// A running hot standby of a [`TestCluster`]; everything of a [`TestCluster`] (psql, stop,
/// conninfo ...) through `Deref`. Stopped and deleted on drop. Drop it before its primary.
pub struct Standby {
    cluster: TestCluster,
}

impl Deref for Standby {
    type Target = TestCluster;
    fn deref(&self) -> &TestCluster {
        &self.cluster
    }
}

impl Standby {
    /// Clones `primary` with `pg_basebackup -R` and starts the clone as a streaming hot standby
    /// listening on `addrs` (plus its socket). Returns once it accepts read-only connections.
    /// Panics with the reason.
    pub fn of(primary: &TestCluster, addrs: &[&str]) -> Standby {
        sweep_stale();
        let dir = base_dir().join(format!(
            "run-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("testkit: cannot create {}: {e}", dir.display()));
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
        let bin = primary
            .cluster()
            .bin_dir()
            .unwrap_or_else(|e| panic!("testkit: {e}"));
        let data = dir.join("data");
        // From here on Drop cleans up, even if a step below panics.
        let mut tc = TestCluster {
            cluster: configured(Cluster::new(data.clone(), 0))
                .with_socket_dir(dir.join("socket"))
                .with_listen_addresses(addrs.iter().map(|a| a.to_string()).collect()),
            dir,
        };
        // A client program: runs as us (root too); prepare_directories hands the copy to the
        // server user and makes the data directory 0700.
        let out = Command::new(bin.join("pg_basebackup"))
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-d"])
            .arg(primary.conninfo("postgres"))
            .env_remove("PGPASSFILE")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("testkit: cannot run pg_basebackup: {e}"));
        assert!(
            out.status.success(),
            "testkit: pg_basebackup of {} failed ({}): {}",
            primary.data_dir().display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // The copy holds the primary's pid file only if it was running during the copy (it
        // is excluded by pg_basebackup, but be safe: a stale one would block the start).
        let _ = fs::remove_file(data.join("postmaster.pid"));
        tc.cluster
            .prepare_directories()
            .unwrap_or_else(|e| panic!("testkit: {e}"));
        for attempt in 1..=START_ATTEMPTS {
            tc.cluster = tc
                .cluster
                .clone()
                .with_port(pgbackman_pgctl::free_port())
                .with_setting("hot_standby", "on");
            // write_config replaces the primary's port, socket and addresses copied with the data.
            let started = tc.cluster.write_config().and_then(|()| tc.cluster.start());
            match started {
                Ok(()) => break,
                Err(e) if e.is_address_in_use() && attempt < START_ATTEMPTS => continue,
                Err(e) => panic!(
                    "testkit: cannot start the standby in {}: {e}",
                    tc.dir.display()
                ),
            }
        }
        let standby = Standby { cluster: tc };
        assert_eq!(
            standby.psql("postgres", "select pg_is_in_recovery()"),
            "t",
            "testkit: the copy of {} did not start as a standby",
            primary.data_dir().display()
        );
        standby
    }

    /// The standby's last replayed WAL position (`pg_last_wal_replay_lsn()`), as text.
    pub fn replay_lsn(&self) -> String {
        self.psql("postgres", "select pg_last_wal_replay_lsn()")
    }

    /// Whether WAL replay is paused or a pause was requested (`pg_is_wal_replay_paused()`).
    pub fn replay_paused(&self) -> bool {
        self.psql("postgres", "select pg_is_wal_replay_paused()") == "t"
    }

    /// Whether the standby has replayed everything `primary` has written so far.
    pub fn has_replayed(&self, primary: &TestCluster) -> bool {
        let target = written_lsn(primary);
        self.psql(
            "postgres",
            &format!("select pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"),
        ) == "t"
    }

    /// Waits until the standby has replayed everything `primary` has written so far. Panics
    /// after 30 s (replay paused, replication broken), with both positions.
    pub fn wait_replayed(&self, primary: &TestCluster) {
        let t0 = Instant::now();
        while !self.has_replayed(primary) {
            if t0.elapsed() > CATCH_UP {
                panic!(
                    "testkit: standby at {} did not replay up to the primary's {} within {:?} (paused: {})",
                    self.replay_lsn(),
                    written_lsn(primary),
                    CATCH_UP,
                    self.replay_paused()
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the standby has received (not necessarily replayed) everything `primary`
    /// has written: after this, a replay position that does not move means replay is paused,
    /// not that the WAL has not arrived yet.
    pub fn wait_received(&self, primary: &TestCluster) {
        let target = written_lsn(primary);
        let q = format!("select coalesce(pg_last_wal_receive_lsn() >= '{target}'::pg_lsn, false)");
        let t0 = Instant::now();
        while self.psql("postgres", &q) != "t" {
            if t0.elapsed() > CATCH_UP {
                panic!(
                    "testkit: standby did not receive the primary's WAL up to {target} within {CATCH_UP:?}"
                );
            }
            sleep(Duration::from_millis(50));
        }
    }
}

/// The end of what `primary` has written so far, everything before it flushed (so it can be
/// streamed). Not `pg_current_wal_insert_lsn()`: when the last record ends at a page boundary
/// it points past the next page's header, which no standby reaches until another record is
/// written (up to 15 s later); and the test clusters commit asynchronously, so a synchronous
/// commit first makes every earlier commit flushed. That commit must write WAL of its own
/// before its commit record: PostgreSQL flushes at commit only when the transaction wrote WAL
/// (`RecordTransactionCommit`'s `wrote_xlog`), so a bare `pg_current_xact_id()` commits
/// asynchronously and the flush position could stay before the commit under test (CI saw the
/// standby "caught up" without the row). A transactional logical message is such WAL.
fn written_lsn(primary: &TestCluster) -> String {
    primary.psql(
        "postgres",
        "select set_config('synchronous_commit', 'on', true), \
         pg_logical_emit_message(true, 'pgbackman-testkit', 'flush')",
    );
    primary.psql("postgres", "select pg_current_wal_flush_lsn()")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_follows_its_primary_and_can_be_paused() {
        let primary = TestCluster::start();
        primary.psql("postgres", "create table t (x int)");
        let standby = Standby::of(&primary, &["127.0.0.1"]);
        assert_ne!(standby.port(), primary.port());
        primary.psql("postgres", "insert into t values (1)");
        standby.wait_replayed(&primary);
        assert_eq!(standby.psql("postgres", "select count(*) from t"), "1");
        // Paused: received, not replayed; resumed: replayed.
        standby.psql("postgres", "select pg_wal_replay_pause()");
        assert!(standby.replay_paused());
        let before = standby.replay_lsn();
        primary.psql("postgres", "insert into t values (2)");
        standby.wait_received(&primary);
        sleep(Duration::from_millis(300));
        assert_eq!(standby.replay_lsn(), before);
        assert!(!standby.has_replayed(&primary));
        standby.psql("postgres", "select pg_wal_replay_resume()");
        standby.wait_replayed(&primary);
        assert_eq!(standby.psql("postgres", "select count(*) from t"), "2");
        let dir = standby.dir().to_path_buf();
        drop(standby);
        assert!(!dir.exists());
    }
}
