//! Children that die with their parent. A SIGKILLed agent cannot kill its pg_dump children, so
//! every child is started through a tiny launcher (the agent's own executable, re-entered with
//! [`LAUNCHER_ARG`]) that asks the kernel for SIGKILL on parent death (`PR_SET_PDEATHSIG`) and
//! then `exec`s the real program. The launcher keeps the workspace free of `unsafe`: doing the
//! same in a `pre_exec` hook would need it. Without a registered launcher (library tests,
//! `--check`), children are started directly.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

/// argv\[1\] that turns the agent's executable into the launcher:
/// `<exe> __pgbackman_exec_child <parent pid> <program> [args...]`.
pub const LAUNCHER_ARG: &str = "__pgbackman_exec_child";

static LAUNCHER: OnceLock<PathBuf> = OnceLock::new();

/// Registers the executable that understands [`LAUNCHER_ARG`]; call once, at start.
pub fn set_launcher(exe: PathBuf) {
    let _ = LAUNCHER.set(exe);
}

pub(crate) fn launcher() -> Option<&'static PathBuf> {
    LAUNCHER.get()
}

/// A command that runs `program` through the launcher when one is registered, else directly;
/// the caller adds the program's own arguments. Every child of the executor starts here.
pub(crate) fn command(program: &std::path::Path) -> tokio::process::Command {
    match launcher() {
        Some(exe) => {
            let mut c = tokio::process::Command::new(exe);
            c.arg(LAUNCHER_ARG)
                .arg(std::process::id().to_string())
                .arg(program);
            c
        }
        None => tokio::process::Command::new(program),
    }
}

/// [`command`] for children supervised outside this crate (the agent's WAL receiver): the
/// same launcher, so they die with the agent too.
pub fn child_command(program: &std::path::Path) -> tokio::process::Command {
    command(program)
}

/// The launcher's whole life: returns only when it could not become the program.
pub fn launcher_main(args: &[OsString]) -> ExitCode {
    use nix::sys::signal::Signal;
    let (Some(parent), Some(program)) = (args.first(), args.get(1)) else {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"pgbackman: internal launcher: missing arguments\n",
        );
        return ExitCode::from(125);
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("pgbackman: PR_SET_PDEATHSIG: {e}\n").as_bytes(),
        );
        return ExitCode::from(125);
    }
    // The parent may have died before the request above: then nobody would kill us later.
    let expected = parent.to_str().and_then(|p| p.parse::<i32>().ok());
    if expected != Some(nix::unistd::getppid().as_raw()) {
        return ExitCode::from(125);
    }
    let e = std::process::Command::new(program).args(&args[2..]).exec();
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("pgbackman: cannot run {}: {e}\n", program.to_string_lossy()).as_bytes(),
    );
    ExitCode::from(127)
}
