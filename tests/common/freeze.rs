//! A cluster frozen with SIGSTOP (the catalog or a node that accepts connections and answers
//! nothing), as the fault tests need it.

use pgbackman_testkit::TestCluster;

/// The postmaster of a cluster and every process it started, stopped with SIGSTOP; SIGCONT when
/// dropped (also when the test fails, so that the cluster can be stopped).
pub struct Frozen(Vec<nix::unistd::Pid>);

impl Frozen {
    pub fn freeze(cluster: &TestCluster) -> Frozen {
        use nix::sys::signal::{Signal, kill};
        let pm = cluster.cluster().postmaster_pid().expect("postmaster");
        let pm = nix::unistd::Pid::from_raw(pm);
        // The postmaster first: once it is stopped it forks no new backend.
        kill(pm, Signal::SIGSTOP).unwrap();
        let mut pids = vec![pm];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(pm.as_raw()) {
                let p = nix::unistd::Pid::from_raw(pid);
                if kill(p, Signal::SIGSTOP).is_ok() {
                    pids.push(p);
                }
            }
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = nix::sys::signal::kill(*p, nix::sys::signal::Signal::SIGCONT);
        }
    }
}
