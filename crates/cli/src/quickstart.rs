//! `pgbackman quickstart`: a working installation on this host in one command. It starts (or
//! reuses) a private catalog cluster, installs the catalog, registers this host as backup server
//! and the local PostgreSQL cluster as a node, then opens the shell (or, without a terminal,
//! prints what it set up).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use pgbackman_config::FileConfig;
use pgbackman_db::{Audit, Catalog, NewNode, migrate};
use pgbackman_pgctl::{Cluster, StopMode};

/// `pgbackman quickstart --help`: what it writes, what it starts, what `--stop` keeps.
pub const LONG_ABOUT: &str = "A working installation on this host in one command, for a first look or a test.\n\n\
        It writes: a private catalog cluster in DIR (data/, run/, port), the catalog in it;\n\
        DIR/agent.toml (the agent's configuration), backups under DIR/backups, the agent's state\n\
        in DIR/agent-state, its log in DIR/agent.log; ~/.config/pgbackman/pgbackman.toml naming\n\
        the catalog, if you have no such file. It registers this host as backup server and the\n\
        local cluster (else the private one) as a RUNNING node, with backup definitions.\n\n\
        It starts: the catalog cluster, a first backup (pgbackman-agent --once), then the agent\n\
        in the background (pid in DIR/agent.pid), so that the schedules fire and\n\
        run_backup_definition_now runs at once. With the agent running, the physical half too: a\n\
        WAL archive of the node (a replication slot on it and the agent's pg_receivewal into\n\
        DIR/backups) and a first base backup (definition code BASEBACKUP), so that\n\
        show_recovery_window answers; a node that cannot stream gets a warning saying why. Then\n\
        it opens the shell (not with --no-shell or without a terminal). Run again, it reuses all of it and starts what is stopped.\n\n\
        --stop stops the agent and the catalog cluster and keeps everything on disk: the\n\
        catalog, the backups, the configuration files. `pgbackman quickstart` starts them again;\n\
        remove DIR (and the config file it wrote) to forget the installation.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of the private catalog cluster (default: /var/lib/pgbackman/quickstart as root,
    /// else ~/.local/share/pgbackman/quickstart).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The node to register (libpq conninfo). Default: the local cluster at $PGHOST/$PGPORT or
    /// /var/run/postgresql:5432, else the private cluster itself.
    #[arg(long, value_name = "CONNINFO")]
    node: Option<String>,
    /// Do not open the shell at the end.
    #[arg(long)]
    no_shell: bool,
    /// Stop the agent and the private catalog cluster, keep everything on disk, and exit.
    #[arg(long)]
    stop: bool,
}

fn default_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/pgbackman/quickstart");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("pgbackman/quickstart")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The private cluster keeps its port in a file so later runs find it again.
fn cluster_at(dir: &std::path::Path) -> Result<Cluster> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let port_file = dir.join("port");
    let port = match std::fs::read_to_string(&port_file) {
        Ok(p) => p
            .trim()
            .parse()
            .with_context(|| format!("{} is corrupt", port_file.display()))?,
        Err(_) => {
            let p = pgbackman_pgctl::free_port();
            std::fs::write(&port_file, p.to_string())
                .with_context(|| format!("writing {}", port_file.display()))?;
            p
        }
    };
    Ok(Cluster::new(dir.join("data"), port).with_socket_dir(dir.join("run")))
}

