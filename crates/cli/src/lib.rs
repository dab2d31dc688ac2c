//! The `pgbackman` admin shell: clap command model shared by `-C` and the interactive shell,
//! rendering (comfy-table, CSV, JSON), `db init|upgrade|status` and `quickstart`.

pub mod agent_seen;
pub mod assets;
pub mod batch;
pub mod commands;
pub mod commands_alerts;
pub mod commands_encryption;
pub mod commands_pitr;
pub mod commands_reconcile;
pub mod commands_repository;
pub mod commands_restore;
pub mod commands_verify;
pub mod commands_wal;
pub mod commands_wal_push;
pub mod complete;
pub mod db_roles;
pub mod fit;
pub mod import;
pub mod monitor;
pub mod parse;
pub mod priorities;
pub mod quickstart;
pub mod quickstart_agent;
mod quickstart_physical;
pub mod render;
pub mod serve_metrics;
pub mod session;
pub mod shell;
pub mod shortcuts;
pub mod spec;
pub mod validate;
pub mod wording;
pub mod zone;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use pgbackman_config::FileConfig;
use pgbackman_core::model::OutputFormat;
use pgbackman_db::{Catalog, migrate};

use crate::parse::ParseError;
use crate::session::{Aborted, Session};

#[derive(Parser, Debug)]
#[command(
    name = "pgbackman",
    version,
    about = "PostgreSQL backup manager: admin shell for the pgbackman catalog",
    long_about = "pgbackman manages pg_dump backups of many PostgreSQL nodes from one catalog.\n\n\
        Without arguments it opens the interactive shell. -C runs one shell command and exits\n\
        non-zero if it fails. The catalog is found by --catalog, else $PGBACKMAN_CATALOG, else\n\
        [catalog] conninfo in --config FILE, ~/.config/pgbackman/pgbackman.toml or\n\
        /etc/pgbackman/pgbackman.toml. Passwords belong in a pgpass file, not on the command line.",
    after_help = "Examples:\n  pgbackman quickstart\n  pgbackman db init --catalog 'host=db1 dbname=pgbackman user=pgbackman'\n  pgbackman -C show_pgsql_nodes -o json\n  pgbackman -C 'register_pgsql_node pg01 example.org 5432 postgres RUNNING \"\"'\n  pgbackman -C 'help register_backup_definition'\n  pgbackman -f changes.txt --stop-on-error     (bulk: one command per line)\n  grep -v '^#' changes.txt | pgbackman"
)]
struct Cli {
    /// Catalog connection: libpq key=value string or postgresql:// URI.
    #[arg(long, global = true, value_name = "CONNINFO")]
    catalog: Option<String>,
    /// Configuration file (default: ~/.config/pgbackman/pgbackman.toml, then /etc/pgbackman/pgbackman.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Run one shell command and exit (non-zero on error).
    #[arg(short = 'C', long = "command", value_name = "COMMAND")]
    command: Option<String>,
    /// Run the commands of FILE, one per line (`-` for standard input; blank lines and # comments
    /// are skipped): the bulk tool. Errors name their line; the exit status is non-zero if any
    /// command failed. Piped standard input is read the same way.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "command"
    )]
    file: Option<PathBuf>,
    /// With -f or piped input: stop at the first command that fails.
    #[arg(long = "stop-on-error")]
    stop_on_error: bool,
    /// Output format of listings and reports.
    #[arg(short = 'o', long = "output", value_name = "table|csv|json")]
    output: Option<OutputFormat>,
    /// Tables one record per block (psql's \x): on, off or auto (when a row does not fit the
    /// width). -x alone means on. The width is $COLUMNS, else the terminal's; unlimited when
    /// the output is not a terminal.
    #[arg(
        short = 'x',
        long = "expanded",
        value_name = "on|off|auto",
        num_args = 0..=1,
        default_missing_value = "on"
    )]
    expanded: Option<fit::Expanded>,
    #[command(subcommand)]
    sub: Option<Sub>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Install, upgrade or inspect the catalog database.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// Start a private catalog cluster, register this host and the local cluster, run a first
    /// backup, leave the agent running, open the shell.
    #[command(long_about = quickstart::LONG_ABOUT)]
    Quickstart(quickstart::Args),
    /// Serve the fleet's metrics from the catalog for Prometheus (GET /metrics).
    ///
    /// Per definition the last success, last verification, next run, duration and size; open
    /// jobs; agents; alerts. The catalog is read every --refresh-seconds within
    /// --timeout-seconds; a scrape is served from the last read and never waits on the catalog.
    ServeMetrics(serve_metrics::Args),
    /// Configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Print the TOML equivalent of a PgBackMan 1.x pgbackman.conf (default: the one PgBackMan
    /// would read, ~/.pgbackman/pgbackman.conf then /etc/pgbackman/pgbackman.conf). What cannot
    /// be carried over is listed as comments; a password never is.
    Convert {
        /// The PgBackMan 1.x file.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DbAction {
    /// Create the catalog in an empty database (created if it does not exist).
    Init,
    /// Apply new migrations and re-create the catalog functions, under an advisory lock.
    Upgrade,
    /// Show the installed catalog version and whether this binary matches (exit 1 if not).
    Status,
    /// Import a PgBackMan 1.x catalog: backup servers, nodes and their configuration, backup
    /// and snapshot definitions, and the catalog rows of backups whose files are on this host.
    /// One transaction; a second run imports only what is new.
    #[command(name = "import-pgbackman")]
    ImportPgbackman(import::Args),
    /// Make a login role a member of pgbackman_readonly, _operator, _admin or _agent (run as
    /// the catalog owner; see README, Operations, Roles).
    Grant(db_roles::GrantArgs),
    /// Take a login role out of the pgbackman group roles (all of them without LEVEL).
    Revoke(db_roles::RevokeArgs),
    /// List the login roles holding a pgbackman group role, and the servers agents act for.
    Roles,
}

