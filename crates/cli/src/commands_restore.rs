//! Restore commands: `register_restore_definition` (PgBackMan's decision flow in the shell, the
//! same decisions as named options with `-C`, `--dry-run` for the plan) and the
//! `show_restore_*` listings.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use pgbackman_core::model::{self, BackupCode, Filter};
use pgbackman_core::restore::{
    ReuseRoles, check_extra_restore_parameters, default_renamed_dbname, plan_roles,
};
use pgbackman_db::restore::target::{self, TargetState};
use pgbackman_db::restore::{NewRestore, RestoreSource};
use pgbackman_db::{NodeInfo, Rows, Value};

use crate::parse::Invocation;
use crate::render::Output;
use crate::session::{Aborted, Session};

/// Whether `name` is one of the commands of this module.
pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "register_restore_definition"
            | "show_restore_definitions"
            | "show_restore_catalog"
            | "show_restore_details"
            | "show_restores_in_progress"
    )
}

pub async fn run(s: &mut Session, inv: &Invocation) -> Result<Output> {
    match inv.cmd.name {
        "register_restore_definition" => register(s, inv).await,
        "show_restore_definitions" => {
            let (srv, node, db) = filters(s, inv)?;
            Ok(Output::List {
                kind: "restore_definitions",
                rows: s.catalog.show_restore_definitions(&srv, &node, &db).await?,
            })
        }
        "show_restore_catalog" => {
            let (srv, node, db) = filters(s, inv)?;
            Ok(Output::List {
                kind: "restore_catalog",
                rows: s.catalog.show_restore_catalog(&srv, &node, &db).await?,
            })
        }
        "show_restore_details" => {
            let id: i64 = s
                .required(inv, "restore_id", None)?
                .trim()
                .parse()
                .context("RestoreID must be a number")?;
            Ok(Output::Report {
                kind: "restore_details",
                rows: s.catalog.show_restore_details(id).await?,
            })
        }
        "show_restores_in_progress" => Ok(Output::List {
            kind: "restores_in_progress",
            rows: s.catalog.show_restores_in_progress().await?,
        }),
        other => bail!("{other} is not a restore command"),
    }
}

type Filters = (
    Option<Vec<String>>,
    Option<Vec<String>>,
    Option<Vec<String>>,
);

fn filters(s: &mut Session, inv: &Invocation) -> Result<Filters> {
    let f = |v: Option<String>| match model::parse_filter(v.as_deref().unwrap_or("")) {
        Filter::All => None,
        Filter::Any(v) => Some(v),
    };
    Ok((
        f(s.value(inv, "server", Some("all"))?),
        f(s.value(inv, "node", Some("all"))?),
        f(s.value(inv, "dbname", Some("all"))?),
    ))
}

/// yes/no in the shell (Ctrl-C abandons the command).
fn yes_no(s: &mut Session, question: &str) -> Result<bool> {
    loop {
        match s
            .ask(&format!("{question} (yes/no)"), None)?
            .to_ascii_lowercase()
            .as_str()
        {
            "yes" | "y" => return Ok(true),
            "no" | "n" => return Ok(false),
            _ => println!("Please answer yes or no."),
        }
    }
}

async fn probe(s: &Session, n: &NodeInfo) -> Result<TargetState> {
    let label = format!("{}:{} (NodeID {})", n.fqdn, n.port, n.node_id);
    let mut cfg =
        pgbackman_config::node_config(&n.fqdn, n.port, &n.admin_user, &n.admin_dbname, &n.sslmode)
            .with_context(|| format!("PgSQL node {label}"))?;
    s.config.node_timeouts()?.apply(&mut cfg);
    target::probe(cfg, &label).await.map_err(|e| match e.to_string().contains("\nHINT: ") {
        true => anyhow::anyhow!("{e}"), // already says what to do (a deadline, TLS, pgpass)
        false => anyhow::anyhow!(
            "{e}\nHINT: the target must be reachable from here to decide the restore: check that the node is up, that pg_hba.conf admits {} from this host, and that a pgpass entry exists if it needs a password",
            n.admin_user
        ),
    })
}

/// Everything decided, shown by --dry-run and before the confirmation.
struct Plan {
    source: RestoreSource,
    node: NodeInfo,
    state: TargetState,
    new: NewRestore,
    roles_reused: Vec<String>,
    roles_system: Vec<String>,
}

