//! How a PgBackMan 1.x catalog maps onto pgbackman's: pure decisions, one function per kind of
//! object. The reads (crates/db `import::read`) and the writes through the API functions
//! (crates/db `import::apply`) live elsewhere; here every value that cannot be carried over is
//! named with what happens to it instead, for the dry run's table.

use crate::cron::{CronField, validate_cron_field};
use crate::params::{check_extra_dump_parameters, split_shell_words};

/// One line of the import report: an object, one of its fields, the old value and what
/// happens to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// e.g. `backup server bs1.example.org`, `DefID 7`, `BckID 12`.
    pub object: String,
    /// The old field (or `-` for the object as a whole).
    pub field: String,
    /// The old value, as stored.
    pub old_value: String,
    /// What the import does with it.
    pub outcome: String,
}

impl Finding {
    /// A finding about `object`.
    pub fn new(object: &str, field: &str, old: &str, outcome: impl Into<String>) -> Finding {
        Finding {
            object: object.to_string(),
            field: field.to_string(),
            old_value: old.to_string(),
            outcome: outcome.into(),
        }
    }
}

/// PgBackMan's FQDN: `hostname.domain`, or the host name alone when the domain is empty.
pub fn fqdn(hostname: &str, domain: &str) -> String {
    let (h, d) = (hostname.trim(), domain.trim());
    if d.is_empty() {
        h.to_string()
    } else {
        format!("{h}.{d}")
    }
}

/// A configuration value: carried to a pgbackman parameter, or dropped with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigMap {
    /// Set `parameter` to `value` through `update_*_config`.
    Carry {
        /// pgbackman's parameter.
        parameter: String,
        /// The value to set.
        value: String,
    },
    /// Not carried: why.
    Drop(String),
    /// Handled elsewhere without a report line (e.g. the pgsql_bin_* family, the node's own
    /// columns).
    Silent,
}

/// A backup server configuration parameter of PgBackMan ([`bin_dir_template`] handles the
/// `pgsql_bin_*` family together).
pub fn server_config(parameter: &str, value: &str) -> ConfigMap {
    match parameter {
        "root_backup_partition" => ConfigMap::Carry {
            parameter: parameter.into(),
            value: value.into(),
        },
        p if p.starts_with("pgsql_bin_") => ConfigMap::Silent,
        "root_cron_file" | "pgbackman_dump" | "pgbackman_restore" => ConfigMap::Drop(
            "not used: the agent schedules and runs backups itself (no cron, at or helper programs)"
                .into(),
        ),
        "admin_user" => ConfigMap::Drop("not used by PgBackMan nor pgbackman".into()),
        "domain" | "backup_server_status" => {
            ConfigMap::Drop("a default for new servers: set it with update_backup_server_default_config".into())
        }
        _ => ConfigMap::Drop("unknown to pgbackman: not carried".into()),
    }
}

/// PgBackMan kept one client directory per release (`pgsql_bin_9_6 = /usr/pgsql-9.6/bin`);
/// pgbackman keeps one template with `{major}`. Returns the template when every directory
/// follows the same pattern around its release, else why not.
pub fn bin_dir_template(dirs: &[(String, String)]) -> Result<Option<String>, String> {
    let mut template: Option<String> = None;
    for (parameter, dir) in dirs {
        let Some(release) = parameter.strip_prefix("pgsql_bin_") else {
            continue;
        };
        let dotted = release.replace('_', ".");
        let t = if dir.contains(&dotted) {
            dir.replacen(&dotted, "{major}", 1)
        } else if dir.contains(release) {
            dir.replacen(release, "{major}", 1)
        } else {
            return Err(format!(
                "{parameter} = {dir} does not name its release: set pgsql_bin_dir by hand"
            ));
        };
        match &template {
            None => template = Some(t),
            Some(prev) if *prev == t => {}
            Some(prev) => {
                return Err(format!(
                    "the client directories follow different patterns ({prev}, {t}): set pgsql_bin_dir by hand"
                ));
            }
        }
    }
    Ok(template)
}