pub async fn run(args: &Args, file: &FileConfig) -> Result<ExitCode> {
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    let cluster = cluster_at(&dir)?;
    if args.stop {
        // The agent first: it would only spool results for a catalog that is gone.
        if crate::quickstart_agent::stop(&dir)? {
            println!("[DONE] Agent stopped.");
        }
        if cluster.is_running() {
            cluster.stop(StopMode::Fast)?;
        }
        println!(
            "[DONE] Private catalog cluster in {} stopped. Kept on disk: the catalog, the backups \
             and the configuration files; `pgbackman quickstart` starts both again.",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !cluster.is_initialized() {
        println!(
            "Creating the private catalog cluster in {} ...",
            dir.display()
        );
        cluster.initdb()?;
    }
    if !cluster.is_running() {
        cluster.start()?;
    }
    let conninfo = cluster.conninfo("pgbackman");
    let cfg = pgbackman_config::resolve_env(&conninfo)?;
    let target = pgbackman_config::redacted(&cfg);
    pgbackman_db::ensure_database(&cfg, &target).await?;
    let mut c = pgbackman_db::connect_once(&cfg, &target).await?;
    let st = migrate::status(&c).await?;
    if st.installed.is_none() {
        migrate::init(&mut c).await?;
    } else if !st.is_current() {
        migrate::upgrade(&mut c).await?;
    }
    drop(c);
    println!("[OK] Catalog: {target}");
    write_config(&conninfo, file)?;

    let catalog = Catalog::connect(cfg, "pgbackman-quickstart", &target).await?;
    let audit = Audit {
        os_user: std::env::var("USER").unwrap_or_default(),
        command: "quickstart".into(),
    };
    let fqdn = file
        .shell
        .backup_server
        .clone()
        .unwrap_or_else(pgbackman_config::host_fqdn);
    if catalog.server_id(&fqdn).await.is_err() {
        let (host, domain) = fqdn.split_once('.').unwrap_or((fqdn.as_str(), ""));
        catalog
            .register_backup_server(
                &audit,
                host,
                Some(domain),
                Some("RUNNING"),
                Some("registered by quickstart"),
            )
            .await?;
    }
    println!("[OK] Backup server: {fqdn}");

    let (node_host, node_port, node_user, node_cfg) = pick_node(args, &cluster).await?;
    let node_ref = format!("{node_host}:{node_port}");
    if catalog.node_id(&node_ref).await.is_err() {
        catalog
            .register_pgsql_node(
                &audit,
                &NewNode {
                    hostname: node_host.clone(),
                    domain: Some(String::new()),
                    port: Some(i32::from(node_port)),
                    admin_user: Some(node_user),
                    status: Some("RUNNING".into()),
                    remarks: Some("local cluster, registered by quickstart".into()),
                    ..NewNode::default()
                },
            )
            .await?;
    }
    println!("[OK] PgSQL node: {node_ref}");

    let history = crate::shell::history_path(file.shell.history_file.as_deref());
    let mut s = crate::session::Session {
        catalog,
        format: pgbackman_core::model::OutputFormat::Table,
        config: file.clone(),
        catalog_source: "quickstart".into(),
        local_server: fqdn.clone(),
        os_user: std::env::var("USER").unwrap_or_default(),
        editor: None,
        history: Vec::new(),
        line: String::new(),
        expanded: Default::default(),
    };
    crate::execute_line(&mut s, "show_backup_servers").await;
    crate::execute_line(&mut s, "show_pgsql_nodes").await;
    first_backup(&mut s, &dir, &conninfo, &fqdn, &node_ref).await?;
    let agent_line = start_agent(&dir)?;
    if crate::quickstart_agent::running(&dir).is_some() {
        crate::quickstart_physical::first_base_backup(&mut s, &fqdn, &node_ref, node_cfg).await?;
    }
    println!(
        "\nThe catalog runs in {}.\n{agent_line}\n\
         `pgbackman quickstart --stop` stops both and keeps everything on disk.\n\
         Next, in the shell (`pgbackman`): show_backup_definitions, show_backup_catalog, \
         show_wal_archives, show_recovery_window {node_ref}, help",
        dir.display(),
    );
    if args.no_shell || !std::io::stdin().is_terminal() {
        return Ok(ExitCode::SUCCESS);
    }
    s.editor = Some(crate::shell::new_editor(history.as_ref())?);
    crate::shell::run(s, history).await?;
    Ok(ExitCode::SUCCESS)
}

/// Registers backups of the node's databases (the whole cluster when it has none of its own),
/// runs the first one through `pgbackman-agent --once`, and shows it. Skipped when the catalog
/// already holds a backup (a rerun of quickstart).
async fn first_backup(
    s: &mut crate::session::Session,
    dir: &std::path::Path,
    conninfo: &str,
    fqdn: &str,
    node_ref: &str,
) -> Result<()> {
    let agent_cfg = dir.join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "# Written by `pgbackman quickstart`.\n[catalog]\nconninfo = {}\n[agent]\nbackup_server = {}\nstate_dir = {}\nbackup_dir = {}\nhttp_listen = \"\"\n",
            toml_string(conninfo),
            toml_string(fqdn),
            toml_string(&dir.join("agent-state").display().to_string()),
            toml_string(&dir.join("backups").display().to_string()),
        ),
    )
    .with_context(|| format!("writing {}", agent_cfg.display()))?;
    let any_backup = !s
        .catalog
        .show_backup_catalog(&pgbackman_db::CatalogFilter {
            limit: 1,
            ..Default::default()
        })
        .await?
        .is_empty();
    if any_backup {
        return Ok(());
    }
    let node = s.catalog.node(node_ref).await?;
    let defs = s
        .catalog
        .show_backup_definitions(&None, &Some(vec![node.node_id.to_string()]), &None)
        .await?;
    if defs.is_empty() {
        let ok = crate::execute_line(
            s,
            &format!("register_backup_definition {fqdn} {node_ref} \"#all_databases#\""),
        )
        .await;
        let defs = s
            .catalog
            .show_backup_definitions(&None, &Some(vec![node.node_id.to_string()]), &None)
            .await?;
        if !ok || defs.is_empty() {
            crate::execute_line(
                s,
                &format!("register_backup_definition {fqdn} {node_ref} \"\" \"\" \"\" \"\" \"*\" \"*\" \"*\" CLUSTER"),
            )
            .await;
        }
    }
    let defs = s
        .catalog
        .show_backup_definitions(&None, &Some(vec![node.node_id.to_string()]), &None)
        .await?;
    let Some(pgbackman_db::Value::Int(def_id)) = defs.get(0, "DefID").cloned() else {
        anyhow::bail!("no backup definition could be registered for {node_ref}");
    };
    if !crate::execute_line(s, &format!("run_backup_definition_now {def_id}")).await {
        anyhow::bail!("could not queue the first backup");
    }
    let agent = crate::quickstart_agent::binary()?;
    if crate::quickstart_agent::running(dir).is_some() {
        // The agent left running by an earlier quickstart takes the job (NOTIFY).
        println!("The running agent takes the first backup ...");
        wait_for_a_backup(s).await?;
    } else {
        if !agent.exists() {
            println!(
                "[WARNING] {} is missing, so the first backup stays queued (show_jobs_queue).\n\
             Build it (cargo build --release builds both binaries), then run:\n  {} --config {} --once",
                agent.display(),
                agent.display(),
                agent_cfg.display()
            );
            return Ok(());
        }
        println!(
            "Running the first backup with {} --once ...",
            agent.display()
        );
        let status = std::process::Command::new(&agent)
            .arg("--config")
            .arg(&agent_cfg)
            .arg("--once")
            .env("PGBACKMAN_LOG", "warn")
            .status()
            .with_context(|| format!("starting {}", agent.display()))?;
        if !status.success() {
            anyhow::bail!("{} --once failed ({status})", agent.display());
        }
    }
    crate::execute_line(s, "show_backup_catalog").await;
    let newest = s
        .catalog
        .show_backup_catalog(&pgbackman_db::CatalogFilter {
            limit: 1,
            ..Default::default()
        })
        .await?;
    if let Some(pgbackman_db::Value::Int(bck)) = newest.get(0, "BckID").cloned() {
        crate::execute_line(s, &format!("show_backup_details {bck}")).await;
        if !matches!(newest.get(0, "Status"), Some(pgbackman_db::Value::Text(t)) if t == "SUCCEEDED")
        {
            anyhow::bail!("the first backup failed: show_backup_details {bck} says why");
        }
    }
    Ok(())
}