impl Plan {
    fn rows(&self) -> Rows {
        let t = |v: &str| Value::Text(v.to_string());
        let list = |v: &[String]| Value::List(v.to_vec());
        let cluster = self.new.target_dbname.is_empty();
        let mut fields: Vec<(&str, Value)> = vec![
            ("BckID", Value::Int(self.source.bck_id)),
            ("Code", t(&self.source.code)),
            (
                "Source",
                t(&format!(
                    "{} on {}, finished {}",
                    if self.source.dbname.is_empty() {
                        "the whole cluster"
                    } else {
                        &self.source.dbname
                    },
                    self.source.source_node,
                    crate::zone::display().show(&self.source.finished)
                )),
            ),
            (
                "Backup server (runs the restore)",
                t(&self.source.backup_server),
            ),
            (
                "Target PgSQL node",
                t(&format!(
                    "{}:{} (NodeID {}, PostgreSQL {})",
                    self.node.fqdn, self.node.port, self.node.node_id, self.state.server_version
                )),
            ),
        ];
        if cluster {
            fields.push((
                "Target",
                t(if self.new.acknowledge_nonempty {
                    "the whole cluster (non-empty: acknowledged)"
                } else {
                    "the whole cluster (empty)"
                }),
            ));
        } else {
            fields.push(("Database to create", t(&self.new.target_dbname)));
            fields.push((
                "Existing database renamed to",
                self.new.renamed_dbname.as_deref().map_or(Value::Null, &t),
            ));
            fields.push(("Roles to create", list(&self.new.roles_to_restore)));
            fields.push(("Roles reused as they are", list(&self.roles_reused)));
            fields.push(("System roles reused", list(&self.roles_system)));
            fields.push(("Database settings", t(&self.settings())));
        }
        fields.push((
            "AT time",
            self.new.at_time.map_or_else(|| t("now"), Value::Time),
        ));
        fields.push(("Jobs", Value::Int(i64::from(self.new.jobs.unwrap_or(1)))));
        fields.push((
            "Decompression",
            t(self.new.decompression.as_deref().unwrap_or("auto")),
        ));
        fields.push((
            "Extra parameters",
            t(self.new.extra.as_deref().unwrap_or("")),
        ));
        Rows {
            columns: fields.iter().map(|(k, _)| k.to_string()).collect(),
            rows: vec![fields.into_iter().map(|(_, v)| v).collect()],
        }
    }

    /// The database-level statements of the set's database.sql, when this host can read it.
    fn settings(&self) -> String {
        let Some(dir) = &self.source.backup_dir else {
            return String::new();
        };
        let path = std::path::Path::new(dir).join("database.sql");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let name = format!("\"{}\"", self.new.target_dbname.replace('"', "\"\""));
                text.lines()
                    .filter(|l| {
                        [
                            "CREATE DATABASE",
                            "ALTER DATABASE",
                            "GRANT ",
                            "REVOKE ",
                            "ALTER ROLE",
                            "COMMENT ON DATABASE",
                        ]
                        .iter()
                        .any(|p| l.starts_with(p))
                    })
                    .map(|l| l.replace(":\"dbname\"", &name))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            Err(_) => format!(
                "{} on {} (owner, settings, grants and per-role settings as captured)",
                path.display(),
                self.source.backup_server
            ),
        }
    }
}

