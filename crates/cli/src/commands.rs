//! The shell commands. Each handler reads its arguments through the session (given, prompted
//! or defaulted), calls the catalog, and returns an [`Output`]; rendering happens elsewhere.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use pgbackman_core::cron::CronSchedule;
use pgbackman_core::interval::{parse_hours_interval, parse_minutes_interval};
use pgbackman_core::model::{self, BackupCode, DbSelection, Filter, OutputFormat};
use pgbackman_db::{
    DefinitionUpdate, NewDefinition, NewNode, NodeInfo, NodeUpdate, Rows, Value, node,
};

use pgbackman_core::hostname::HostKind;

use crate::parse::Invocation;
use crate::render::Output;
use crate::session::Session;
use crate::spec::{self, COMMANDS};
use crate::wording;

pub async fn run(s: &mut Session, inv: &Invocation) -> Result<Output> {
    match inv.cmd.name {
        "register_backup_server" => register_backup_server(s, inv).await,
        "update_backup_server" => update_backup_server(s, inv).await,
        "delete_backup_server" => delete_backup_server(s, inv).await,
        "show_backup_servers" => list("backup_servers", s.catalog.show_backup_servers().await),
        "show_backup_server_config" => {
            let srv = s.required(inv, "server", Some(&s.local_server.clone()))?;
            list(
                "backup_server_config",
                s.catalog.show_backup_server_config(&srv).await,
            )
        }
        "update_backup_server_config" => update_config(s, inv, Scope::Server).await,
        "show_backup_server_default_config" => list(
            "backup_server_default_config",
            s.catalog.show_backup_server_default_config().await,
        ),
        "update_backup_server_default_config" => update_config(s, inv, Scope::ServerDefault).await,
        "show_backup_server_stats" => {
            let srv = s.required(inv, "server", Some(&s.local_server.clone()))?;
            report(
                "backup_server_stats",
                s.catalog.backup_server_stats(&srv).await,
            )
        }
        "register_pgsql_node" => register_pgsql_node(s, inv).await,
        "update_pgsql_node" => update_pgsql_node(s, inv).await,
        "delete_pgsql_node" => delete_pgsql_node(s, inv).await,
        "show_pgsql_nodes" => list("pgsql_nodes", s.catalog.show_pgsql_nodes().await),
        "show_pgsql_node_config" => {
            let n = s.required(inv, "node", None)?;
            list(
                "pgsql_node_config",
                s.catalog.show_pgsql_node_config(&n).await,
            )
        }
        "update_pgsql_node_config" => update_config(s, inv, Scope::Node).await,
        "show_pgsql_node_default_config" => list(
            "pgsql_node_default_config",
            s.catalog.show_pgsql_node_default_config().await,
        ),
        "update_pgsql_node_default_config" => update_config(s, inv, Scope::NodeDefault).await,
        "show_pgsql_node_stats" => {
            let n = s.required(inv, "node", None)?;
            report("pgsql_node_stats", s.catalog.pgsql_node_stats(&n).await)
        }
        "register_backup_definition" => register_backup_definition(s, inv).await,
        "update_backup_definition" => update_backup_definition(s, inv).await,
        "delete_backup_definition_id" => delete_backup_definition_id(s, inv).await,
        "delete_backup_definition_dbname" => delete_backup_definition_dbname(s, inv).await,
        "move_backup_definition" => move_backup_definition(s, inv).await,
        "show_backup_definitions" => {
            let srv = filter(s.value(inv, "server", Some("all"))?);
            let node = filter(s.value(inv, "node", Some("all"))?);
            let db = filter(s.value(inv, "dbname", Some("all"))?);
            list(
                "backup_definitions",
                s.catalog.show_backup_definitions(&srv, &node, &db).await,
            )
        }
        "show_databases_without_backup_definitions" => databases_without_definitions(s, inv).await,
        "show_empty_backup_catalogs" => list(
            "empty_backup_catalogs",
            s.catalog.show_empty_backup_catalogs().await,
        ),
        "show_backup_catalog" => show_backup_catalog(s, inv).await,
        "show_retention_plan" => show_retention_plan(s, inv).await,
        "accept_pgsql_node_listing" => {
            let node = s.required(inv, "node", None)?;
            s.confirm(&format!("Accept the next database listing of PgSQL node {node} as it is, even if it lists far fewer databases than before?"))?;
            let id = s
                .catalog
                .accept_pgsql_node_listing(&s.audit(), &node)
                .await?;
            Ok(Output::Done(vec![format!(
                "The next database listing of NodeID {id} is accepted as it is: definitions of databases missing from it are set DELETED at the next maintenance pass."
            )]))
        }
        "show_backup_details" => {
            let id = def_id_arg(&s.required(inv, "bck_id", None)?)
                .map_err(|_| anyhow::anyhow!("BckID must be a number"))?;
            report("backup_details", s.catalog.show_backup_details(id).await)
        }
        "run_backup_definition_now" => {
            let id = def_id_arg(&s.required(inv, "def_id", None)?)?;
            let job = s.catalog.run_backup_definition_now(&s.audit(), id).await?;
            crate::agent_seen::after_job(s, job).await;
            Ok(Output::Done(vec![format!(
                "Backup of DefID {id} queued as JobID {job}; show_jobs_queue follows it."
            )]))
        }
        "register_snapshot_definition" => register_snapshot_definition(s, inv).await,
        "show_snapshot_definitions" => {
            let srv = filter(s.value(inv, "server", Some("all"))?);
            let node = filter(s.value(inv, "node", Some("all"))?);
            let db = filter(s.value(inv, "dbname", Some("all"))?);
            list(
                "snapshot_definitions",
                s.catalog.show_snapshot_definitions(&srv, &node, &db).await,
            )
        }
        "show_snapshots_in_progress" => list(
            "snapshots_in_progress",
            s.catalog.show_snapshots_in_progress().await,
        ),
        "show_jobs_queue" => {
            let srv = filter(s.value(inv, "server", Some("all"))?);
            list(
                "jobs_queue",
                s.catalog.show_jobs_queue(&srv, inv.flag("all")).await,
            )
        }
        "cancel_job" => {
            let id: i64 = s
                .required(inv, "job_id", None)?
                .trim()
                .parse()
                .context("JobID must be a number")?;
            s.confirm(&format!("Cancel JobID {id}?"))?;
            let state = s.catalog.cancel_job(&s.audit(), id).await?;
            Ok(Output::Done(vec![match state.as_str() {
                "CANCELLED" => format!("JobID {id} cancelled before it started."),
                _ => format!(
                    "JobID {id} is being cancelled; its agent stops it and records it as CANCELLED."
                ),
            }]))
        }
        "verify_backup" | "run_restore_drill" | "update_drill_schedule" | "show_verifications" => {
            crate::commands_verify::run(s, inv).await
        }
        "show_alerts" => crate::commands_alerts::show_alerts(s, inv).await,
        "retry_alerts" => crate::commands_alerts::retry_alerts(s, inv).await,
        "show_reconciliation" => crate::commands_reconcile::show_reconciliation(s, inv).await,
        "show_pgbackman_config" => show_pgbackman_config(s).await,
        "show_pgbackman_status" => crate::monitor::show_pgbackman_status(s, inv).await,
        "show_pgbackman_stats" => report("pgbackman_stats", s.catalog.pgbackman_stats().await),
        "show_audit_log" => {
            let n = s
                .value(inv, "limit", Some("50"))?
                .unwrap_or_else(|| "50".into());
            let n: i64 = n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("limit \"{n}\" is not a positive number"))?;
            list("audit_log", s.catalog.show_audit_log(n).await)
        }
        "show_history" => Ok(Output::Text(
            s.history
                .iter()
                .enumerate()
                .map(|(i, l)| format!("{:>4}  {l}\n", i + 1))
                .collect(),
        )),
        n if crate::commands_restore::handles(n) => crate::commands_restore::run(s, inv).await,
        n if crate::commands_wal::handles(n) => crate::commands_wal::run(s, inv).await,
        n if crate::commands_pitr::handles(n) => crate::commands_pitr::run(s, inv).await,
        n if crate::commands_repository::handles(n) => {
            crate::commands_repository::run(s, inv).await
        }
        n if crate::commands_encryption::handles(n) => {
            crate::commands_encryption::run(s, inv).await
        }
        "set" => set(s, inv),
        "help" => help(inv),
        // clear and quit are handled by the shell loop; in -C they do nothing.
        _ => Ok(Output::Nothing),
    }
}

