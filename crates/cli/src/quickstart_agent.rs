//! The agent `pgbackman quickstart` leaves running: `pgbackman-agent --config DIR/agent.toml` in
//! the background (its own process group, so the shell's Ctrl-C does not reach it), its pid in
//! `DIR/agent.pid`, its log in `DIR/agent.log`. `quickstart --stop` stops it before the catalog.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The agent binary quickstart runs: the one next to this `pgbackman`.
pub fn binary() -> Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("pgbackman-agent"))
}

fn pid_file(dir: &Path) -> PathBuf {
    dir.join("agent.pid")
}

pub fn log_file(dir: &Path) -> PathBuf {
    dir.join("agent.log")
}

/// The pid of the agent quickstart started, if it still runs (a pid reused by another program
/// does not count).
pub fn running(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let ours = cmdline.contains("pgbackman-agent")
        && cmdline.contains(&*dir.join("agent.toml").to_string_lossy());
    // A zombie (exited, not yet reaped) has no command line left: not running.
    ours.then_some(pid)
}

/// Starts the agent in the background and waits until it has taken its state directory's lock
/// (or died, then the error quotes its log).
pub fn start(dir: &Path, agent: &Path, config: &Path) -> Result<i32> {
    let log = log_file(dir);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut c = Command::new(agent);
    c.arg("--config")
        .arg(config)
        .env("PGBACKMAN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out);
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let mut child = c
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))?;
    let pid = child.id() as i32;
    std::fs::write(pid_file(dir), format!("{pid}\n"))
        .with_context(|| format!("writing {}", pid_file(dir).display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            anyhow::bail!(
                "the agent stopped at once ({st}); the end of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("pgbackman-agent started") || Instant::now() > deadline {
            // The child is not waited for: it outlives this process (init reaps it).
            std::mem::forget(child);
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the agent quickstart started (SIGTERM: running jobs are recorded CANCELLED), waiting up
/// to 20 s. Returns whether one was running.
pub fn stop(dir: &Path) -> Result<bool> {
    let Some(pid) = running(dir) else {
        let _ = std::fs::remove_file(pid_file(dir));
        return Ok(false);
    };
    let pid = nix_pid(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("stopping the agent (pid {pid})"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while running(dir).is_some() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "the agent (pid {pid}) did not stop within 20 s of SIGTERM; see {}",
                log_file(dir).display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(pid_file(dir));
    Ok(true)
}

fn nix_pid(pid: i32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(pid)
}