/// Waits (up to a minute) until the catalog holds a finished backup.
async fn wait_for_a_backup(s: &crate::session::Session) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let rows = s
            .catalog
            .show_backup_catalog(&pgbackman_db::CatalogFilter {
                limit: 1,
                ..Default::default()
            })
            .await?;
        if !rows.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the first backup did not finish within a minute: see show_jobs_queue");
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// Leaves the agent running in the background (unless it already runs); says so, or how to
/// start it when that is not possible.
fn start_agent(dir: &std::path::Path) -> Result<String> {
    use crate::quickstart_agent as qa;
    let config = dir.join("agent.toml");
    let log = qa::log_file(dir);
    if let Some(pid) = qa::running(dir) {
        return Ok(format!(
            "The agent runs (pid {pid}, log {}): backups queued now run at once.",
            log.display()
        ));
    }
    let agent = qa::binary()?;
    let how = format!("{} --config {} &", agent.display(), config.display());
    if !agent.exists() || !config.exists() {
        return Ok(format!(
            "[WARNING] no agent runs, so backups stay queued. Start it with:\n  {how}"
        ));
    }
    match qa::start(dir, &agent, &config) {
        Ok(pid) => Ok(format!(
            "The agent runs in the background (pid {pid}, log {}): schedules fire and \
             run_backup_definition_now runs at once.",
            log.display()
        )),
        Err(e) => Ok(format!(
            "[WARNING] the agent did not start: {}\nStart it with:\n  {how}",
            crate::format_error(&e)
        )),
    }
}