pub(crate) fn list(kind: &'static str, r: Result<Rows, pgbackman_db::DbError>) -> Result<Output> {
    Ok(Output::List { kind, rows: r? })
}

fn report(kind: &'static str, r: Result<Rows, pgbackman_db::DbError>) -> Result<Output> {
    Ok(Output::Report { kind, rows: r? })
}

/// "all", "*" or empty → None (no filter); else the comma list.
pub(crate) fn filter(v: Option<String>) -> Option<Vec<String>> {
    match model::parse_filter(v.as_deref().unwrap_or("")) {
        Filter::All => None,
        Filter::Any(v) => Some(v),
    }
}

pub(crate) fn help(inv: &Invocation) -> Result<Output> {
    if let Some(name) = inv.given("command") {
        if let Some(t) = crate::shortcuts::topic(name) {
            return Ok(Output::Text(t));
        }
        let Some(c) = spec::find(name) else {
            let s = spec::suggestions(name);
            bail!(
                "no command \"{name}\"{}",
                if s.is_empty() {
                    String::new()
                } else {
                    format!("; did you mean {}?", s.join(", "))
                }
            );
        };
        return Ok(Output::Text(c.help()));
    }
    let mut out = String::from("Commands (help <command> for arguments and examples):\n");
    let mut group = "";
    for c in COMMANDS {
        if c.group != group {
            group = c.group;
            out.push_str(&format!("\n{group}:\n"));
        }
        let about = c
            .about
            .split(". ")
            .next()
            .unwrap_or(c.about)
            .trim_end_matches('.');
        out.push_str(&format!("  {:<44} {about}\n", c.name));
    }
    out.push_str("\nIn the shell, a command given without arguments asks for each one, with the default in brackets.\n\
                  Tab completes commands and the argument at the cursor; Ctrl-C abandons a command; Ctrl-D or quit leaves.\n\
                  help shortcuts lists the shortcuts (\\h, \\s, \\q, EOF); help support says what to include in a problem report.\n");
    Ok(Output::Text(out))
}

fn set(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let v = s.required(inv, "setting", None)?;
    // `set name=value` or `set name value` (psql's \pset style); never asked for separately.
    let (k, val) = v
        .split_once('=')
        .unwrap_or((v.as_str(), inv.given("value").unwrap_or("")));
    match k.trim() {
        "output_format" => {
            let f: OutputFormat = if val.trim().is_empty() {
                OutputFormat::Table
            } else {
                val.trim().parse()?
            };
            s.format = f;
            Ok(Output::Done(vec![format!("output_format = {f}")]))
        }
        "timezone" => {
            let z = crate::zone::parse_zone(val)?;
            crate::zone::set_display(z);
            Ok(Output::Done(vec![format!(
                "timezone = {z}: times are shown in it, and times typed without a zone are read in it"
            )]))
        }
        "expanded" => {
            let e: crate::fit::Expanded = val.parse().map_err(anyhow::Error::msg)?;
            s.expanded = e;
            Ok(Output::Done(vec![format!("expanded = {e}")]))
        }
        other => bail!(
            "unknown shell parameter \"{other}\"; the parameters are output_format=table|csv|json, expanded=on|off|auto and timezone=<IANA name>|local"
        ),
    }
}