/// A PgSQL node configuration parameter of PgBackMan.
pub fn node_config(parameter: &str, value: &str) -> ConfigMap {
    let carry = || ConfigMap::Carry {
        parameter: parameter.into(),
        value: value.into(),
    };
    match parameter {
        "retention_period"
        | "retention_redundancy"
        | "automatic_deletion_retention"
        | "backup_minutes_interval"
        | "backup_hours_interval"
        | "backup_day_month_cron"
        | "backup_month_cron"
        | "backup_weekday_cron"
        | "extra_backup_parameters"
        | "extra_restore_parameters"
        | "logs_email"
        | "backup_job_status" => carry(),
        // A literal directory: the old backups are there, so new ones go beside them and
        // retention can still delete the old ones.
        "pgnode_backup_partition" => carry(),
        "backup_code" => match value.trim().to_ascii_uppercase().as_str() {
            "RDS" => ConfigMap::Carry {
                parameter: parameter.into(),
                value: "FULL".into(),
            },
            "CONFIG" => {
                ConfigMap::Drop("CONFIG was never implemented: the default stays FULL".into())
            }
            _ => carry(),
        },
        "encryption" => {
            if value.trim().eq_ignore_ascii_case("true") {
                ConfigMap::Drop(
                    "encryption was never implemented in PgBackMan: pgbackman keeps false".into(),
                )
            } else {
                ConfigMap::Silent
            }
        }
        // PgBackMan's ON/OFF switch; pgbackman's is a boolean of the same meaning.
        "pause_recovery_process_on_slave" => match value.trim().to_ascii_uppercase().as_str() {
            "ON" | "TRUE" => ConfigMap::Carry {
                parameter: "pause_recovery_on_standby".into(),
                value: "true".into(),
            },
            _ => ConfigMap::Silent,
        },
        "pgnode_crontab_file" => {
            ConfigMap::Drop("not used: the agent schedules backups itself (no crontab)".into())
        }
        // These PgBackMan kept as defaults in the node's config; the node's own columns carry them.
        "pgport" | "admin_user" | "domain" | "pgsql_node_status" => ConfigMap::Silent,
        _ => ConfigMap::Drop("unknown to pgbackman: not carried".into()),
    }
}

/// A backup definition as PgBackMan stored it.
#[derive(Debug, Clone, Default)]
pub struct OldDefinition {
    /// DefID in the old catalog.
    pub def_id: i64,
    /// Database ('' for CLUSTER).
    pub dbname: String,
    /// minute, hour, day of month, month, day of week.
    pub cron: [String; 5],
    /// FULL, SCHEMA, DATA, CLUSTER, CONFIG, RDS.
    pub code: String,
    /// Never implemented in PgBackMan.
    pub encryption: bool,
    /// Old interval, as text.
    pub retention_period: String,
    /// Newest successful backups always kept.
    pub retention_redundancy: i32,
    /// Spliced unquoted into a shell command by PgBackMan (single quotes stripped).
    pub extra: String,
    /// ACTIVE, STOPPED, DELETED.
    pub job_status: String,
    /// Remarks.
    pub remarks: String,
}

/// pgbackman's backup code for PgBackMan's, and whether the node must have node_profile
/// `managed` (RDS: FULL without role passwords). None: no equivalent (CONFIG).
pub fn code(old: &str) -> Option<(String, bool)> {
    match old.trim().to_ascii_uppercase().as_str() {
        c @ ("FULL" | "SCHEMA" | "DATA" | "CLUSTER") => Some((c.to_string(), false)),
        "RDS" => Some(("FULL".into(), true)),
        _ => None,
    }
}

/// What to register for an old definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionPlan {
    /// pgbackman's backup code.
    pub code: String,
    /// Extra pg_dump parameters to keep.
    pub extra: String,
    /// `-j N` of the old extra parameters: directory format with N jobs.
    pub dump_jobs: Option<i32>,
    /// Status to register with (ACTIVE or STOPPED).
    pub job_status: String,
    /// Set DELETED after registration (the API registers ACTIVE or STOPPED only).
    pub deleted: bool,
    /// The node needs node_profile=managed (an RDS definition: no role passwords).
    pub managed_node: bool,
    /// Remarks, with what the import changed appended.
    pub remarks: String,
}