async fn register(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let at = crate::commands::at_time_arg(s.value(inv, "at_time", Some("now"))?.as_deref())?;
    let bck_id: i64 = s
        .required(inv, "bck_id", None)?
        .trim()
        .parse()
        .context("BckID must be a number; show_backup_catalog lists the backups")?;
    let source = s.catalog.restore_source(bck_id).await?;
    // A set in a repository (issue 13) is restored from its objects by its server's agent.
    let in_repository =
        source.backup_dir.is_none() && s.catalog.repository_set(bck_id).await?.is_some();
    // Only rows imported from PgBackMan 1.x succeeded without a set (db import-pgbackman).
    if source.execution_status == "SUCCEEDED" && source.backup_dir.is_none() && !in_repository {
        bail!(
            "BckID {bck_id} is a PgBackMan 1.x backup: pgbackman does not restore it\nHINT: restore it by hand: psql -f its USERS and DBCONFIG files, then pg_restore -d DBNAME its dump directory; show_backup_details {bck_id} lists the files"
        );
    }
    if source.execution_status != "SUCCEEDED" || (source.backup_dir.is_none() && !in_repository) {
        bail!(
            "BckID {bck_id} cannot be restored: its backup ended {}\nHINT: pick a SUCCEEDED backup: show_backup_catalog all all {} all SUCCEEDED",
            source.execution_status,
            if source.dbname.is_empty() {
                "all"
            } else {
                &source.dbname
            }
        );
    }
    let code: BackupCode = source.code.parse()?;
    if code.is_physical() {
        bail!(
            "BckID {bck_id} is a base backup: restore_backup restores logical sets only\nHINT: point-in-time restores of base backups come with the next release; show_backup_details {bck_id} lists its files, LSNs and timeline for a restore by hand"
        );
    }
    if code == BackupCode::Data {
        bail!(
            "BckID {bck_id} is a DATA backup: it holds no schema, and a restore creates a new database\nHINT: restore a FULL or SCHEMA backup of {}, or load this one by hand with pg_restore --data-only into a database that has the schema",
            source.dbname
        );
    }
    let node_ref = s.required(inv, "node", None)?;
    let node = s.catalog.node(&node_ref).await?;
    if node.status == "STOPPED" {
        bail!(
            "target PgSQL node {} is STOPPED\nHINT: set it RUNNING with update_pgsql_node, or restore onto another node",
            node.fqdn
        );
    }
    let cfg = s.catalog.node_config(node.node_id).await?;
    let cluster = code.is_cluster_wide();
    let dbname = if cluster {
        if inv.given("dbname").is_some_and(|d| !d.trim().is_empty()) {
            bail!(
                "BckID {bck_id} is a {code} backup: it restores the whole cluster, so no target database is given"
            );
        }
        String::new()
    } else {
        s.required(inv, "dbname", Some(&source.dbname.clone()))?
    };
    let extra_default = cfg
        .get("extra_restore_parameters")
        .cloned()
        .unwrap_or_default();
    let extra = s
        .value(inv, "extra", Some(&extra_default))?
        .unwrap_or(extra_default);
    check_extra_restore_parameters(&extra)?;
    let jobs = inv
        .given("jobs")
        .map(|j| {
            j.trim()
                .parse::<i32>()
                .ok()
                .filter(|j| (1..=64).contains(j))
                .with_context(|| format!("--jobs \"{j}\" is not a number from 1 to 64"))
        })
        .transpose()?;
    let decompression = inv
        .given("decompression")
        .map(|d| match d.trim().to_ascii_lowercase().as_str() {
            v @ ("auto" | "stream" | "file" | "tee") => Ok(v.to_string()),
            other => Err(anyhow::anyhow!(
                "--decompression \"{other}\" is not valid: use auto, stream, file or tee"
            )),
        })
        .transpose()?;
    let ack = inv.flag("acknowledge-nonempty");
    if ack && !cluster {
        bail!(
            "--acknowledge-nonempty is for CLUSTER and GLOBALS restores; a database restore never overwrites a database (use --rename-existing)"
        );
    }

    let state = probe(s, &node).await?;
    // The downgrade rule: a dump loads into its own major or a newer one.
    let target_major = state.server_version_num / 10000;
    if let Some(dump_major) = source
        .pg_dump_release
        .as_deref()
        .and_then(|r| r.trim().parse::<i32>().ok())
        && target_major < dump_major
    {
        bail!(
            "restore refused: BckID {bck_id} was written by pg_dump {dump_major}, and {} runs PostgreSQL {}, an older major; a dump only loads into its own major or a newer one\nHINT: restore onto a node running PostgreSQL {dump_major} or newer",
            node.fqdn,
            state.server_version
        );
    }

    let mut new = NewRestore {
        at_time: at.as_ref().map(|t| t.at),
        bck_id,
        node: node.node_id.to_string(),
        target_dbname: dbname.clone(),
        renamed_dbname: None,
        extra: Some(extra),
        roles_to_restore: Vec::new(),
        jobs,
        decompression,
        acknowledge_nonempty: ack,
        remarks: inv.given("remarks").map(str::to_string),
        identity_files: crate::commands_encryption::identity_files(inv)?,
    };
    let mut roles_reused = Vec::new();
    let mut roles_system = Vec::new();
    let interactive = inv.bare && s.interactive();

    if cluster {
        let own: BTreeSet<&str> = [
            "postgres",
            "template0",
            "template1",
            node.admin_dbname.as_str(),
        ]
        .into_iter()
        .collect();
        let dbs: Vec<&str> = state
            .databases
            .iter()
            .map(String::as_str)
            .filter(|d| !own.contains(d))
            .collect();
        let mut roles: Vec<String> = state
            .roles
            .iter()
            .filter(|r| {
                !r.starts_with("pg_") && **r != state.bootstrap_superuser && **r != node.admin_user
            })
            .cloned()
            .collect();
        // Roles named from a session on a database of another encoding count too.
        roles.extend(state.raw_roles.keys().map(|b| {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("{} (bytes {hex})", String::from_utf8_lossy(b))
        }));
        if (!dbs.is_empty() || !roles.is_empty()) && !ack {
            let what = format!(
                "databases: {}; roles: {}",
                if dbs.is_empty() {
                    "none".into()
                } else {
                    dbs.join(", ")
                },
                if roles.is_empty() {
                    "none".into()
                } else {
                    roles.join(", ")
                }
            );
            if interactive
                && yes_no(
                    s,
                    &format!(
                        "The target cluster {} is not empty ({what}). Restore the {code} backup onto it anyway?",
                        node.fqdn
                    ),
                )?
            {
                new.acknowledge_nonempty = true;
            } else if interactive {
                return Err(Aborted.into());
            } else {
                bail!(
                    "the target cluster {} is not empty ({what}): a {code} backup restores onto an empty cluster\nHINT: restore onto an empty cluster, or add --acknowledge-nonempty to restore onto this one anyway",
                    node.fqdn
                );
            }
        }
    } else {
        // The target database: renamed out of the way, or stop.
        if state.databases.contains(&dbname) {
            let rename = match inv.given("rename-existing") {
                Some(r) if r.trim().is_empty() || r == "auto" => {
                    Some(default_renamed_dbname(&dbname, chrono::Utc::now()))
                }
                Some(r) => Some(r.to_string()),
                None if interactive => {
                    if !yes_no(
                        s,
                        &format!("Database \"{dbname}\" exists on {}. Rename it?", node.fqdn),
                    )? {
                        println!(
                            "Restore abandoned: choose another target database name, or let the existing one be renamed."
                        );
                        return Err(Aborted.into());
                    }
                    let mut name;
                    loop {
                        let d = default_renamed_dbname(&dbname, chrono::Utc::now());
                        name = s.ask("New name of the existing database", Some(&d))?;
                        if name.is_empty() {
                            name = d;
                        }
                        if !state.databases.contains(&name) && name != dbname {
                            break;
                        }
                        println!("Database \"{name}\" exists too: choose another name.");
                    }
                    Some(name)
                }
                None => bail!(
                    "database \"{dbname}\" exists on {}\nHINT: give another target database name, or add --rename-existing auto (renames it to {}) or --rename-existing NAME",
                    node.fqdn,
                    default_renamed_dbname(&dbname, chrono::Utc::now())
                ),
            };
            if let Some(r) = &rename
                && state.databases.contains(r)
            {
                bail!(
                    "database \"{dbname}\" cannot be renamed to \"{r}\" on {}: that database exists too\nHINT: give another --rename-existing name",
                    node.fqdn
                );
            }
            new.renamed_dbname = rename;
        } else if inv.given("rename-existing").is_some() {
            println!(
                "{}",
                crate::render::safe(&format!(
                    "[NOTE] database \"{dbname}\" does not exist on {}: nothing to rename.",
                    node.fqdn
                ))
            );
        }
        // The roles: created when missing, reused when chosen, else stop.
        let reuse = ReuseRoles::parse(inv.given("reuse-roles").unwrap_or("none"));
        let mut plan = plan_roles(
            &source.role_list,
            &state.roles,
            &state.bootstrap_superuser,
            &reuse,
        );
        if !plan.conflicts.is_empty() {
            if interactive {
                for r in std::mem::take(&mut plan.conflicts) {
                    if yes_no(
                        s,
                        &format!(
                            "Role \"{r}\" exists on {}. Use the existing role (left as it is)?",
                            node.fqdn
                        ),
                    )? {
                        plan.reuse.push(r);
                    } else {
                        println!("Restore abandoned: role \"{r}\" exists and is not to be reused.");
                        return Err(Aborted.into());
                    }
                }
            } else {
                let names: Vec<String> = plan
                    .conflicts
                    .iter()
                    .map(|r| pgbackman_core::text::quote(r))
                    .collect();
                bail!(
                    "role(s) {} of BckID {bck_id} exist on {}\nHINT: reuse them as they are with --reuse-roles {} (or --reuse-roles all), or restore onto a node without them",
                    names.join(", "),
                    node.fqdn,
                    crate::validate::shell_list(&plan.conflicts)
                );
            }
        }
        new.roles_to_restore = plan.create;
        roles_reused = plan.reuse;
        roles_system = plan.system;
    }

    let plan = Plan {
        source,
        node,
        state,
        new,
        roles_reused,
        roles_system,
    };
    if inv.flag("dry-run") {
        return Ok(Output::Report {
            kind: "restore_plan",
            rows: plan.rows(),
        });
    }
    if interactive {
        print!(
            "{}",
            s.render(&Output::Report {
                kind: "restore_plan",
                rows: plan.rows(),
            })
        );
        s.confirm("Register this restore?")?;
    }
    let (id, job) = s
        .catalog
        .register_restore_definition(&s.audit(), &plan.new)
        .await?;
    let what = if plan.new.target_dbname.is_empty() {
        format!("the whole cluster ({})", plan.source.code)
    } else {
        format!("database \"{}\"", plan.new.target_dbname)
    };
    Ok(Output::Done(vec![format!(
        "Restore definition RestoreDef {id} registered: BckID {bck_id} into {what} on {} as JobID {job}, run by {} {}; show_restores_in_progress and show_restore_catalog follow it.",
        plan.node.fqdn,
        plan.source.backup_server,
        // Says in which zone a time typed without one was read.
        at.as_ref()
            .map_or_else(|| "now".to_string(), |t| format!("at {}", t.describe()))
    )]))
}