/// The value of `parameter` in a Parameter/Value listing.
fn default_of(rows: Rows, parameter: &str) -> String {
    (0..rows.len())
        .find(|&i| matches!(rows.get(i, "Parameter"), Some(Value::Text(p)) if p == parameter))
        .and_then(|i| match rows.get(i, "Value") {
            Some(Value::Text(v)) => Some(v.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

// ---- backup servers ---------------------------------------------------------------------------

async fn register_backup_server(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let host = s.required(inv, "hostname", None)?;
    // The real default, from the catalog, only when it will be shown.
    let default_domain = if inv.bare && s.interactive() {
        default_of(
            s.catalog.show_backup_server_default_config().await?,
            "domain",
        )
    } else {
        String::new()
    };
    crate::validate::host(HostKind::ServerHost, host.trim())?;
    // An explicit "" is "no domain"; only a missing domain takes the default.
    let asked = s.value(inv, "domain", Some(&default_domain))?;
    let domain = crate::validate::domain_arg(inv.given("domain"), asked)?;
    let remarks = s.value(inv, "remarks", Some(""))?;
    if inv.bare {
        s.confirm("Register this backup server?")?;
    }
    let (id, fqdn) = s
        .catalog
        .register_backup_server(
            &s.audit(),
            host.trim(),
            domain.as_deref().map(str::trim),
            inv.given("status"),
            remarks.as_deref(),
        )
        .await?;
    Ok(Output::Done(vec![format!(
        "Backup server {fqdn} registered with SrvID {id}."
    )]))
}

async fn update_backup_server(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let srv = s.required(inv, "server", None)?;
    let remarks = s.value(inv, "remarks", Some("keep current"))?;
    if inv.bare {
        s.confirm(&format!("Update backup server {srv}?"))?;
    }
    let id = s
        .catalog
        .update_backup_server(&s.audit(), &srv, inv.given("status"), remarks.as_deref())
        .await?;
    Ok(Output::Done(vec![format!(
        "Backup server with SrvID {id} updated."
    )]))
}

async fn delete_backup_server(s: &mut Session, inv: &Invocation) -> Result<Output> {
    // No default: deleting "this host" by pressing Enter was a PgBackMan trap.
    let srv = s.required(inv, "server", None)?;
    let id = s.catalog.server_id(&srv).await?;
    s.confirm(&format!(
        "Are you sure you want to delete backup server {srv} (SrvID {id})?"
    ))?;
    s.catalog.delete_backup_server(&s.audit(), &srv).await?;
    Ok(Output::Done(vec![format!(
        "Backup server {srv} (SrvID {id}) deleted."
    )]))
}

#[derive(Clone, Copy)]
enum Scope {
    Server,
    ServerDefault,
    Node,
    NodeDefault,
}

/// `parameter=value` pairs; in the interactive shell without pairs, asks for every parameter
/// with its current value as default and applies the changed ones.
async fn update_config(s: &mut Session, inv: &Invocation, scope: Scope) -> Result<Output> {
    let object = match scope {
        Scope::Server => Some(s.required(inv, "server", Some(&s.local_server.clone()))?),
        Scope::Node => Some(s.required(inv, "node", None)?),
        _ => None,
    };
    let mut pairs = Vec::new();
    for p in inv.rest() {
        let Some((k, v)) = p.split_once('=') else {
            bail!("\"{p}\" is not parameter=value\nUsage: {}", inv.cmd.usage());
        };
        pairs.push((k.trim().to_string(), v.to_string()));
    }
    for (k, v) in &pairs {
        crate::validate::config_pair(k, v)?;
    }
    if pairs.is_empty() {
        if !s.interactive() {
            bail!("no parameter=value given\nUsage: {}", inv.cmd.usage());
        }
        let current = match (scope, &object) {
            (Scope::Server, Some(o)) => s.catalog.show_backup_server_config(o).await?,
            (Scope::Node, Some(o)) => s.catalog.show_pgsql_node_config(o).await?,
            (Scope::ServerDefault, _) => s.catalog.show_backup_server_default_config().await?,
            _ => s.catalog.show_pgsql_node_default_config().await?,
        };
        for i in 0..current.len() {
            let (Some(Value::Text(k)), Some(Value::Text(v))) =
                (current.get(i, "Parameter"), current.get(i, "Value"))
            else {
                continue;
            };
            let (k, v) = (k.clone(), v.clone());
            let answer = s.ask(&k, Some(&v))?;
            if !answer.is_empty() && answer != v {
                crate::validate::config_pair(&k, &answer)?;
                pairs.push((k, answer));
            }
        }
        if pairs.is_empty() {
            return Ok(Output::Text("Nothing changed.".into()));
        }
        s.confirm(&format!("Apply {} change(s)?", pairs.len()))?;
    }
    let audit = s.audit();
    let what = match scope {
        Scope::Server => {
            let id = s
                .catalog
                .update_backup_server_config(&audit, object.as_deref().unwrap_or(""), &pairs)
                .await?;
            format!("Configuration of SrvID {id} updated")
        }
        Scope::Node => {
            let id = s
                .catalog
                .update_pgsql_node_config(&audit, object.as_deref().unwrap_or(""), &pairs)
                .await?;
            format!("Configuration of NodeID {id} updated")
        }
        Scope::ServerDefault => {
            s.catalog
                .update_backup_server_default_config(&audit, &pairs)
                .await?;
            "Default backup server configuration updated".to_string()
        }
        Scope::NodeDefault => {
            s.catalog
                .update_pgsql_node_default_config(&audit, &pairs)
                .await?;
            "Default PgSQL node configuration updated".to_string()
        }
    };
    let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    Ok(Output::Done(vec![format!("{what}: {}.", names.join(", "))]))
}

// ---- PgSQL nodes ------------------------------------------------------------------------------

fn port_arg(v: Option<String>) -> Result<Option<i32>> {
    v.map(|p| {
        model::parse_port(p.trim())
            .map(i32::from)
            .map_err(anyhow::Error::from)
    })
    .transpose()
}

async fn register_pgsql_node(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let host = s.required(inv, "hostname", None)?;
    // The real default, from the catalog, only when it will be shown.
    let default_domain = if inv.bare && s.interactive() {
        default_of(s.catalog.show_pgsql_node_default_config().await?, "domain")
    } else {
        String::new()
    };
    crate::validate::host(HostKind::NodeHost, host.trim())?;
    let asked = s.value(inv, "domain", Some(&default_domain))?;
    let domain = crate::validate::domain_arg(inv.given("domain"), asked)?;
    let port = port_arg(s.value(inv, "pgport", Some("5432"))?)?;
    let admin_user = s.value(inv, "admin_user", Some("postgres"))?;
    let status = s.value(inv, "status", Some("STOPPED"))?;
    let remarks = s.value(inv, "remarks", Some(""))?;
    if inv.bare {
        s.confirm("Register this PgSQL node?")?;
    }
    let n = NewNode {
        hostname: host.trim().to_string(),
        domain: domain.map(|d| d.trim().to_string()),
        port,
        admin_user,
        admin_dbname: inv.given("admin-dbname").map(str::to_string),
        sslmode: inv.given("sslmode").map(str::to_string),
        status,
        remarks,
    };
    let (id, fqdn) = s.catalog.register_pgsql_node(&s.audit(), &n).await?;
    Ok(Output::Done(vec![format!(
        "PgSQL node {fqdn} registered with NodeID {id}."
    )]))
}

async fn update_pgsql_node(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let node = s.required(inv, "node", None)?;
    let cur = if inv.bare {
        Some(s.catalog.node(&node).await?)
    } else {
        None
    };
    let port = port_arg(s.value(
        inv,
        "pgport",
        cur.as_ref().map(|c| c.port.to_string()).as_deref(),
    )?)?;
    let admin_user = s.value(
        inv,
        "admin_user",
        cur.as_ref().map(|c| c.admin_user.as_str()),
    )?;
    let status = s.value(inv, "status", cur.as_ref().map(|c| c.status.as_str()))?;
    let remarks = s.value(inv, "remarks", Some("keep current"))?;
    if inv.bare {
        s.confirm(&format!("Update PgSQL node {node}?"))?;
    }
    let u = NodeUpdate {
        port,
        admin_user,
        admin_dbname: inv.given("admin-dbname").map(str::to_string),
        sslmode: inv.given("sslmode").map(str::to_string),
        status,
        remarks,
    };
    let id = s.catalog.update_pgsql_node(&s.audit(), &node, &u).await?;
    Ok(Output::Done(vec![format!(
        "PgSQL node with NodeID {id} updated."
    )]))
}

async fn delete_pgsql_node(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let node = s.required(inv, "node", None)?;
    let info = s.catalog.node(&node).await?;
    s.confirm(&format!(
        "Are you sure you want to delete PgSQL node {} (NodeID {})?",
        info.fqdn, info.node_id
    ))?;
    s.catalog.delete_pgsql_node(&s.audit(), &node).await?;
    Ok(Output::Done(vec![format!(
        "PgSQL node {} (NodeID {}) deleted.",
        info.fqdn, info.node_id
    )]))
}

/// Connects to a node and lists its databases; the error names the node and says what to check.
async fn node_databases(s: &Session, n: &NodeInfo) -> Result<Vec<String>> {
    Ok(node_facts(s, n).await?.databases)
}

/// Within the `[nodes]` deadlines of the config file: a node that does not answer costs a
/// bounded wait and an error naming it and the setting.
async fn node_facts(s: &Session, n: &NodeInfo) -> Result<node::NodeFacts> {
    let mut cfg =
        pgbackman_config::node_config(&n.fqdn, n.port, &n.admin_user, &n.admin_dbname, &n.sslmode)
            .with_context(|| format!("PgSQL node {} (NodeID {})", n.fqdn, n.node_id))?;
    s.config.node_timeouts()?.apply(&mut cfg);
    let facts = node::node_facts(cfg, &format!("{}:{} (NodeID {})", n.fqdn, n.port, n.node_id))
        .await
        .map_err(|e| match e.to_string().contains("\nHINT: ") {
            true => anyhow::anyhow!("{e}"), // already says what to do (e.g. about TLS)
            false => anyhow::anyhow!("{e}\nHINT: check that the node is up, that pg_hba.conf admits {} from this host, and that a pgpass entry exists if it needs a password", n.admin_user),
        })?;
    Ok(facts)
}

async fn databases_without_definitions(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let f = filter(s.value(inv, "node", Some("all"))?);
    let running_only = f.is_none();
    let nodes = s.catalog.nodes(&f, running_only).await?;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for n in &nodes {
        match node_databases(s, n).await {
            Ok(dbs) => {
                let with: BTreeSet<String> = s
                    .catalog
                    .dbnames_with_definitions(n.node_id)
                    .await?
                    .into_iter()
                    .collect();
                for db in dbs
                    .into_iter()
                    .filter(|d| !model::is_system_database(d) && !with.contains(d))
                {
                    rows.push(vec![
                        Value::Int(n.node_id),
                        Value::Text(n.fqdn.clone()),
                        Value::Text(db),
                    ]);
                }
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let out = Output::List {
        kind: "databases_without_backup_definitions",
        rows: Rows {
            columns: vec!["NodeID".into(), "PgSQL node".into(), "DBname".into()],
            rows,
        },
    };
    if failures.is_empty() {
        Ok(out)
    } else {
        // Tell the truth: the list is incomplete. Print what we have, then fail.
        print!("{}", s.render(&out));
        bail!(
            "{} could not be checked:\n{}",
            pgbackman_core::text::plural(failures.len(), "node", "nodes"),
            failures.join("\n")
        )
    }
}

// ---- backup definitions -----------------------------------------------------------------------

pub(crate) fn validate_schedule(fields: [&str; 5]) -> Result<CronSchedule> {
    CronSchedule::parse_fields(fields[0], fields[1], fields[2], fields[3], fields[4]).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nHINT: valid schedules look like \"30 2 * * *\" ({}), \"0 */6 * * *\" ({}), \"15 1 * * mon-fri\" ({})",
            describe("30 2 * * *"),
            describe("0 */6 * * *"),
            describe("15 1 * * mon-fri")
        )
    })
}

fn describe(line: &str) -> String {
    CronSchedule::parse_line(line)
        .map(|c| wording::sentence_part(&c.describe()))
        .unwrap_or_default()
}

/// What both register_backup_definition and register_snapshot_definition start with.
struct Target {
    server: String,
    node: NodeInfo,
    cfg: std::collections::BTreeMap<String, String>,
    code: BackupCode,
}

/// Server, node (and its configuration) and backup code, asked or given. The code decides
/// whether a database is needed, so in prompts it is asked before the database.
async fn target(s: &mut Session, inv: &Invocation) -> Result<Target> {
    let server = s.required(inv, "server", Some(&s.local_server.clone()))?;
    let node_ref = s.required(inv, "node", None)?;
    let node = s.catalog.node(&node_ref).await?;
    let cfg = s.catalog.node_config(node.node_id).await?;
    s.catalog.server_id(&server).await?;
    let code_default = cfg.get("backup_code").cloned().unwrap_or_default();
    let code: BackupCode = if inv.bare && s.interactive() {
        s.value(inv, "code", Some(&code_default))?
            .unwrap_or(code_default)
            .parse()?
    } else {
        inv.given("code")
            .filter(|c| !c.trim().is_empty())
            .unwrap_or(&code_default)
            .parse()?
    };
    Ok(Target {
        server,
        node,
        cfg,
        code,
    })
}

async fn register_backup_definition(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let Target {
        server,
        node,
        cfg,
        code,
    } = target(s, inv).await?;
    let get = |k: &str| cfg.get(k).cloned().unwrap_or_default();
    let dbnames: Vec<String> = if code.is_cluster_wide() {
        vec![String::new()]
    } else {
        let sel: DbSelection = s.required(inv, "dbname", None)?.parse()?;
        let exceptions =
            model::parse_exceptions(&s.value(inv, "exceptions", Some(""))?.unwrap_or_default());
        let on_node = node_databases(s, &node).await?;
        let with = s.catalog.dbnames_with_definitions(node.node_id).await?;
        model::resolve_selection(&sel, &on_node, &with, &exceptions)
            .map_err(|e| wording::on_node_error(&e, &node.fqdn))?
    };
    if dbnames.is_empty() {
        return Ok(Output::Text(
            "No database matched: nothing registered.".into(),
        ));
    }
    let min_range = parse_minutes_interval(&get("backup_minutes_interval"))?;
    let hour_range = parse_hours_interval(&get("backup_hours_interval"))?;
    let minutes = s.value(inv, "minutes", Some(&format!("random in {min_range}")))?;
    let hours = s.value(inv, "hours", Some(&format!("random in {hour_range}")))?;
    let day_month = s
        .value(inv, "day_month", Some(&get("backup_day_month_cron")))?
        .unwrap_or(get("backup_day_month_cron"));
    let month = s
        .value(inv, "month", Some(&get("backup_month_cron")))?
        .unwrap_or(get("backup_month_cron"));
    let weekday = s
        .value(inv, "weekday", Some(&get("backup_weekday_cron")))?
        .unwrap_or(get("backup_weekday_cron"));
    let encryption = s.value(inv, "encryption", Some(&get("encryption")))?;
    let retention = s.value(inv, "retention_period", Some(&get("retention_period")))?;
    let redundancy = s
        .value(
            inv,
            "retention_redundancy",
            Some(&get("retention_redundancy")),
        )?
        .map(|r| model::parse_redundancy(r.trim()))
        .transpose()?;
    let extra = s.value(inv, "extra", Some(&get("extra_backup_parameters")))?;
    let job_status = s.value(inv, "job_status", Some(&get("backup_job_status")))?;
    let remarks = s.value(inv, "remarks", Some(""))?;
    let encryption = encryption
        .map(|e| crate::validate::encryption(&e))
        .transpose()?;
    let (encryption, encryption_key) = match encryption {
        None => (None, None),
        Some(crate::validate::Encryption::Plain) => (Some(false), None),
        Some(crate::validate::Encryption::ServerKey) => (Some(true), None),
        Some(crate::validate::Encryption::Key(k)) => (Some(true), Some(k)),
    };
    if let Some(x) = &extra {
        model::check_extra_dump_parameters(x)?;
    }

    let options = definition_options(inv)?;
    check_client_major(s, &node, options.client_major).await?;
    // Each definition gets its own random minute/hour when none was given: spreads the load.
    let mut defs = Vec::new();
    for db in &dbnames {
        let m = minutes
            .clone()
            .unwrap_or_else(|| format!("{:02}", min_range.pick(rand::random::<u32>())));
        let h = hours
            .clone()
            .unwrap_or_else(|| format!("{:02}", hour_range.pick(rand::random::<u32>())));
        validate_schedule([&m, &h, &day_month, &month, &weekday])?;
        defs.push(NewDefinition {
            server: server.clone(),
            node: node.node_id.to_string(),
            dbname: db.clone(),
            minutes: Some(m),
            hours: Some(h),
            day_month: Some(day_month.clone()),
            month: Some(month.clone()),
            weekday: Some(weekday.clone()),
            code: Some(code.to_string()),
            encryption,
            encryption_key: encryption_key.clone(),
            retention_period: retention.clone(),
            retention_redundancy: redundancy,
            extra_parameters: extra.clone(),
            job_status: job_status.clone(),
            remarks: remarks.clone(),
            options: options.clone(),
        });
    }
    if inv.bare {
        s.confirm(&format!(
            "Register {} on {}?",
            pgbackman_core::text::plural(defs.len(), "backup definition", "backup definitions"),
            node.fqdn
        ))?;
    }
    let done = s
        .catalog
        .register_backup_definitions(&s.audit(), &defs)
        .await?;
    crate::agent_seen::after_server(s, &server).await;
    let zone = crate::agent_seen::zone_note(s, &server).await;
    Ok(Output::Done(
        done.iter()
            .map(|d| {
                let line = wording::schedule_text(&d.schedule.join(" "));
                let name = if d.dbname.is_empty() {
                    format!("{} (whole cluster)", d.code)
                } else {
                    d.dbname.clone()
                };
                format!(
                    "Backup definition DefID {} for dbname [{name}] registered: {line} ({}{zone}).",
                    d.def_id,
                    describe(&line).trim_end_matches('.')
                )
            })
            .collect(),
    ))
}

/// The --format/--jobs/... options of register/update_backup_definition.
fn definition_options(inv: &Invocation) -> Result<pgbackman_db::DefinitionOptions> {
    let int = |name: &str| -> Result<Option<i32>> {
        inv.given(name)
            .map(|v| {
                v.trim()
                    .parse::<i32>()
                    .with_context(|| format!("--{name} \"{v}\" is not a number"))
            })
            .transpose()
    };
    let o = pgbackman_db::DefinitionOptions {
        format: inv.given("format").map(str::to_string),
        jobs: int("jobs")?,
        compression_level: int("compression-level")?,
        max_runtime: inv.given("max-runtime").map(str::to_string),
        lock_wait_timeout: inv.given("lock-wait-timeout").map(str::to_string),
        client_major: crate::validate::client_major(inv.given("client-major"))?,
        checkpoint: inv.given("checkpoint").map(str::to_string),
        max_rate: inv.given("max-rate").map(str::to_string),
        wal_wait: inv.given("wal-wait").map(str::to_string),
    };
    if o.jobs.is_some_and(|j| j > 1)
        && o.format
            .as_deref()
            .is_some_and(|f| !f.eq_ignore_ascii_case("directory"))
    {
        bail!(
            "--jobs needs --format directory: pg_dump runs parallel jobs only in directory format"
        );
    }
    Ok(o)
}

/// Refuses a `--client-major` older than the node's major (asks the node for its version).
async fn check_client_major(s: &Session, node: &NodeInfo, major: Option<i32>) -> Result<()> {
    let Some(m) = major.filter(|m| *m > 0) else {
        return Ok(());
    };
    let facts = node_facts(s, node).await?;
    crate::validate::client_major_for_node(
        m,
        &node.fqdn,
        &facts.server_version,
        facts.server_version_num,
    )
}

/// The node a definition backs up.
async fn definition_node(s: &mut Session, def_id: i64) -> Result<NodeInfo> {
    let rows = s
        .catalog
        .show_backup_definitions(&None, &None, &None)
        .await?;
    let node_id = (0..rows.len())
        .find(|&i| rows.get(i, "DefID") == Some(&Value::Int(def_id)))
        .and_then(|i| match rows.get(i, "NodeID") {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        })
        .with_context(|| format!("backup definition DefID {def_id} does not exist\nHINT: show_backup_definitions lists the definitions"))?;
    Ok(s.catalog.node(&node_id.to_string()).await?)
}

fn def_id_arg(v: &str) -> Result<i64> {
    v.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| {
            format!(
                "DefID {} is not a number from 1 to {}\nHINT: show_backup_definitions lists the DefIDs",
                pgbackman_core::text::quote(v),
                i64::MAX
            )
        })
}

async fn update_backup_definition(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let def_id = def_id_arg(&s.required(inv, "def_id", None)?)?;
    let cur = s
        .catalog
        .definition_schedule(def_id)
        .await?
        .with_context(|| format!("backup definition DefID {def_id} does not exist\nHINT: show_backup_definitions lists the definitions"))?;
    let text = |c: &str| match cur.get(0, c) {
        Some(Value::Text(t)) => t.clone(),
        Some(Value::Int(n)) => n.to_string(),
        _ => String::new(),
    };
    let minutes = s.value(inv, "minutes", Some(&text("minutes_cron")))?;
    let hours = s.value(inv, "hours", Some(&text("hours_cron")))?;
    let day_month = s.value(inv, "day_month", Some(&text("day_month_cron")))?;
    let month = s.value(inv, "month", Some(&text("month_cron")))?;
    let weekday = s.value(inv, "weekday", Some(&text("weekday_cron")))?;
    let retention = s.value(inv, "retention_period", Some(&text("retention_period")))?;
    let redundancy = s
        .value(
            inv,
            "retention_redundancy",
            Some(&text("retention_redundancy")),
        )?
        .map(|r| model::parse_redundancy(r.trim()))
        .transpose()?;
    let extra = s.value(inv, "extra", Some(&text("extra_backup_parameters")))?;
    let job_status = s.value(inv, "job_status", Some(&text("job_status")))?;
    let remarks = s.value(inv, "remarks", Some(&text("remarks")))?;
    if let Some(x) = &extra {
        model::check_extra_dump_parameters(x)?;
    }
    // Validate the schedule as it will be after the update.
    let pick = |v: &Option<String>, c: &str| v.clone().unwrap_or_else(|| text(c));
    let sched = [
        pick(&minutes, "minutes_cron"),
        pick(&hours, "hours_cron"),
        pick(&day_month, "day_month_cron"),
        pick(&month, "month_cron"),
        pick(&weekday, "weekday_cron"),
    ];
    validate_schedule([&sched[0], &sched[1], &sched[2], &sched[3], &sched[4]])?;
    let options = definition_options(inv)?;
    if options.client_major.is_some_and(|m| m > 0) {
        let node = definition_node(s, def_id).await?;
        check_client_major(s, &node, options.client_major).await?;
    }
    if inv.bare {
        s.confirm(&format!("Update backup definition DefID {def_id}?"))?;
    }
    let u = DefinitionUpdate {
        def_id,
        minutes,
        hours,
        day_month,
        month,
        weekday,
        retention_period: retention,
        retention_redundancy: redundancy,
        extra_parameters: extra,
        job_status,
        remarks,
        options,
    };
    s.catalog.update_backup_definition(&s.audit(), &u).await?;
    Ok(Output::Done(vec![format!(
        "Backup definition DefID {def_id} updated: {} ({}).",
        wording::schedule_text(&sched.join(" ")),
        describe(&sched.join(" "))
    )]))
}

fn force_arg(s: &mut Session, inv: &Invocation) -> Result<bool> {
    match inv.given("force") {
        Some("force-deletion") => Ok(true),
        Some("") => Ok(false),
        Some(other) => bail!(
            "the last argument must be force-deletion, not \"{other}\"\nUsage: {}",
            inv.cmd.usage()
        ),
        None if inv.bare && s.interactive() => loop {
            match s
                .ask("Force deletion of its backups too (yes/no)", Some("no"))?
                .to_ascii_lowercase()
                .as_str()
            {
                "yes" | "y" => return Ok(true),
                "no" | "n" | "" => return Ok(false),
                _ => println!("Please answer yes or no."),
            }
        },
        None => Ok(false),
    }
}

async fn delete_backup_definition_id(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let def_id = def_id_arg(&s.required(inv, "def_id", None)?)?;
    let force = force_arg(s, inv)?;
    s.confirm(&format!(
        "Are you sure you want to delete backup definition DefID {def_id}{}?",
        if force { " and all its backups" } else { "" }
    ))?;
    let removed = s
        .catalog
        .delete_backup_definition_id(&s.audit(), def_id, force)
        .await?;
    let tail = if force {
        format!(" with force: {removed} backup(s) queued for deletion")
    } else {
        String::new()
    };
    Ok(Output::Done(vec![format!(
        "Backup definition DefID {def_id} deleted{tail}."
    )]))
}

async fn delete_backup_definition_dbname(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let node = s.required(inv, "node", None)?;
    let db = s.required(inv, "dbname", None)?;
    let force = force_arg(s, inv)?;
    s.confirm(&format!(
        "Are you sure you want to delete every definition of database {db} on {node}{}?",
        if force { " and their backups" } else { "" }
    ))?;
    let n = s
        .catalog
        .delete_backup_definition_dbname(&s.audit(), &node, &db, force)
        .await?;
    Ok(Output::Done(vec![format!(
        "{} of dbname [{db}] on {node} deleted{}.",
        pgbackman_core::text::plural(n, "backup definition", "backup definitions"),
        if force { " with force" } else { "" }
    )]))
}

async fn move_backup_definition(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let from = s.required(inv, "from", Some(&s.local_server.clone()))?;
    let to = s.required(inv, "to", None)?;
    let node = filter(s.value(inv, "node", Some("all"))?);
    let db = filter(s.value(inv, "dbname", Some("all"))?);
    let ids = filter(s.value(inv, "def_id", Some("all"))?)
        .map(|v| v.iter().map(|i| def_id_arg(i)).collect::<Result<Vec<_>>>())
        .transpose()?;
    s.confirm(&format!(
        "Move the matching backup definitions from {from} to {to}?"
    ))?;
    let n = s
        .catalog
        .move_backup_definition(&s.audit(), &from, &to, &node, &db, &ids)
        .await?;
    if n == 0 {
        bail!(
            "no backup definition of {from} matched; nothing was moved\nHINT: show_backup_definitions {from} lists them"
        );
    }
    Ok(Output::Done(vec![format!(
        "{} moved from {from} to {to}; existing backups stay on {from}.",
        pgbackman_core::text::plural(n, "backup definition", "backup definitions")
    )]))
}

pub(crate) fn time_arg(
    name: &str,
    v: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let zone = crate::zone::display();
    if let Some(t) = crate::zone::parse_typed(v, zone, true)? {
        return Ok(Some(t.at));
    }
    bail!(
        "--{name} \"{v}\" is not a date: use YYYY-MM-DD or YYYY-MM-DD HH:MM (read in {zone}), or a time with its zone such as 2026-11-21T08:00:00Z"
    )
}

/// Refuses filter values that can never match, instead of silently listing nothing.
fn check_values(what: &str, v: &Option<Vec<String>>, valid: &[&str]) -> Result<()> {
    for x in v.iter().flatten() {
        if !valid.contains(&x.as_str()) {
            bail!(
                "{what} \"{x}\" is not valid: use {}, or all",
                valid.join(", ")
            );
        }
    }
    Ok(())
}

async fn show_backup_catalog(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let upper = |v: Option<Vec<String>>| {
        v.map(|v| {
            v.into_iter()
                .map(|x| x.to_ascii_uppercase())
                .collect::<Vec<_>>()
        })
    };
    let f = pgbackman_db::CatalogFilter {
        server: filter(s.value(inv, "server", Some("all"))?),
        node: filter(s.value(inv, "node", Some("all"))?),
        dbname: filter(s.value(inv, "dbname", Some("all"))?),
        def_ids: filter(s.value(inv, "def_id", Some("all"))?)
            .map(|v| v.iter().map(|i| def_id_arg(i)).collect::<Result<Vec<_>>>())
            .transpose()?,
        status: upper(filter(s.value(inv, "status", Some("all"))?)),
        code: upper(filter(inv.given("code").map(str::to_string))),
        from: time_arg("from", inv.given("from"))?,
        to: time_arg("to", inv.given("to"))?,
        encrypted_with: inv.given("encrypted-with").map(str::to_string),
        limit: match inv.given("limit") {
            Some(l) => l
                .trim()
                .parse()
                .ok()
                .filter(|n: &i64| *n > 0)
                .with_context(|| format!("--limit \"{l}\" is not a positive number"))?,
            None => 1000,
        },
    };
    check_values("status", &f.status, &["SUCCEEDED", "ERROR", "CANCELLED"])?;
    check_values(
        "backup code",
        &f.code,
        &["FULL", "SCHEMA", "DATA", "CLUSTER", "GLOBALS"],
    )?;
    // One row more than the limit tells whether the listing was cut.
    let limit = f.limit;
    let f = pgbackman_db::CatalogFilter {
        limit: limit.saturating_add(1),
        ..f
    };
    let mut rows = s.catalog.show_backup_catalog(&f).await?;
    if rows.rows.len() as i64 > limit {
        rows.rows.truncate(limit as usize);
        // On stderr: CSV and JSON on stdout stay whole.
        eprintln!(
            "[NOTE] Only the newest {limit} matching backups are shown; more match.\nHINT: --limit {} shows more, or narrow the listing with the filters (DBname, DefID, status, --code, --from, --to)",
            limit.saturating_mul(10)
        );
    }
    Ok(Output::List {
        kind: "backup_catalog",
        rows,
    })
}

/// An AT time: None for now; a time without a zone is read in the display zone, and the
/// returned [`crate::zone::Typed`] says so for the confirmation.
pub(crate) fn at_time_arg(v: Option<&str>) -> Result<Option<crate::zone::Typed>> {
    let Some(v) = v
        .map(str::trim)
        .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("now"))
    else {
        return Ok(None);
    };
    let zone = crate::zone::display();
    if let Some(t) = crate::zone::parse_typed(v, zone, false)? {
        return Ok(Some(t));
    }
    bail!(
        "AT time \"{v}\" is not a time: use now, YYYY-MM-DD HH:MM (read in {zone}), YYYY-MM-DD HH:MM followed by a zone (Europe/Oslo, UTC, +02:00), or RFC 3339"
    )
}

async fn register_snapshot_definition(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let Target {
        server,
        node,
        cfg,
        code,
    } = target(s, inv).await?;
    let get = |k: &str| cfg.get(k).cloned().unwrap_or_default();
    let facts = node_facts(s, &node).await?;
    let dbnames = if code.is_cluster_wide() {
        vec![String::new()]
    } else {
        let sel: DbSelection = s.required(inv, "dbname", None)?.parse()?;
        if matches!(sel, DbSelection::WithoutDefinitions) {
            bail!(
                "#databases_without_backup_definitions# is for backup definitions; snapshots take names or #all_databases#"
            );
        }
        let exceptions =
            model::parse_exceptions(&s.value(inv, "exceptions", Some(""))?.unwrap_or_default());
        model::resolve_selection(&sel, &facts.databases, &[], &exceptions)
            .map_err(|e| wording::on_node_error(&e, &node.fqdn))?
    };
    let at = at_time_arg(s.value(inv, "at_time", Some("now"))?.as_deref())?;
    let retention = s.value(inv, "retention_period", Some(&get("retention_period")))?;
    let extra = s.value(inv, "extra", Some(&get("extra_backup_parameters")))?;
    if let Some(x) = &extra {
        model::check_extra_dump_parameters(x)?;
    }
    // One tag for the whole command, so the snapshots of #all_databases# can be found together.
    let tag = s
        .value(inv, "tag", Some("random"))?
        .or_else(|| Some(format!("{:09X}", rand::random::<u64>() & 0xF_FFFF_FFFF)));
    let release = s
        .value(inv, "release", Some("the node's own"))?
        .map(|r| {
            r.trim()
                .parse::<i32>()
                .ok()
                .filter(|m| (9..100).contains(m))
                .with_context(|| {
                    format!("pg_dump release \"{r}\" is not a major version such as 15 or 16")
                })
        })
        .transpose()?;
    let node_major = facts.server_version_num / 10000;
    if let Some(r) = release
        && r < node_major
    {
        bail!(
            "pg_dump release {r} is older than PgSQL node {} (PostgreSQL {}): a dump must be taken with a client at least as new as the server\nHINT: give {node_major} or newer, or leave the release empty",
            node.fqdn,
            facts.server_version
        );
    }
    // Says in which zone a time without one was read.
    let when = at
        .as_ref()
        .map_or_else(|| "now".to_string(), |t| format!("at {}", t.describe()));
    if inv.bare {
        s.confirm(&format!(
            "Register {} snapshot(s) on {}, {when}?",
            dbnames.len(),
            node.fqdn
        ))?;
    }
    let code_s = code.to_string();
    let done = s
        .catalog
        .register_snapshots(
            &s.audit(),
            &server,
            &node.node_id.to_string(),
            &dbnames,
            at.map(|t| t.at),
            Some(&code_s),
            retention.as_deref(),
            extra.as_deref(),
            tag.as_deref(),
            release,
        )
        .await?;
    crate::agent_seen::after_server(s, &server).await;
    Ok(Output::Done(
        done.iter()
            .zip(&dbnames)
            .map(|((id, tag), db)| {
                let name = if db.is_empty() { format!("{code_s} (whole cluster)") } else { db.clone() };
                format!("Snapshot SnapshotID {id} for dbname [{name}] and backup code [{code_s}] defined (tag {tag}), to run {when}.")
            })
            .collect(),
    ))
}

/// Applies `core::retention` to the catalog as it is now (the agent deletes with the same
/// `RetentionRows::plan`); deletes nothing.
async fn show_retention_plan(s: &mut Session, inv: &Invocation) -> Result<Output> {
    let srv = filter(s.value(inv, "server", Some("all"))?);
    let node = filter(s.value(inv, "node", Some("all"))?);
    let db = filter(s.value(inv, "dbname", Some("all"))?);
    if inv.flag("wal") {
        let mut rows = s.catalog.wal_retention_plan(&srv, &node).await?;
        if inv.flag("deletions-only") {
            let action = rows.columns.iter().position(|c| c == "Action");
            rows.rows.retain(|r| {
                matches!(action.and_then(|i| r.get(i)), Some(Value::Text(a)) if a == "delete" || a == "deleting")
            });
        }
        return Ok(Output::List {
            kind: "wal_retention_plan",
            rows,
        });
    }
    let rows = s.catalog.retention_rows(&srv, &node, &db).await?;
    let mut out = Vec::new();
    for (r, rule) in rows.plan() {
        if inv.flag("deletions-only") && !rule.deletes() {
            continue;
        }
        let (def, snap) = if r.is_definition {
            (Value::Int(r.owner), Value::Null)
        } else {
            (Value::Null, Value::Int(r.owner))
        };
        out.push(vec![
            Value::Int(r.bck_id),
            def,
            snap,
            Value::Text(r.dbname.clone()),
            Value::Time(r.finished),
            Value::Text(r.status.clone()),
            Value::Bool(rule.deletes()),
            Value::Text(rule.to_string()),
            // Only a deletion can be blocked (the agent refused it: sql/62_reconcile.sql).
            r.blocked
                .clone()
                .filter(|_| rule.deletes())
                .map_or(Value::Null, Value::Text),
        ]);
    }
    let columns = [
        "BckID",
        "DefID",
        "SnapshotID",
        "DBname",
        "Finished",
        "Status",
        "Delete",
        "Rule",
        "Blocked",
    ];
    Ok(Output::List {
        kind: "retention_plan",
        rows: Rows {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: out,
        },
    })
}

// ---- system -------------------------------------------------------------------------------------

async fn show_pgbackman_config(s: &mut Session) -> Result<Output> {
    let st = s.catalog.status().await?;
    let info = s.catalog.catalog_info().await?;
    let t = |v: Option<&Value>| v.cloned().unwrap_or(Value::Null);
    let cols = [
        (
            "Running mode",
            Value::Text(if s.interactive() {
                "interactive".into()
            } else {
                "non-interactive".into()
            }),
        ),
        (
            "Software version",
            Value::Text(pgbackman_db::migrate::SOFTWARE_VERSION.into()),
        ),
        ("Backup server", Value::Text(s.local_server.clone())),
        (
            "Configuration file",
            Value::Text(
                s.config
                    .path
                    .as_ref()
                    .map_or("(none)".into(), |p| p.display().to_string()),
            ),
        ),
        ("Catalog", Value::Text(s.catalog.target().to_string())),
        ("Catalog from", Value::Text(s.catalog_source.clone())),
        ("Catalog server version", t(info.get(0, "server_version"))),
        ("Catalog installed", t(info.get(0, "installed_at"))),
        (
            "Catalog schema version",
            st.installed.map_or(Value::Null, |v| Value::Int(v.into())),
        ),
        (
            "Schema version of this binary",
            Value::Int(st.expected.into()),
        ),
        (
            "Catalog functions applied",
            t(info.get(0, "sql_applied_at")),
        ),
        ("Catalog functions by", t(info.get(0, "software"))),
        ("Catalog matches this binary", Value::Bool(st.is_current())),
        ("Output format", Value::Text(s.format.to_string())),
        (
            "Display time zone",
            Value::Text(crate::zone::display().to_string()),
        ),
        ("Expanded display", Value::Text(s.expanded.to_string())),
        (
            "Table width",
            Value::Text(crate::fit::terminal_width().map_or_else(
                || "unlimited (not a terminal, COLUMNS not set)".to_string(),
                |w| format!("{w} columns"),
            )),
        ),
    ];
    Ok(Output::Report {
        kind: "pgbackman_config",
        rows: Rows {
            columns: cols.iter().map(|(k, _)| k.to_string()).collect(),
            rows: vec![cols.into_iter().map(|(_, v)| v).collect()],
        },
    })
}