/// Points the user's config at the private catalog unless it already names another catalog.
fn write_config(conninfo: &str, file: &FileConfig) -> Result<()> {
    if file.catalog.conninfo.is_some() {
        if file.catalog.conninfo.as_deref() != Some(conninfo) {
            println!(
                "[WARNING] {} names another catalog; use this one with:\n  export PGBACKMAN_CATALOG='{conninfo}'",
                file.path
                    .as_ref()
                    .map_or("your configuration".into(), |p| p.display().to_string())
            );
        }
        return Ok(());
    }
    let Some(home) = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
    else {
        return Ok(());
    };
    let path = home.join("pgbackman/pgbackman.toml");
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().unwrap_or(&home))?;
    let body = format!(
        "# Written by `pgbackman quickstart`.\n[catalog]\nconninfo = {}\n",
        toml_string(conninfo)
    );
    std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    println!("[OK] Wrote {}", path.display());
    Ok(())
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The node to register: --node, else the local cluster if it answers, else the private cluster.
async fn pick_node(
    args: &Args,
    private: &Cluster,
) -> Result<(String, u16, String, pgbackman_config::ConnConfig)> {
    let candidates: Vec<String> = match &args.node {
        Some(n) => vec![n.clone()],
        None => vec![String::new()],
    };
    for c in candidates {
        let Ok(cfg) = pgbackman_config::resolve_env(&c) else {
            continue;
        };
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => continue,
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = cfg.get_user().unwrap_or("postgres").to_string();
        if pgbackman_db::node::node_facts(cfg.clone(), &host)
            .await
            .is_ok()
        {
            return Ok((host, port, user, cfg));
        }
        if args.node.is_some() {
            anyhow::bail!("the node given with --node ({c}) does not answer");
        }
    }
    println!("[OK] No local PostgreSQL cluster answers; the private cluster serves as the node.");
    Ok((
        private.socket_dir().display().to_string(),
        private.port(),
        "postgres".into(),
        pgbackman_config::resolve_env(&private.conninfo("postgres"))?,
    ))
}