/// Maps an old definition: Ok(plan, findings) or Err(findings) when it cannot be imported.
pub fn definition(d: &OldDefinition) -> Result<(DefinitionPlan, Vec<Finding>), Vec<Finding>> {
    let object = format!("DefID {}", d.def_id);
    let mut notes = Vec::new();
    let mut findings = Vec::new();
    let (code, managed_node) = match code(&d.code) {
        Some((c, managed)) => {
            if managed {
                findings.push(Finding::new(
                    &object,
                    "backup_code",
                    "RDS",
                    "imported as FULL on a node with node_profile managed (no role passwords, as RDS)",
                ));
            }
            (c, managed)
        }
        None => {
            return Err(vec![Finding::new(
                &object,
                "backup_code",
                &d.code,
                "not imported: pgbackman has no such backup code (CONFIG was never implemented)",
            )]);
        }
    };
    let fields = [
        CronField::Minute,
        CronField::Hour,
        CronField::DayOfMonth,
        CronField::Month,
        CronField::DayOfWeek,
    ];
    let mut bad_cron = Vec::new();
    for (f, v) in fields.iter().zip(&d.cron) {
        if let Err(e) = validate_cron_field(*f, v) {
            bad_cron.push(Finding::new(
                &object,
                &format!("{}_cron", f.name().replace('-', "_")),
                v,
                format!("not imported: {e}"),
            ));
        }
    }
    if !bad_cron.is_empty() {
        return Err(bad_cron);
    }
    if d.encryption {
        findings.push(Finding::new(
            &object,
            "encryption",
            "true",
            "imported as false: PgBackMan never encrypted (the flag was unused)",
        ));
    }
    let mut job_status = d.job_status.trim().to_ascii_uppercase();
    let (extra, dump_jobs) = match extra_parameters(&d.extra) {
        Ok((extra, jobs)) => {
            if let Some(j) = jobs {
                findings.push(Finding::new(
                    &object,
                    "extra_backup_parameters",
                    &d.extra,
                    format!("-j {j} becomes dump format directory with {j} jobs"),
                ));
            }
            (extra, jobs)
        }
        Err(reason) => {
            findings.push(Finding::new(
                &object,
                "extra_backup_parameters",
                &d.extra,
                format!(
                    "{reason}: imported STOPPED without them; fix with update_backup_definition, then set it ACTIVE"
                ),
            ));
            notes.push(format!(
                "imported STOPPED: PgBackMan extra parameters {:?} refused",
                d.extra
            ));
            if job_status == "ACTIVE" {
                job_status = "STOPPED".into();
            }
            (String::new(), None)
        }
    };
    let deleted = job_status == "DELETED";
    if deleted {
        findings.push(Finding::new(
            &object,
            "job_status",
            "DELETED",
            "imported DELETED: its quarantine (automatic_deletion_retention) starts again now",
        ));
        job_status = "STOPPED".into();
    } else if job_status != "ACTIVE" && job_status != "STOPPED" {
        return Err(vec![Finding::new(
            &object,
            "job_status",
            &d.job_status,
            "not imported: unknown status",
        )]);
    }
    let mut remarks = d.remarks.clone();
    for n in notes {
        if !remarks.is_empty() {
            remarks.push_str("; ");
        }
        remarks.push_str(&n);
    }
    Ok((
        DefinitionPlan {
            code,
            extra,
            dump_jobs,
            job_status,
            deleted,
            managed_node,
            remarks,
        },
        findings,
    ))
}

/// PgBackMan's extra parameters, as pgbackman takes them: `-j N` / `--jobs=N` (which needed
/// PgBackMan's directory format) are taken out and returned; the rest must pass
/// [`check_extra_dump_parameters`]. PgBackMan stripped single quotes before splicing the text
/// into a shell command, so they are stripped here too.
pub fn extra_parameters(old: &str) -> Result<(String, Option<i32>), String> {
    let text = old.replace('\'', "");
    let words = split_shell_words(&text).map_err(|e| e.to_string())?;
    let mut jobs = None;
    let mut rest = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let value = if w == "-j" || w == "--jobs" {
            Some(it.next().cloned().unwrap_or_default())
        } else if let Some(v) = w.strip_prefix("--jobs=") {
            Some(v.to_string())
        } else {
            w.strip_prefix("-j").map(str::to_string)
        };
        match value {
            Some(v) => match v.parse::<i32>() {
                Ok(n) if (1..=64).contains(&n) => jobs = Some(n),
                _ => {
                    return Err(format!(
                        "pg_dump option {w} {v} is not a number of jobs from 1 to 64"
                    ));
                }
            },
            None => rest.push(w.clone()),
        }
    }
    let joined = rest
        .iter()
        .map(|w| quote_word(w))
        .collect::<Vec<_>>()
        .join(" ");
    check_extra_dump_parameters(&joined).map_err(|e| e.to_string())?;
    Ok((joined, jobs))
}

