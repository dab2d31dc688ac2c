//! `pgbackman db grant|revoke|roles`: the catalog's group roles (sql/95_security.sql), handed
//! out by the catalog owner.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use pgbackman_db::roles;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Level {
    /// every show_* listing
    Readonly,
    /// readonly + backups now, snapshots, restores, cancels, retries, verifications, drills
    Operator,
    /// operator + register, update, delete (servers, nodes, definitions, configuration)
    Admin,
    /// the agent's API only, for the backup server given with --server
    Agent,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Readonly => "readonly",
            Level::Operator => "operator",
            Level::Admin => "admin",
            Level::Agent => "agent",
        }
    }
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    /// An existing login role of the catalog's cluster (e.g. made with `createuser`).
    pub role: String,
    /// The group role to make it a member of: pgbackman_<LEVEL>.
    #[arg(value_enum)]
    pub level: Level,
    /// For agent: the backup server (FQDN or SrvID) it acts for; it may act for no other.
    #[arg(long, value_name = "SERVER")]
    pub server: Option<String>,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The login role.
    pub role: String,
    /// Only this group role (default: every pgbackman group role, and its server bindings).
    #[arg(value_enum)]
    pub level: Option<Level>,
}

pub async fn grant(
    a: &GrantArgs,
    cfg: &pgbackman_config::ConnConfig,
    target: &str,
) -> Result<ExitCode> {
    let c = pgbackman_db::connect_once(cfg, target).await?;
    let group = roles::grant(&c, &a.role, a.level.name(), a.server.as_deref())
        .await
        .with_context(|| format!("catalog {target}"))?;
    match &a.server {
        Some(s) => println!(
            "[DONE] Role {} is a member of {group}, acting for backup server {s} only.",
            a.role
        ),
        None => println!("[DONE] Role {} is a member of {group}.", a.role),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn revoke(
    a: &RevokeArgs,
    cfg: &pgbackman_config::ConnConfig,
    target: &str,
) -> Result<ExitCode> {
    let c = pgbackman_db::connect_once(cfg, target).await?;
    let left = roles::revoke(&c, &a.role, a.level.map(Level::name))
        .await
        .with_context(|| format!("catalog {target}"))?;
    if left.is_empty() {
        println!(
            "[DONE] Role {} held no pgbackman role{}; nothing to revoke.",
            a.role,
            a.level
                .map(|l| format!(" pgbackman_{}", l.name()))
                .unwrap_or_default()
        );
    } else {
        println!("[DONE] Role {} left {}.", a.role, left.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn list(cfg: &pgbackman_config::ConnConfig, target: &str) -> Result<ExitCode> {
    let c = pgbackman_db::connect_once(cfg, target).await?;
    let rows = roles::list(&c)
        .await
        .with_context(|| format!("catalog {target}"))?;
    if rows.is_empty() {
        println!(
            "No role holds a pgbackman role; grant one with `pgbackman db grant ROLE readonly|operator|admin|agent`."
        );
    }
    for (role, groups, servers) in rows {
        if servers.is_empty() {
            println!("{role}: {groups}");
        } else {
            println!("{role}: {groups} (acts for {servers})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// After `db init`: where the group roles stand, and how to hand them out.
pub async fn report_groups(c: &tokio_postgres::Client) {
    match roles::missing_groups(c).await {
        Ok(missing) if missing.is_empty() => println!(
            "[DONE] Group roles pgbackman_readonly, _operator, _admin and _agent are ready: `pgbackman db grant ROLE LEVEL` makes a login role a member."
        ),
        Ok(missing) => println!(
            "[WARNING] Group roles {} could not be created (this role may not create roles): only the catalog owner can use the catalog until a superuser runs `pgbackman db upgrade`.",
            missing.join(", ")
        ),
        Err(_) => {}
    }
}