/// The clap definition of `pgbackman` (man page and completions: `assets`).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Entry point of the `pgbackman` binary.
pub fn main_entry() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let argv: Vec<String> = std::env::args().skip(1).collect();
            if let Some(hint) = shell_command_as_argv(&argv) {
                print_error(None, &hint);
                return ExitCode::from(2);
            }
            e.exit()
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("[ERROR] cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            print_error(None, &format_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// `pgbackman show_backup_catalog ...`: a shell command given as arguments. The message names
/// the exact line to run with -C (quoted for a POSIX shell).
fn shell_command_as_argv(argv: &[String]) -> Option<String> {
    // The shell command is the first word that is not a global option (and its value).
    let mut i = 0;
    while i < argv.len() {
        match argv[i].as_str() {
            "--catalog" | "--config" | "-o" | "--output" => i += 2,
            w if w.starts_with('-') => i += 1,
            _ => break,
        }
    }
    let name = argv.get(i)?;
    if spec::find(name).is_none() && !matches!(name.as_str(), "\\h" | "\\?" | "\\s") {
        return None;
    }
    let line = shlex::try_join(argv[i..].iter().map(String::as_str)).ok()?;
    let mut run: Vec<String> = vec!["pgbackman".into()];
    run.extend(argv[..i].iter().cloned());
    run.push("-C".into());
    run.push(line);
    let run = shlex::try_join(run.iter().map(String::as_str)).ok()?;
    Some(format!(
        "{name} is a shell command: give it with -C, as in\n  {run}\nHINT: without arguments pgbackman opens the interactive shell; `pgbackman --help` lists its options"
    ))
}

/// Prints `[ERROR] [where: ]message` to stderr: control characters escaped, long input cut
/// (a message may repeat what the user or a node gave).
pub fn print_error(at: Option<&str>, msg: &str) {
    let at = at.map(|a| format!("{a}: ")).unwrap_or_default();
    let bounded = pgbackman_core::text::bound_quoted(msg);
    let bounded = pgbackman_core::text::bound_words(&bounded);
    eprintln!("[ERROR] {at}{}", render::safe(&bounded));
}

/// The error and its causes, without repeating text that a cause already contains.
pub fn format_error(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for c in e.chain().skip(1) {
        let t = c.to_string();
        if !out.contains(&t) {
            out = format!("{out}: {t}");
        }
    }
    out
}

pub(crate) fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Where the catalog is, as (resolved config, redacted conninfo, source description).
pub fn catalog_target(
    flag: Option<&str>,
    file: &FileConfig,
) -> Result<(pgbackman_config::ConnConfig, String, String)> {
    let (conninfo, source) =
        pgbackman_config::catalog_conninfo(flag, std::env::var("PGBACKMAN_CATALOG").ok(), file)?;
    let cfg = pgbackman_config::resolve_env(&conninfo).context("the catalog connection string")?;
    if flag.is_some() && cfg.get_password().is_some() {
        eprintln!(
            "[WARNING] a password given with --catalog is visible to every user of this host; use a pgpass file"
        );
    }
    let redacted = pgbackman_config::redacted(&cfg);
    Ok((cfg, redacted, source.to_string()))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(Sub::Config {
        action: ConfigAction::Convert { file },
    }) = &cli.sub
    {
        return convert_config(file.as_deref());
    }
    let file = pgbackman_config::load(cli.config.as_deref())?;
    if file.legacy
        && let Some(p) = &file.path
    {
        // Once per process: the file is loaded once.
        eprintln!(
            "[NOTE] no pgbackman.toml found: using the PgBackMan 1.x file {}. Convert it with `pgbackman config convert > ~/.config/pgbackman/pgbackman.toml`.",
            p.display()
        );
    }
    if let Some(Sub::Quickstart(args)) = &cli.sub {
        return quickstart::run(args, &file).await;
    }
    if let Some(Sub::ServeMetrics(args)) = &cli.sub {
        return serve_metrics::run(args, cli.catalog.as_deref(), &file).await;
    }
    let command = match cli.command.as_deref().map(shortcuts::expand) {
        // `-C '\q'`: nothing to do, and no catalog needed for it.
        Some(shortcuts::Line::Quit) => return Ok(ExitCode::SUCCESS),
        Some(shortcuts::Line::Run(l)) => Some(l.into_owned()),
        None => None,
    };
    // Help needs no catalog: whoever reads about a command may not have one yet.
    if let Some(line) = &command
        && let Some(words) = shlex::split(line)
        && (words.first().is_some_and(|w| w == "help")
            || words.iter().any(|w| w == "--help" || w == "-h"))
    {
        return Ok(match parse::parse(&words) {
            Err(ParseError::Help(h)) => {
                print!("{h}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                print_error(None, &e.to_string());
                ExitCode::FAILURE
            }
            Ok(inv) => match commands::help(&inv) {
                Ok(out) => {
                    let layout = fit::Layout::for_stdout(cli.expanded.unwrap_or_default());
                    print!("{}", render::render_with(&out, OutputFormat::Table, layout));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    print_error(None, &format_error(&e));
                    ExitCode::FAILURE
                }
            },
        });
    }
    // The Nagios probe owns its exit status: even "no catalog configured" is UNKNOWN (3).
    if let Some(line) = &command
        && let Some(words) = shlex::split(line)
        && words.first().is_some_and(|w| w == "show_pgbackman_status")
        && words.iter().any(|w| w == "--nagios")
    {
        return Ok(match parse::parse(&words) {
            Ok(inv) => monitor::nagios_main(cli.catalog.as_deref(), &file, &inv).await,
            Err(e) => {
                println!(
                    "PGBACKMAN UNKNOWN - {}",
                    render::safe(&e.to_string()).replace('\n', " ")
                );
                ExitCode::from(3)
            }
        });
    }
    if let Some(tz) = &file.shell.timezone {
        let z = zone::parse_zone(tz).with_context(|| {
            format!(
                "[shell] timezone in {}",
                file.path
                    .as_ref()
                    .map_or("the configuration".into(), |p| p.display().to_string())
            )
        })?;
        zone::set_display(z);
    }
    let (cfg, target, source) = catalog_target(cli.catalog.as_deref(), &file)?;
    if let Some(Sub::Db { action }) = &cli.sub {
        let format = cli.output.unwrap_or(OutputFormat::Table);
        return db_command(action, &cfg, &target, format).await;
    }
    let catalog = Catalog::connect(cfg, "pgbackman", &target).await?;
    catalog
        .check_compatible()
        .await
        .with_context(|| format!("catalog {target}"))?;
    let format = match cli.output {
        Some(f) => f,
        None => file
            .shell
            .output_format
            .as_deref()
            .map(str::parse)
            .transpose()?
            .unwrap_or(OutputFormat::Table),
    };
    let local_server = file
        .shell
        .backup_server
        .clone()
        .unwrap_or_else(pgbackman_config::host_fqdn);
    let history = shell::history_path(file.shell.history_file.as_deref());
    // Commands from a file or a pipe run as with -C: nothing is asked, nothing is confirmed.
    let batch = match (&command, &cli.file) {
        (Some(_), _) => None,
        (None, Some(f)) => Some(f.clone()),
        (None, None) if !std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            Some(PathBuf::from("-"))
        }
        (None, None) => None,
    };
    let interactive = command.is_none() && batch.is_none();
    let mut s = Session {
        catalog,
        format,
        config: file,
        catalog_source: source,
        local_server,
        os_user: os_user(),
        editor: if interactive {
            Some(shell::new_editor(history.as_ref())?)
        } else {
            None
        },
        history: Vec::new(),
        line: String::new(),
        expanded: cli.expanded.unwrap_or_default(),
    };
    if let Some(path) = batch {
        return batch::run(&mut s, &path, cli.stop_on_error).await;
    }
    match command {
        Some(line) => Ok(if execute_line(&mut s, &line).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        None => {
            shell::run(s, history).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs one command line, printing its output or its error. Returns whether it succeeded.
pub async fn execute_line(s: &mut Session, line: &str) -> bool {
    execute_line_at(s, line, None).await
}

/// [`execute_line`], with errors prefixed by where the line came from (`line 12`).
pub async fn execute_line_at(s: &mut Session, line: &str, at: Option<&str>) -> bool {
    // `\q` or `EOF` with -C or in a file: nothing left to do (the shell loop leaves on them).
    let line = match shortcuts::expand(line) {
        shortcuts::Line::Quit => return true,
        shortcuts::Line::Run(l) => l,
    };
    let line = line.as_ref();
    let Some(words) = shlex::split(line) else {
        print_error(
            at,
            &format!(
                "unbalanced quotes in {}\nHINT: close every quote; write a quote inside a value as \\\" or '\"'",
                pgbackman_core::text::quote(line)
            ),
        );
        return false;
    };
    if words.is_empty() {
        return true;
    }
    let inv = match parse::parse(&words) {
        Ok(i) => i,
        Err(ParseError::Help(h)) => {
            print!("{h}");
            return true;
        }
        Err(e) => {
            print_error(at, &e.to_string());
            return false;
        }
    };
    s.line = line.to_string();
    match commands::run(s, &inv).await {
        Ok(out) => {
            print!("{}", s.render(&out));
            true
        }
        Err(e) if e.is::<Aborted>() => {
            println!("[ABORTED] Command interrupted by the user.");
            false
        }
        Err(e) => {
            let e = explain_denied(s, e).await;
            print_error(at, &format_error(&e));
            false
        }
    }
}

/// A catalog "permission denied" says which catalog role to grant, to whom.
async fn explain_denied(s: &Session, e: anyhow::Error) -> anyhow::Error {
    let denied = e
        .downcast_ref::<pgbackman_db::DbError>()
        .is_some_and(|d| d.code() == Some("42501"));
    if !denied {
        return e;
    }
    match e.downcast::<pgbackman_db::DbError>() {
        Ok(db) => s.catalog.explain_denied(db).await.into(),
        Err(e) => e,
    }
}

/// `pgbackman config convert [FILE]`: the TOML of a PgBackMan 1.x file, on stdout.
fn convert_config(file: Option<&std::path::Path>) -> Result<ExitCode> {
    let old = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}; check the path", p.display()))?;
            pgbackman_config::parse_legacy(p, &text)?
        }
        None => {
            let candidates = pgbackman_config::legacy_candidates(&pgbackman_config::real_env);
            match pgbackman_config::find_legacy(&candidates)? {
                Some(c) => c,
                None => bail!(
                    "no PgBackMan 1.x configuration found ({})\nHINT: name the file: pgbackman config convert /path/to/pgbackman.conf",
                    candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    print!("{}", old.to_toml());
    Ok(ExitCode::SUCCESS)
}

async fn db_command(
    action: &DbAction,
    cfg: &pgbackman_config::ConnConfig,
    target: &str,
    format: OutputFormat,
) -> Result<ExitCode> {
    let status = match action {
        DbAction::Grant(a) => return db_roles::grant(a, cfg, target).await,
        DbAction::Revoke(a) => return db_roles::revoke(a, cfg, target).await,
        DbAction::Roles => return db_roles::list(cfg, target).await,
        DbAction::Init => {
            if pgbackman_db::ensure_database(cfg, target).await? {
                println!(
                    "[DONE] Database {} created.",
                    cfg.get_dbname().unwrap_or("pgbackman")
                );
            }
            let mut c = pgbackman_db::connect_once(cfg, target).await?;
            let st = migrate::init(&mut c).await?;
            println!(
                "[DONE] Catalog installed in {target} (schema version {}).",
                st.expected
            );
            db_roles::report_groups(&c).await;
            st
        }
        DbAction::Upgrade => {
            let mut c = pgbackman_db::connect_once(cfg, target).await?;
            let before = migrate::status(&c).await?;
            let st = migrate::upgrade(&mut c).await?;
            println!(
                "[DONE] Catalog upgraded from schema version {} to {}; functions re-applied.",
                before.installed.map_or("?".into(), |v| v.to_string()),
                st.installed.map_or("?".into(), |v| v.to_string())
            );
            st
        }
        DbAction::Status => {
            let c = pgbackman_db::connect_once(cfg, target).await?;
            let st = migrate::status(&c).await?;
            println!("Catalog:                 {target}");
            println!(
                "Installed schema:        {}",
                st.installed
                    .map_or("none (run `pgbackman db init`)".into(), |v| v.to_string())
            );
            println!("Schema of this binary:   {}", st.expected);
            println!(
                "Functions installed by:  {}",
                st.software_installed.as_deref().unwrap_or("-")
            );
            println!("pgbackman version:       {}", migrate::SOFTWARE_VERSION);
            match st.compatibility(target) {
                Ok(()) => println!("Status:                  OK, this binary matches the catalog"),
                Err(e) => {
                    println!("Status:                  MISMATCH");
                    bail!("{e}");
                }
            }
            st
        }
        DbAction::ImportPgbackman(args) => {
            return import::run(args, cfg.clone(), target, format).await;
        }
    };
    let _ = status;
    Ok(ExitCode::SUCCESS)
}
