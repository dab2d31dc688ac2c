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
                .allow_hyphen_values(true)
                .value_parser(id_parser(a.label)),
            Kind::Rest => ClapArg::new(a.name)
                .value_name(a.label)
                .num_args(0..)
                .action(ArgAction::Append)
                .allow_hyphen_values(true),
            // `--jobs -3` is a value (then refused as a value), as `--jobs=-3` is.
            Kind::Opt => ClapArg::new(a.name)
                .long(a.name)
                .value_name(a.name)
                .allow_negative_numbers(true)
                .value_parser(id_parser(a.label))
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

/// The id an argument's label names ("SrvID | FQDN" → SrvID), if it takes ids.
fn id_name(label: &'static str) -> Option<&'static str> {
    label
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| w.len() > 2 && w.ends_with("ID"))
}

/// A clap value parser for arguments that take ids: every all-digit item of the value (a comma
/// list) must be an id the catalog can hold, so `99999999999999999999` is refused here with
/// the argument's name instead of as "out of range for type bigint". Names pass unchanged.
fn id_parser(label: &'static str) -> clap::builder::ValueParser {
    let Some(id) = id_name(label) else {
        return clap::builder::ValueParser::string();
    };
    clap::builder::ValueParser::new(move |v: &str| -> Result<String, String> {
        for item in v.split(',').map(str::trim) {
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            match item.parse::<i64>() {
                Ok(n) if n > 0 => {}
                Ok(_) => {
                    return Err(format!(
                        "{id} {} is not valid: ids start at 1",
                        pgbackman_core::text::quote(item)
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "{id} {} is out of range: an {id} is a whole number from 1 to {}",
                        pgbackman_core::text::quote(item),
                        i64::MAX
                    ));
                }
            }
        }
        Ok(v.to_string())
    })
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
            // Our own message (clap's would repeat the whole value, however long).
            clap::error::ErrorKind::ValueValidation if std::error::Error::source(&e).is_some() => {
                ParseError::Usage(format!(
                    "{}\nUsage: {}",
                    std::error::Error::source(&e).map_or(String::new(), |s| s.to_string()),
                    cmd.usage()
                ))
            }
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
    fn ids_out_of_range_name_the_argument() {
        let e = parse(&words("show_backup_details 99999999999999999999")).unwrap_err();
        let t = e.to_string();
        assert!(
            t.starts_with("BckID \"99999999999999999999\" is out of range"),
            "{t}"
        );
        let e = parse(&words("delete_backup_server 99999999999999999999")).unwrap_err();
        assert!(e.to_string().starts_with("SrvID "), "{e}");
        let e = parse(&words("retry_alerts 1,99999999999999999999")).unwrap_err();
        assert!(e.to_string().starts_with("AlertID "), "{e}");
        let long = "9".repeat(100_000);
        let e = parse(&words(&format!("cancel_job {long}"))).unwrap_err();
        assert!(e.to_string().len() < 400, "{e}");
        // Names and small ids pass.
        assert!(parse(&words("delete_backup_server bs1.example.org")).is_ok());
        assert!(parse(&words("show_backup_details 42")).is_ok());
    }

    #[test]
    fn negative_option_values_are_values() {
        let i = parse(&words("update_backup_definition 1 --jobs -3")).unwrap();
        assert_eq!(i.given("jobs"), Some("-3"));
    }

    #[test]
    fn negative_looking_values_are_values() {
        let i = parse(&words("update_backup_definition 1 */5 1-3")).unwrap();
        assert_eq!(i.given("hours"), Some("1-3"));
    }
}
