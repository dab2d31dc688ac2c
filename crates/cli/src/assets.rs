//! Man pages and command-line completions (bash, zsh) of both binaries, generated from their
//! clap definitions when a package is built: `pgbackman __generate-assets DIR` (hidden; run by
//! packaging/build-deb). The shell's own interactive completion is `shell`'s, not this.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// Writes `DIR/man/man1/<name>.1` (and one page per visible subcommand), `DIR/bash/<name>` and
/// `DIR/zsh/_<name>` for each command.
pub fn write(dir: &Path, cmds: Vec<clap::Command>) -> Result<()> {
    let man = dir.join("man/man1");
    let (bash, zsh) = (dir.join("bash"), dir.join("zsh"));
    for d in [&man, &bash, &zsh] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    for mut cmd in cmds {
        let name = cmd.get_name().to_string();
        clap_mangen::generate_to(cmd.clone(), &man)
            .with_context(|| format!("writing the man pages of {name} in {}", man.display()))?;
        // The top page again, with the shell's commands, which are no clap subcommands.
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        if name == "pgbackman" {
            page.extend_from_slice(shell_commands_section().as_bytes());
        }
        std::fs::write(man.join(format!("{name}.1")), page)?;
        for (shell, out) in [
            (Shell::Bash, bash.join(&name)),
            (Shell::Zsh, zsh.join(format!("_{name}"))),
        ] {
            let mut f = std::fs::File::create(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            clap_complete::generate(shell, &mut cmd, name.clone(), &mut f);
            f.flush()?;
        }
    }
    Ok(())
}

/// `pgbackman __generate-assets DIR`.
pub fn main(dir: Option<std::ffi::OsString>, cmds: Vec<clap::Command>) -> ExitCode {
    let Some(dir) = dir else {
        eprintln!("[ERROR] usage: pgbackman __generate-assets DIR");
        return ExitCode::FAILURE;
    };
    match write(Path::new(&dir), cmds) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::print_error(None, &crate::format_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// A roff section listing the shell's commands by group, as `help` does.
fn shell_commands_section() -> String {
    let mut s = String::from(
        ".SH \"SHELL COMMANDS\"\nIn the shell, or with \\fB-C\\fR. \\fBhelp\\fR \\fIcommand\\fR shows the arguments and examples of each.\n",
    );
    let mut group = "";
    for c in crate::spec::COMMANDS {
        if c.group != group {
            group = c.group;
            s.push_str(&format!(".SS \"{}\"\n", roff(group)));
        }
        s.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            roff(&c.usage()),
            roff(c.about)
        ));
    }
    s
}

/// Text made safe for a roff line: backslashes and hyphens escaped, no leading control char.
fn roff(t: &str) -> String {
    let e = t.replace('\\', "\\e").replace('-', "\\-");
    if e.starts_with('.') || e.starts_with('\'') {
        format!("\\&{e}")
    } else {
        e
    }
}