/// One word written back so that shell-rule splitting gives it again.
fn quote_word(w: &str) -> String {
    let plain = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@%+".contains(c));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// A backup catalog row as PgBackMan stored it (the parts the decision needs).
#[derive(Debug, Clone, Default)]
pub struct OldBackup {
    /// BckID in the old catalog.
    pub bck_id: i64,
    /// SUCCEEDED, ERROR, WARNING.
    pub execution_status: String,
    /// Dump, roles and dbconfig files (`None` or '' when absent).
    pub dump_files: Vec<String>,
    /// Log files.
    pub log_files: Vec<String>,
}

/// A PgBackMan file column: the string `None` or '' mean no file.
pub fn file_of(column: Option<&str>) -> Option<String> {
    match column.map(str::trim) {
        None | Some("") | Some("None") => None,
        Some(p) => Some(p.to_string()),
    }
}

/// What happens to an old catalog row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupPlan {
    /// Imported with this status and note.
    Import {
        /// SUCCEEDED or ERROR.
        status: String,
        /// Says where it came from and what was missing.
        note: String,
    },
    /// Not imported, with the finding saying why.
    Skip(Finding),
}

/// Decides an old catalog row: a successful backup whose dump files are not all present on
/// this host is skipped (a row must name a set that exists, or retention, restores and
/// reconciliation would act on nothing); a failed run is imported as history (it never had
/// files); a missing log file is only noted. `present` says whether a path exists here.
pub fn backup(b: &OldBackup, present: &dyn Fn(&str) -> bool) -> (BackupPlan, Vec<Finding>) {
    let object = format!("BckID {}", b.bck_id);
    let mut findings = Vec::new();
    let mut note = format!("imported from PgBackMan (BckID {})", b.bck_id);
    let status = match b.execution_status.trim().to_ascii_uppercase().as_str() {
        "SUCCEEDED" => "SUCCEEDED",
        "ERROR" => "ERROR",
        other => {
            return (
                BackupPlan::Skip(Finding::new(
                    &object,
                    "execution_status",
                    other,
                    "not imported: pgbackman records SUCCEEDED or ERROR only",
                )),
                findings,
            );
        }
    };
    if status == "SUCCEEDED" {
        if b.dump_files.is_empty() {
            return (
                BackupPlan::Skip(Finding::new(
                    &object,
                    "pg_dump_file",
                    "None",
                    "not imported: a successful backup without a dump file",
                )),
                findings,
            );
        }
        if let Some(gone) = b.dump_files.iter().find(|f| !present(f)) {
            return (
                BackupPlan::Skip(Finding::new(
                    &object,
                    "pg_dump_file",
                    gone,
                    "not imported: the file is missing on this host (run the import on the backup server that holds it)",
                )),
                findings,
            );
        }
        for l in b.log_files.iter().filter(|l| !present(l)) {
            findings.push(Finding::new(
                &object,
                "log file",
                l,
                "imported; the log file is missing",
            ));
            note.push_str("; log file missing at import");
        }
        note.push_str(": a PgBackMan set (directory-format dump, no manifest), restore it by hand");
    }
    (
        BackupPlan::Import {
            status: status.into(),
            note,
        },
        findings,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn pause_recovery_on_a_slave_becomes_pause_recovery_on_standby() {
        assert_eq!(
            node_config("pause_recovery_process_on_slave", "ON"),
            ConfigMap::Carry {
                parameter: "pause_recovery_on_standby".into(),
                value: "true".into()
            }
        );
        assert_eq!(
            node_config("pause_recovery_process_on_slave", "OFF"),
            ConfigMap::Silent
        );
    }

    use super::*;

    #[test]
    fn fqdn_without_domain_has_no_dot() {
        assert_eq!(fqdn("db1", "example.org"), "db1.example.org");
        assert_eq!(fqdn("127.0.0.2", ""), "127.0.0.2");
    }

    #[test]
    fn bin_dirs_become_one_template_or_a_reason() {
        let dirs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            bin_dir_template(&dirs(&[
                ("pgsql_bin_9_6", "/usr/pgsql-9.6/bin"),
                ("pgsql_bin_10", "/usr/pgsql-10/bin")
            ])),
            Ok(Some("/usr/pgsql-{major}/bin".into()))
        );
        assert!(
            bin_dir_template(&dirs(&[
                ("pgsql_bin_9_6", "/usr/pgsql-9.6/bin"),
                ("pgsql_bin_10", "/opt/pg10/bin")
            ]))
            .is_err()
        );
        assert_eq!(bin_dir_template(&[]), Ok(None));
    }

    #[test]
    fn extra_parameters_take_jobs_out_and_refuse_what_pgbackman_refuses() {
        assert_eq!(
            extra_parameters("-j 4 --no-owner"),
            Ok(("--no-owner".into(), Some(4)))
        );
        assert_eq!(extra_parameters("--jobs=2"), Ok((String::new(), Some(2))));
        assert_eq!(
            extra_parameters("--exclude-table='audit*'"),
            Ok(("'--exclude-table=audit*'".into(), None))
        );
        assert!(extra_parameters("--file=/tmp/x").is_err());
        assert!(extra_parameters("-h otherhost").is_err());
        assert!(extra_parameters("-j 0").is_err());
    }

    #[test]
    fn words_are_written_back_so_that_they_split_the_same() {
        for w in [
            "--no-owner",
            "--exclude-table=a b",
            "--exclude-schema=it's",
            "-n*",
        ] {
            let q = quote_word(w);
            assert_eq!(split_shell_words(&q).unwrap(), vec![w.to_string()], "{q}");
        }
    }

    #[test]
    fn configuration_is_carried_dropped_or_left_to_the_node() {
        assert_eq!(
            node_config("backup_code", "RDS"),
            ConfigMap::Carry {
                parameter: "backup_code".into(),
                value: "FULL".into()
            }
        );
        assert!(matches!(
            node_config("pgnode_crontab_file", "/etc/cron.d/x"),
            ConfigMap::Drop(_)
        ));
        assert_eq!(node_config("pgport", "5432"), ConfigMap::Silent);
        assert!(matches!(
            server_config("root_cron_file", "/etc/cron.d/pgbackman"),
            ConfigMap::Drop(_)
        ));
        assert!(matches!(
            server_config("root_backup_partition", "/srv/pgbackman"),
            ConfigMap::Carry { .. }
        ));
    }

    fn def(code: &str, extra: &str, status: &str) -> OldDefinition {
        OldDefinition {
            def_id: 3,
            dbname: "shop".into(),
            cron: ["10", "2", "*", "*", "*"].map(String::from),
            code: code.into(),
            retention_period: "7 days".into(),
            retention_redundancy: 1,
            extra: extra.into(),
            job_status: status.into(),
            ..Default::default()
        }
    }

    #[test]
    fn definitions_map_codes_statuses_and_refused_parameters() {
        let (p, f) = definition(&def("RDS", "", "ACTIVE")).unwrap();
        assert_eq!((p.code.as_str(), p.managed_node), ("FULL", true));
        assert_eq!(f.len(), 1);
        let (p, f) = definition(&def("FULL", "--file=/tmp/x", "ACTIVE")).unwrap();
        assert_eq!((p.job_status.as_str(), p.extra.as_str()), ("STOPPED", ""));
        assert!(f[0].outcome.contains("imported STOPPED"), "{f:?}");
        assert!(p.remarks.contains("refused"));
        let (p, _) = definition(&def("FULL", "", "DELETED")).unwrap();
        assert!(p.deleted && p.job_status == "STOPPED");
        assert!(definition(&def("CONFIG", "", "ACTIVE")).is_err());
        let mut bad = def("FULL", "", "ACTIVE");
        bad.cron[0] = "75".into();
        let e = definition(&bad).unwrap_err();
        assert_eq!(e[0].field, "minute_cron");
    }

    #[test]
    fn a_successful_row_needs_its_dump_files_and_a_failed_one_is_history() {
        let b = OldBackup {
            bck_id: 9,
            execution_status: "SUCCEEDED".into(),
            dump_files: vec!["/a/dump".into(), "/a/users".into()],
            log_files: vec!["/a/log".into()],
        };
        let (p, f) = backup(&b, &|p| p != "/a/log");
        assert!(
            matches!(p, BackupPlan::Import { ref note, .. } if note.contains("log file missing"))
        );
        assert_eq!(f.len(), 1);
        let (p, _) = backup(&b, &|p| p != "/a/users");
        assert!(matches!(p, BackupPlan::Skip(ref f) if f.old_value == "/a/users"));
        let failed = OldBackup {
            execution_status: "ERROR".into(),
            dump_files: vec![],
            ..b.clone()
        };
        assert!(
            matches!(backup(&failed, &|_| false).0, BackupPlan::Import { ref status, .. } if status == "ERROR")
        );
        let warn = OldBackup {
            execution_status: "WARNING".into(),
            ..b
        };
        assert!(matches!(backup(&warn, &|_| true).0, BackupPlan::Skip(_)));
        assert_eq!(file_of(Some("None")), None);
    }
}
