//! Turns the words of one command line into an [`Invocation`] with clap, built from the command
//! table. The same parser serves `pgbackman -C "..."` and the interactive shell.

use std::collections::HashMap;

use clap::{Arg as ClapArg, ArgAction, Command};

use crate::spec::{self, Cmd, Kind};

#[derive(Debug)]
pub struct Invocation {
    pub cmd: &'static Cmd,
    values: HashMap<&'static str, String>,
    rest: Vec<String>,
    flags: Vec<&'static str>,
    /// No positional argument was given: the interactive shell prompts for each.
    pub bare: bool,
}

impl Invocation {
    /// The value given on the command line, if any (an explicit "" counts as given).
    pub fn given(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn rest(&self) -> &[String] {
        &self.rest
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command: {0}{1}")]
    Unknown(String, String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Help(String),
}

fn clap_command(c: &'static Cmd) -> Command {
    let mut cmd = Command::new(c.name)
        .no_binary_name(true)
        .disable_version_flag(true)
        .about(c.about);
    for a in c.args {
        let arg = match a.kind {
            Kind::Pos => ClapArg::new(a.name)
                .value_name(a.label)
                .required(false)
                .allow_hyphen_values(true),
            Kind::Rest => ClapArg::new(a.name)
                .value_name(a.label)
                .num_args(0..)
                .action(ArgAction::Append)
                .allow_hyphen_values(true),
            Kind::Opt => ClapArg::new(a.name)
                .long(a.name)
                .value_name(a.name)
                .help(a.label),
            Kind::Flag => ClapArg::new(a.name)
                .long(a.name)
                .action(ArgAction::SetTrue)
                .help(a.label),
        };
        cmd = cmd.arg(arg);
    }
    cmd
}

/// Parses `words` (command name first).
pub fn parse(words: &[String]) -> Result<Invocation, ParseError> {
    let Some((name, args)) = words.split_first() else {
        return Err(ParseError::Usage("empty command".into()));
    };
    let Some(cmd) = spec::find(name) else {
        let s = spec::suggestions(name);
        let hint = if s.is_empty() {
            "; `help` lists the commands".to_string()
        } else {
            format!("; did you mean {}?", s.join(", "))
        };
        return Err(ParseError::Unknown(name.clone(), hint));
    };
    let m = clap_command(cmd)
        .try_get_matches_from(args)
        .map_err(|e| match e.kind() {
            clap::error::ErrorKind::DisplayHelp => ParseError::Help(cmd.help()),
            _ => ParseError::Usage(format!(
                "{}\nUsage: {}",
                e.render()
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or("bad arguments")
                    .trim_start_matches("error: "),
                cmd.usage()
            )),
        })?;
    let mut values = HashMap::new();
    let mut rest = Vec::new();
    let mut flags = Vec::new();
    let mut bare = true;
    for a in cmd.args {
        match a.kind {
            Kind::Pos | Kind::Opt => {
                if let Some(v) = m.get_one::<String>(a.name) {
                    if a.kind == Kind::Pos {
                        bare = false;
                    }
                    values.insert(a.name, v.clone());
                }
            }
            Kind::Rest => {
                if let Some(vs) = m.get_many::<String>(a.name) {
                    rest = vs.cloned().collect();
                    bare &= rest.is_empty();
                }
            }
            Kind::Flag => {
                if m.get_flag(a.name) {
                    flags.push(a.name);
                }
            }
        }
    }
    Ok(Invocation {
        cmd,
        values,
        rest,
        flags,
        bare,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        shlex::split(s).unwrap()
    }

    #[test]
    fn positional_and_options() {
        let i = parse(&words("register_pgsql_node pg01 example.org 5433 Backup RUNNING 'My Remarks' --sslmode require")).unwrap();
        assert_eq!(i.given("hostname"), Some("pg01"));
        assert_eq!(i.given("admin_user"), Some("Backup"), "case preserved");
        assert_eq!(i.given("remarks"), Some("My Remarks"));
        assert_eq!(i.given("sslmode"), Some("require"));
        assert!(!i.bare);
    }

    #[test]
    fn empty_string_is_given() {
        let i = parse(&words("update_backup_server 1 \"\"")).unwrap();
        assert_eq!(i.given("remarks"), Some(""));
    }

    #[test]
    fn bare_command_prompts() {
        assert!(parse(&words("register_backup_server")).unwrap().bare);
        assert!(
            parse(&words("register_backup_server --status RUNNING"))
                .unwrap()
                .bare
        );
    }

    #[test]
    fn too_many_arguments_is_a_usage_error() {
        let e = parse(&words("delete_backup_server 1 2")).unwrap_err();
        assert!(matches!(e, ParseError::Usage(_)), "{e}");
        assert!(e.to_string().contains("Usage: delete_backup_server"), "{e}");
    }

    #[test]
    fn unknown_command_suggests() {
        let e = parse(&words("show_backup_server")).unwrap_err();
        assert!(e.to_string().contains("show_backup_servers"), "{e}");
    }

    #[test]
    fn rest_collects_pairs() {
        let i = parse(&words("update_pgsql_node_config 1 a=1 'b=2 days'")).unwrap();
        assert_eq!(i.rest(), &["a=1".to_string(), "b=2 days".to_string()]);
    }

    #[test]
    fn negative_looking_values_are_values() {
        let i = parse(&words("update_backup_definition 1 */5 1-3")).unwrap();
        assert_eq!(i.given("hours"), Some("1-3"));
    }
}
