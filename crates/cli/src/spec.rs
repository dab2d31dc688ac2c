//! The command table: one entry per shell command, with its arguments in PgBackMan's positional
//! order. It drives parsing (clap, identical for `-C` and the interactive shell), prompts,
//! `help <command>` and tab completion, so a command is described in exactly one place.

/// How an argument is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Positional, in table order.
    Pos,
    /// Positional, takes all remaining words (e.g. `parameter=value` pairs).
    Rest,
    /// `--name value`.
    Opt,
    /// `--name`.
    Flag,
}

#[derive(Debug)]
pub struct Arg {
    pub name: &'static str,
    /// Prompt label and help text.
    pub label: &'static str,
    pub kind: Kind,
}

#[derive(Debug)]
pub struct Cmd {
    pub name: &'static str,
    pub group: &'static str,
    pub about: &'static str,
    pub args: &'static [Arg],
    pub examples: &'static [&'static str],
}

const fn pos(name: &'static str, label: &'static str) -> Arg {
    Arg {
        name,
        label,
        kind: Kind::Pos,
    }
}
const fn opt(name: &'static str, label: &'static str) -> Arg {
    Arg {
        name,
        label,
        kind: Kind::Opt,
    }
}
const fn rest(name: &'static str, label: &'static str) -> Arg {
    Arg {
        name,
        label,
        kind: Kind::Rest,
    }
}

const SERVERS: &str = "Backup servers";
const NODES: &str = "PgSQL nodes";
const DEFS: &str = "Backup definitions";
const SNAPS: &str = "Snapshots and jobs";
const VERIFY: &str = "Verification and restore drills";
const RESTORES: &str = "Restores";
const WAL: &str = "WAL archives";
const REPOS: &str = "Repositories";
const SYSTEM: &str = "System";
const SHELL: &str = "Shell";

pub static COMMANDS: &[Cmd] = &[
    Cmd {
        name: "register_backup_server",
        group: SERVERS,
        about: "Register a backup server (a host that runs pgbackman-agent and stores backups).",
        args: &[
            pos("hostname", "Hostname"),
            pos("domain", "Domain"),
            pos("remarks", "Remarks"),
            opt("status", "Status (RUNNING or STOPPED)"),
        ],
        examples: &["register_backup_server backup01 example.org \"rack 4\""],
    },
    Cmd {
        name: "update_backup_server",
        group: SERVERS,
        about: "Change the remarks or the status of a backup server.",
        args: &[
            pos("server", "SrvID | FQDN"),
            pos("remarks", "Remarks"),
            opt("status", "Status (RUNNING or STOPPED)"),
        ],
        examples: &[
            "update_backup_server backup01.example.org \"moved to DC2\"",
            "update_backup_server 1 \"\" --status STOPPED",
        ],
    },
    Cmd {
        name: "delete_backup_server",
        group: SERVERS,
        about: "Delete a backup server that no definition, backup or job refers to.",
        args: &[pos("server", "SrvID | FQDN")],
        examples: &["delete_backup_server backup02.example.org"],
    },
    Cmd {
        name: "show_backup_servers",
        group: SERVERS,
        about: "List the registered backup servers.",
        args: &[],
        examples: &["show_backup_servers"],
    },
    Cmd {
        name: "show_backup_server_config",
        group: SERVERS,
        about: "Show the configuration of a backup server (default: this host).",
        args: &[pos("server", "SrvID | FQDN")],
        examples: &["show_backup_server_config backup01.example.org"],
    },
    Cmd {
        name: "update_backup_server_config",
        group: SERVERS,
        about: "Change configuration parameters of a backup server: parameter=value pairs, all or none applied.",
        args: &[
            pos("server", "SrvID | FQDN"),
            rest("settings", "parameter=value"),
        ],
        examples: &[
            "update_backup_server_config 1 root_backup_partition=/srv/pgbackman max_concurrent_jobs=8",
        ],
    },
    Cmd {
        name: "show_backup_server_default_config",
        group: SERVERS,
        about: "Show the default configuration copied to newly registered backup servers.",
        args: &[],
        examples: &["show_backup_server_default_config"],
    },
    Cmd {
        name: "update_backup_server_default_config",
        group: SERVERS,
        about: "Change the defaults for new backup servers: parameter=value pairs.",
        args: &[rest("settings", "parameter=value")],
        examples: &["update_backup_server_default_config domain=example.net"],
    },
    Cmd {
        name: "show_backup_server_stats",
        group: SERVERS,
        about: "Statistics of one backup server (default: this host).",
        args: &[pos("server", "SrvID | FQDN")],
        examples: &["show_backup_server_stats backup01.example.org"],
    },
    Cmd {
        name: "register_pgsql_node",
        group: NODES,
        about: "Register a PgSQL node (a PostgreSQL cluster to back up). Passwords come from a pgpass file, never from here.",
        args: &[
            pos("hostname", "Hostname"),
            pos("domain", "Domain"),
            pos("pgport", "Port"),
            pos("admin_user", "Admin user"),
            pos("status", "Status (RUNNING or STOPPED)"),
            pos("remarks", "Remarks"),
            opt("admin-dbname", "Database of the admin connection"),
            opt(
                "sslmode",
                "libpq sslmode (disable, allow, prefer, require, verify-ca, verify-full)",
            ),
        ],
        examples: &[
            "register_pgsql_node pg01 example.org 5432 postgres RUNNING \"billing primary\"",
            "register_pgsql_node 10.0.0.7 \"\" 5433 backup RUNNING \"\" --admin-dbname postgres --sslmode require",
        ],
    },
    Cmd {
        name: "update_pgsql_node",
        group: NODES,
        about: "Change a node's port, admin user, status or remarks. STOPPED stops all its backups; RUNNING resumes them.",
        args: &[
            pos("node", "NodeID | FQDN"),
            pos("pgport", "Port"),
            pos("admin_user", "Admin user"),
            pos("status", "Status (RUNNING or STOPPED)"),
            pos("remarks", "Remarks"),
            opt("admin-dbname", "Database of the admin connection"),
            opt("sslmode", "libpq sslmode"),
        ],
        examples: &["update_pgsql_node pg01.example.org \"\" \"\" STOPPED \"maintenance\""],
    },
    Cmd {
        name: "delete_pgsql_node",
        group: NODES,
        about: "Delete a PgSQL node that has no definitions, backups or snapshots.",
        args: &[pos("node", "NodeID | FQDN")],
        examples: &["delete_pgsql_node pg01.example.org"],
    },
    Cmd {
        name: "accept_pgsql_node_listing",
        group: NODES,
        about: "Accept a node's next database listing as it is, after dropping many databases on purpose: \
                maintenance otherwise treats a listing with far fewer databases than before as suspicious, \
                alerts, and changes nothing.",
        args: &[pos("node", "NodeID | FQDN")],
        examples: &["accept_pgsql_node_listing pg01.example.org"],
    },
    Cmd {
        name: "show_pgsql_nodes",
        group: NODES,
        about: "List the registered PgSQL nodes.",
        args: &[],
        examples: &["show_pgsql_nodes"],
    },
    Cmd {
        name: "show_pgsql_node_config",
        group: NODES,
        about: "Show the configuration of a PgSQL node.",
        args: &[pos("node", "NodeID | FQDN")],
        examples: &["show_pgsql_node_config pg01.example.org"],
    },
    Cmd {
        name: "update_pgsql_node_config",
        group: NODES,
        about: "Change configuration parameters of a PgSQL node: parameter=value pairs, all or none applied.",
        args: &[
            pos("node", "NodeID | FQDN"),
            rest("settings", "parameter=value"),
        ],
        examples: &[
            "update_pgsql_node_config pg01.example.org backup_hours_interval=01-04 retention_period=\"14 days\"",
        ],
    },
    Cmd {
        name: "show_pgsql_node_default_config",
        group: NODES,
        about: "Show the default configuration copied to newly registered PgSQL nodes.",
        args: &[],
        examples: &["show_pgsql_node_default_config"],
    },
    Cmd {
        name: "update_pgsql_node_default_config",
        group: NODES,
        about: "Change the defaults for new PgSQL nodes: parameter=value pairs.",
        args: &[rest("settings", "parameter=value")],
        examples: &[
            "update_pgsql_node_default_config logs_email=dba@example.org domain=example.org",
        ],
    },
    Cmd {
        name: "show_pgsql_node_stats",
        group: NODES,
        about: "Statistics of one PgSQL node.",
        args: &[pos("node", "NodeID | FQDN")],
        examples: &["show_pgsql_node_stats pg01.example.org"],
    },
    Cmd {
        name: "register_backup_definition",
        group: DEFS,
        about: "Schedule backups of databases of a node on a backup server. DBname is a name, a comma list, \
                #all_databases# or #databases_without_backup_definitions#; every database must exist on the node. \
                Without a minute/hour, each definition gets a random one inside the node's backup_minutes_interval \
                and backup_hours_interval. Code BASEBACKUP backs up the whole node with pg_basebackup (no DBname; \
                --checkpoint, --max-rate, --wal-wait): SUCCEEDED once its WAL is in the node's WAL archive.",
        args: &[
            pos("server", "SrvID | FQDN"),
            pos("node", "NodeID | FQDN"),
            pos("dbname", "DBname"),
            pos("exceptions", "DBname exceptions"),
            pos("minutes", "Minutes cron"),
            pos("hours", "Hours cron"),
            pos("day_month", "Day-month cron"),
            pos("month", "Month cron"),
            pos("weekday", "Weekday cron"),
            pos(
                "code",
                "Backup code (FULL, SCHEMA, DATA, CLUSTER, GLOBALS, BASEBACKUP)",
            ),
            pos(
                "encryption",
                "Encryption (false, true = the server's key, or a key name)",
            ),
            pos("retention_period", "Retention period"),
            pos("retention_redundancy", "Retention redundancy"),
            pos("extra", "Extra backup parameters"),
            pos("job_status", "Job status (ACTIVE or STOPPED)"),
            pos("remarks", "Remarks"),
            opt(
                "format",
                "Dump format: custom (zstd, default) or directory (parallel)",
            ),
            opt(
                "jobs",
                "Parallel pg_dump jobs with --format directory (1-64)",
            ),
            opt(
                "compression-level",
                "zstd level of the custom format or base.tar.zst (1-19, default 3; BASEBACKUP 1)",
            ),
            opt(
                "max-runtime",
                "Stop the backup after this interval, e.g. '2 hours' (none: no limit)",
            ),
            opt(
                "lock-wait-timeout",
                "pg_dump --lock-wait-timeout, e.g. '30 seconds' (none: wait)",
            ),
            opt("client-major", "pg_dump major to use (at least the node's)"),
            opt(
                "checkpoint",
                "BASEBACKUP: pg_basebackup --checkpoint, fast (default) or spread",
            ),
            opt(
                "max-rate",
                "BASEBACKUP: pg_basebackup --max-rate, kB/s or with k/M, e.g. 50M (none: no limit)",
            ),
            opt(
                "wal-wait",
                "BASEBACKUP: how long a finished base backup waits for its WAL in the archive, e.g. '15 minutes'",
            ),
        ],
        examples: &[
            "register_backup_definition backup01.example.org pg01.example.org billing \"\" 30 2 \"*\" \"*\" \"*\" FULL false \"7 days\" 2 \"\" ACTIVE \"nightly\"",
            "register_backup_definition backup01.example.org pg01.example.org \"#all_databases#\" \"test,scratch\"",
            "register_backup_definition backup01.example.org pg01.example.org \"\" \"\" 0 1 \"*\" \"*\" \"*\" BASEBACKUP false \"14 days\" 2 \"\" ACTIVE \"physical\" --checkpoint spread --max-rate 50M",
        ],
    },
    Cmd {
        name: "update_backup_definition",
        group: DEFS,
        about: "Change a definition's schedule, retention, parameters, status or remarks. Empty values keep the current one.",
        args: &[
            pos("def_id", "DefID"),
            pos("minutes", "Minutes cron"),
            pos("hours", "Hours cron"),
            pos("day_month", "Day-month cron"),
            pos("month", "Month cron"),
            pos("weekday", "Weekday cron"),
            pos("retention_period", "Retention period"),
            pos("retention_redundancy", "Retention redundancy"),
            pos("extra", "Extra backup parameters"),
            pos("job_status", "Job status (ACTIVE, STOPPED or DELETED)"),
            pos("remarks", "Remarks"),
            opt(
                "format",
                "Dump format: custom (zstd, default) or directory (parallel)",
            ),
            opt(
                "jobs",
                "Parallel pg_dump jobs with --format directory (1-64)",
            ),
            opt(
                "compression-level",
                "zstd level of the custom format or base.tar.zst (1-19, default 3; BASEBACKUP 1)",
            ),
            opt(
                "max-runtime",
                "Stop the backup after this interval, e.g. '2 hours' (none: no limit)",
            ),
            opt(
                "lock-wait-timeout",
                "pg_dump --lock-wait-timeout, e.g. '30 seconds' (none: wait)",
            ),
            opt("client-major", "pg_dump major to use (at least the node's)"),
            opt(
                "checkpoint",
                "BASEBACKUP: pg_basebackup --checkpoint, fast (default) or spread",
            ),
            opt(
                "max-rate",
                "BASEBACKUP: pg_basebackup --max-rate, kB/s or with k/M, e.g. 50M (none: no limit)",
            ),
            opt(
                "wal-wait",
                "BASEBACKUP: how long a finished base backup waits for its WAL in the archive, e.g. '15 minutes'",
            ),
        ],
        examples: &[
            "update_backup_definition 12 15 3 \"\" \"\" \"\" \"14 days\" 3 \"\" ACTIVE \"\"",
            "update_backup_definition 12 --format directory --jobs 4 --max-runtime \"3 hours\"",
        ],
    },
    Cmd {
        name: "delete_backup_definition_id",
        group: DEFS,
        about: "Delete a backup definition. With force-deletion its backups are deleted too (files removed by the agent).",
        args: &[pos("def_id", "DefID"), pos("force", "force-deletion")],
        examples: &[
            "delete_backup_definition_id 12",
            "delete_backup_definition_id 12 force-deletion",
        ],
    },
    Cmd {
        name: "delete_backup_definition_dbname",
        group: DEFS,
        about: "Delete every definition of a database on a node (all backup servers). Snapshots are kept.",
        args: &[
            pos("node", "NodeID | FQDN"),
            pos("dbname", "DBname"),
            pos("force", "force-deletion"),
        ],
        examples: &["delete_backup_definition_dbname pg01.example.org billing force-deletion"],
    },
    Cmd {
        name: "move_backup_definition",
        group: DEFS,
        about: "Move definitions from one backup server to another. Existing backups stay on the old server.",
        args: &[
            pos("from", "From SrvID | FQDN"),
            pos("to", "To SrvID | FQDN"),
            pos("node", "NodeID | FQDN | all"),
            pos("dbname", "DBname | all"),
            pos("def_id", "DefID | all"),
        ],
        examples: &[
            "move_backup_definition backup01.example.org backup02.example.org pg01.example.org all all",
        ],
    },
    Cmd {
        name: "show_backup_definitions",
        group: DEFS,
        about: "List backup definitions. Filters take all, * or comma lists; different filters combine with AND.",
        args: &[
            pos("server", "SrvID | FQDN | all"),
            pos("node", "NodeID | FQDN | all"),
            pos("dbname", "DBname | all"),
        ],
        examples: &["show_backup_definitions all pg01.example.org billing,crm"],
    },
    Cmd {
        name: "show_databases_without_backup_definitions",
        group: DEFS,
        about: "Databases of a node (or of all RUNNING nodes) that no live definition backs up.",
        args: &[pos("node", "NodeID | FQDN | all")],
        examples: &["show_databases_without_backup_definitions all"],
    },
    Cmd {
        name: "show_empty_backup_catalogs",
        group: DEFS,
        about: "Definitions that have no backup in the catalog yet.",
        args: &[],
        examples: &["show_empty_backup_catalogs"],
    },
    Cmd {
        name: "show_backup_catalog",
        group: DEFS,
        about: "List backups, newest first. Filters take all, * or comma lists; --from/--to take dates or times (RFC 3339 or YYYY-MM-DD).",
        args: &[
            pos("server", "SrvID | FQDN | all"),
            pos("node", "NodeID | FQDN | all"),
            pos("dbname", "DBname | all"),
            pos("def_id", "DefID | all"),
            pos("status", "Status (SUCCEEDED, ERROR, CANCELLED) | all"),
            opt("code", "Backup code(s), e.g. FULL,CLUSTER"),
            opt("from", "Finished at or after"),
            opt("to", "Finished before"),
            opt("limit", "Maximum rows (default 1000)"),
            opt(
                "encrypted-with",
                "Only sets this encryption key can read (name | KeyID | fingerprint)",
            ),
        ],
        examples: &[
            "show_backup_catalog all pg01.example.org billing all ERROR --from 2026-11-01",
            "show_backup_catalog --encrypted-with site-2025",
        ],
    },
    Cmd {
        name: "show_retention_plan",
        group: DEFS,
        about: "What retention keeps and deletes, and by which rule, before anything is deleted. Only successful \
                backups count toward redundancy (base backups once verified); snapshots expire by their period. \
                With --wal: the WAL archive's ranges per timeline instead, deleted when below the start LSN of the \
                oldest kept base backup of the node, kept with the base backup that needs them, held (nothing \
                deleted) when the node has no kept base backup or one is running. The agent's maintenance pass \
                deletes exactly this; timeline history files are always kept.",
        args: &[
            pos("server", "SrvID | FQDN | all"),
            pos("node", "NodeID | FQDN | all"),
            pos("dbname", "DBname | all"),
            Arg {
                name: "deletions-only",
                label: "Only the backups (or WAL ranges) that would be deleted",
                kind: Kind::Flag,
            },
            Arg {
                name: "wal",
                label: "The WAL archive's plan: ranges deleted, kept and why",
                kind: Kind::Flag,
            },
        ],
        examples: &[
            "show_retention_plan all pg01.example.org",
            "show_retention_plan all all billing --deletions-only",
            "show_retention_plan all pg01.example.org all --wal",
        ],
    },
    Cmd {
        name: "show_backup_details",
        group: DEFS,
        about: "Everything about one backup: files with sizes and checksums, versions, timings, command, error.",
        args: &[pos("bck_id", "BckID")],
        examples: &["show_backup_details 1042"],
    },
    Cmd {
        name: "run_backup_definition_now",
        group: SNAPS,
        about: "Queue an ad hoc run of a backup definition; the owning agent starts it within a second.",
        args: &[pos("def_id", "DefID")],
        examples: &["run_backup_definition_now 12"],
    },
    Cmd {
        name: "register_snapshot_definition",
        group: SNAPS,
        about: "A one-off backup at a time (default now) of one database, a comma list or #all_databases# minus exceptions. \
                The pg_dump release, when given, must be at least the node's major.",
        args: &[
            pos("server", "SrvID | FQDN"),
            pos("node", "NodeID | FQDN"),
            pos("dbname", "DBname"),
            pos("exceptions", "DBname exceptions"),
            pos(
                "at_time",
                "AT time (now, YYYY-MM-DD HH:MM in the display zone, or with a zone)",
            ),
            pos("code", "Backup code (FULL, SCHEMA, DATA, CLUSTER, GLOBALS)"),
            pos("retention_period", "Retention period"),
            pos("extra", "Extra backup parameters"),
            pos("tag", "Tag"),
            pos("release", "pg_dump/all release (major, e.g. 16)"),
        ],
        examples: &[
            "register_snapshot_definition backup01.example.org pg01.example.org billing \"\" now FULL \"30 days\" \"\" before-upgrade",
        ],
    },
    Cmd {
        name: "show_snapshot_definitions",
        group: SNAPS,
        about: "List snapshot definitions, newest first.",
        args: &[
            pos("server", "SrvID | FQDN | all"),
            pos("node", "NodeID | FQDN | all"),
            pos("dbname", "DBname | all"),
        ],
        examples: &["show_snapshot_definitions all pg01.example.org"],
    },
    Cmd {
        name: "show_snapshots_in_progress",
        group: SNAPS,
        about: "Snapshots running now, with elapsed time and bytes written.",
        args: &[],
        examples: &["show_snapshots_in_progress"],
    },
    Cmd {
        name: "show_jobs_queue",
        group: SNAPS,
        about: "Jobs queued, running (elapsed time, bytes written so far) and lost, newest first (1000 at most). --all adds finished ones.",
        args: &[
            pos("server", "SrvID | FQDN | all"),
            Arg {
                name: "all",
                label: "Include finished jobs",
                kind: Kind::Flag,
            },
        ],
        examples: &[
            "show_jobs_queue",
            "show_jobs_queue backup01.example.org --all",
        ],
    },
    Cmd {
        name: "cancel_job",
        group: SNAPS,
        about: "Cancel a queued job, or ask the agent to stop a running one (recorded as CANCELLED).",
        args: &[pos("job_id", "JobID")],
        examples: &["cancel_job 77"],
    },
    Cmd {
        name: "verify_backup",
        group: VERIFY,
        about: "Check backup sets again on the backup server that holds them: every file against the manifest's \
                sha256 (level 1) and the archive's table of contents (level 2). By BckIDs, or all SUCCEEDED backups \
                that the filters select (newest first, --limit, default 1000).",
        args: &[
            pos("bck_id", "BckID(s) | all"),
            opt("server", "SrvID | FQDN"),
            opt("node", "NodeID | FQDN"),
            opt("dbname", "DBname(s)"),
            opt("def-id", "DefID(s)"),
            opt("code", "Backup code(s)"),
            opt("from", "Finished at or after"),
            opt("to", "Finished before"),
            opt("limit", "Maximum backups (default 1000)"),
        ],
        examples: &[
            "verify_backup 1042",
            "verify_backup all --node pg01.example.org --from 2026-11-01",
        ],
    },
    Cmd {
        name: "run_restore_drill",
        group: VERIFY,
        about: "Restore a backup into a scratch database on the drill node (the backup server's drill_node, or --node), \
                compare every table's row count with the count taken at backup time, drop the scratch database, and \
                record the result and the restore time (level 3). A base backup (BASEBACKUP) is restored on its backup \
                server instead: into a scratch instance, with the archived WAL, to an LSN drawn at random inside its \
                recoverable window; the point reached is checked, pg_amcheck runs (amcheck on the system catalogs and \
                indexes without it), the instance is removed; --node does not apply. Retention counts a base backup \
                toward redundancy only if its last drill passed or it is newer than the newest one that passed. \
                A failed drill raises an alert.",
        args: &[
            pos("bck_id", "BckID"),
            opt("node", "Drill node (NodeID | FQDN)"),
        ],
        examples: &[
            "run_restore_drill 1042",
            "run_restore_drill 1042 --node scratch01.example.org",
        ],
    },
    Cmd {
        name: "update_drill_schedule",
        group: VERIFY,
        about: "Schedule restore drills of a definition's newest successful backup (a cron line in the agent's time zone), \
                or none to stop them. Drills of FULL and SCHEMA definitions run on the backup server's drill_node; \
                drills of a BASEBACKUP definition restore its newest base backup on the backup server \
                (see run_restore_drill).",
        args: &[
            pos("def_id", "DefID"),
            pos("schedule", "Cron line (e.g. \"30 5 * * 0\") | none"),
        ],
        examples: &[
            "update_drill_schedule 12 \"30 5 * * 0\"",
            "update_drill_schedule 12 none",
        ],
    },
    Cmd {
        name: "show_verifications",
        group: VERIFY,
        about: "Verifications and restore drills, newest first: level, result, restore time, row count differences.",
        args: &[
            pos("bck_id", "BckID | all"),
            opt("limit", "Maximum rows (default 1000)"),
        ],
        examples: &["show_verifications", "show_verifications 1042"],
    },
    Cmd {
        name: "register_restore_definition",
        group: RESTORES,
        about: "Restore a backup (BckID) onto a PgSQL node, run by the backup server that holds it. In the shell, \
                without arguments, it asks PgBackMan's questions: an existing target database is renamed out of \
                the way or the restore stops; each role the backup needs is created when missing, reused as it is \
                when you say so, or the restore stops. With -C the same decisions are named options. \
                --dry-run shows the plan and registers nothing. CLUSTER and GLOBALS backups restore onto an empty \
                cluster (or with --acknowledge-nonempty). A restore into an older PostgreSQL major than the backup's \
                pg_dump is refused.",
        args: &[
            pos(
                "at_time",
                "AT time (now, YYYY-MM-DD HH:MM in the display zone, or with a zone)",
            ),
            pos("bck_id", "BckID"),
            pos("node", "Target NodeID | FQDN"),
            pos("dbname", "Target DBname"),
            pos("extra", "Extra pg_restore parameters"),
            opt(
                "rename-existing",
                "Rename an existing target database to NAME (auto: <dbname>_<timestamp>)",
            ),
            opt(
                "reuse-roles",
                "Existing roles to reuse as they are: all, none or a comma list (default none)",
            ),
            opt("jobs", "pg_restore parallel jobs (default 1)"),
            opt(
                "decompression",
                "auto, stream, file or tee (file and tee allow -j; default auto)",
            ),
            opt("remarks", "Remarks"),
            opt(
                "identity",
                "Encrypted set: age identity file(s) on the restoring agent's host (path, never the key)",
            ),
            Arg {
                name: "acknowledge-nonempty",
                label: "CLUSTER/GLOBALS: restore onto a cluster that has databases or roles",
                kind: Kind::Flag,
            },
            Arg {
                name: "dry-run",
                label: "Show the plan (roles to create, database, settings, flags); register nothing",
                kind: Kind::Flag,
            },
        ],
        examples: &[
            "register_restore_definition now 1042 pg02.example.org billing \"\" --reuse-roles all --rename-existing auto --jobs 4",
            "register_restore_definition now 1042 pg02.example.org billing_copy \"\" --dry-run",
            "register_restore_definition now 1042 pg02.example.org billing \"\" --identity /etc/pgbackman/site-2026.key",
            "register_restore_definition \"2026-12-01 02:00\" 1077 pg03.example.org \"\" \"\"",
        ],
    },
    Cmd {
        name: "show_restore_definitions",
        group: RESTORES,
        about: "List restore definitions, newest first; the node and database filters refer to the target.",
        args: &[
            pos("server", "SrvID | FQDN | all"),
            pos("node", "Target NodeID | FQDN | all"),
            pos("dbname", "Target DBname | all"),
        ],
        examples: &["show_restore_definitions all pg02.example.org"],
    },
    Cmd {
        name: "show_restore_catalog",
        group: RESTORES,
        about: "List restores that ran, newest first; the node and database filters refer to the target.",
        args: &[
            pos("server", "SrvID | FQDN | all"),
            pos("node", "Target NodeID | FQDN | all"),
            pos("dbname", "Target DBname | all"),
        ],
        examples: &["show_restore_catalog all all billing"],
    },
    Cmd {
        name: "show_restore_details",
        group: RESTORES,
        about: "Everything about one restore: roles created and reused, versions, flags, timings, command, log, error and what a failure undid.",
        args: &[pos("restore_id", "RestoreID")],
        examples: &["show_restore_details 12"],
    },
    Cmd {
        name: "show_restores_in_progress",
        group: RESTORES,
        about: "Restores running now, with elapsed time and bytes restored.",
        args: &[],
        examples: &["show_restores_in_progress"],
    },
    Cmd {
        name: "show_restore_points",
        group: RESTORES,
        about: "What of a PgSQL node can be restored to a point in time, from the catalog alone. Without --time/--lsn: each \
                base backup with the span of time and LSN its archived WAL restores (from its consistent point to the end \
                of the WAL without a gap). With --time T or --lsn L: restorable or why not (before the first base backup's \
                end, in a hole, after the end of the archive, on a timeline not archived), the base backup it would start \
                from, the WAL segments and history files, the bytes to fetch. A time between two known points is \
                restorable if the WAL holds it; the recovery confirms it. Changes nothing.",
        args: &[
            pos("node", "NodeID | FQDN"),
            opt("time", "A point in time (e.g. '2026-05-01 12:00:00+00')"),
            opt("lsn", "A WAL position (e.g. 0/5000028)"),
        ],
        examples: &[
            "show_restore_points pg01.example.org",
            "show_restore_points pg01.example.org --time '2026-05-01 12:00:00+00'",
            "show_restore_points pg01.example.org --lsn 0/5000028",
        ],
    },
    Cmd {
        name: "register_pitr_restore",
        group: RESTORES,
        about: "Restore a base backup and the archived WAL after it to a point in time, into a clone: a new PostgreSQL \
                instance on the backup server holding the base backup (its agent's clone directory, on --port or the \
                first free port from 55432, listening on localhost only, archive_mode off, never streaming from the node). \
                BckID or latest (with --node): latest takes the newest base backup whose end is before the target and \
                whose timeline lineage holds it. Exactly one target: --target-time, --target-lsn, --target-xid, \
                --target-name or --immediate (the base backup's consistent point). --timeline latest (default), current \
                or N; --target-action promote (default: a writable instance of its own timeline), pause (read-only, \
                recovery paused at the target; the locks of transactions in flight there stay held, so a table whose \
                DROP was not committed yet cannot be read) or shutdown. \
                The plan is checked in the catalog before anything is queued; --dry-run prints it and changes nothing. \
                Otherwise a CLONE job is queued for the agent; show_clone_details follows it.",
        args: &[
            pos("bck", "BckID | latest"),
            opt(
                "clone",
                "Clone name (a-z, 0-9, - and _, starting with a letter; at most 40)",
            ),
            opt(
                "port",
                "Port of the clone (default: the first free from 55432)",
            ),
            opt("node", "NodeID | FQDN (with latest)"),
            opt("target-time", "Recover to this time"),
            opt("target-lsn", "Recover to this LSN"),
            opt("target-xid", "Recover to this transaction id"),
            opt(
                "target-name",
                "Recover to this restore point (pg_create_restore_point)",
            ),
            Arg {
                name: "immediate",
                label: "Recover only to the base backup's consistent point",
                kind: Kind::Flag,
            },
            opt(
                "timeline",
                "Timeline: latest, current or a number (default latest)",
            ),
            opt(
                "target-action",
                "After the target: promote, pause or shutdown (default promote)",
            ),
            opt(
                "expires",
                "Delete the clone after this interval (e.g. '2 days')",
            ),
            Arg {
                name: "dry-run",
                label: "Print the plan and change nothing",
                kind: Kind::Flag,
            },
        ],
        examples: &[
            "register_pitr_restore latest --node pg01.example.org --clone before-drop --target-time '2026-05-01 11:59:00+00'",
            "register_pitr_restore 42 --clone at-release --target-name release_1_4 --target-action promote",
            "register_pitr_restore 42 --clone base42 --immediate --dry-run",
        ],
    },
    Cmd {
        name: "show_clones",
        group: RESTORES,
        about: "The clones (point-in-time restores into new instances) not deleted: backup server, node, BckID, port, state \
                (QUEUED, RESTORING, RUNNING, STOPPED, FAILED), target, the point reached, size, expiry.",
        args: &[opt("server", "SrvID | FQDN"), opt("node", "NodeID | FQDN")],
        examples: &["show_clones", "show_clones --node pg01.example.org"],
    },
    Cmd {
        name: "show_clone_details",
        group: RESTORES,
        about: "Everything about one clone: conninfo to paste into psql, data directory, target, the point reached (LSN, \
                timeline, last replayed transaction time), the phases (fetch, extract, recovery, check) and their times, \
                the error and the clone's log tail when it failed.",
        args: &[pos("clone", "CloneID")],
        examples: &["show_clone_details 3"],
    },
    Cmd {
        name: "stop_clone",
        group: RESTORES,
        about: "Stop a RUNNING clone (a fast shutdown by the agent of its backup server); its data directory stays and \
                start_clone starts it again.",
        args: &[pos("clone", "CloneID")],
        examples: &["stop_clone 3"],
    },
    Cmd {
        name: "start_clone",
        group: RESTORES,
        about: "Start a STOPPED clone again (a clone left paused at its target recovers to it and pauses again).",
        args: &[pos("clone", "CloneID")],
        examples: &["start_clone 3"],
    },
    Cmd {
        name: "delete_clone",
        group: RESTORES,
        about: "Delete a clone: the agent of its backup server stops its server at once and removes its directory. \
                Asks first in the shell (-C does not ask).",
        args: &[pos("clone", "CloneID")],
        examples: &["delete_clone 3"],
    },
    Cmd {
        name: "register_wal_archive",
        group: WAL,
        about: "Archive the WAL of a PgSQL node continuously on a backup server: its agent keeps a physical replication \
                slot on the node (default name pgbackman_<server host name>) and receives the WAL into the ledger. \
                --max-lag: how far the receiver may fall behind before it is alerted (default 64MB).",
        args: &[
            pos("server", "SrvID | FQDN"),
            pos("node", "NodeID | FQDN"),
            opt("slot", "Replication slot name (a-z, 0-9, _; at most 63)"),
            Arg {
                name: "synchronous",
                label: "Flush every write (pg_receivewal --synchronous)",
                kind: Kind::Flag,
            },
            opt("max-lag", "Alert threshold, e.g. 64MB, 1GB"),
            opt(
                "intake",
                "stream (slot + receiver, default) | push (archive_command + wal-push)",
            ),
        ],
        examples: &[
            "register_wal_archive bs01.example.org pg01.example.org",
            "register_wal_archive bs01.example.org pg01.example.org --slot bs01_wal --synchronous --max-lag 256MB",
            "register_wal_archive bs01.example.org pg02.example.org --intake push",
        ],
    },
    Cmd {
        name: "create_wal_push_credential",
        group: WAL,
        about: "Make the credential of a push WAL archive (register_wal_archive ... --intake push): a random token \
                written to --file (mode 0600, never shown) for the node host, whose \
                `pgbackman-agent wal-push` presents it to the backup server's agent over TLS. The catalog keeps \
                only its SHA-256. Run again to rotate it (asks first: the old file stops working at once). With \
                --restore: the node's restore credential instead, for `pgbackman-agent restore-cluster` on another \
                host (it reads the node's base backups and WAL from this server, never pushes; any intake).",
        args: &[
            pos("server", "SrvID | FQDN"),
            pos("node", "NodeID | FQDN"),
            opt(
                "file",
                "Where to write the credential file (must not exist)",
            ),
            Arg {
                name: "restore",
                label: "A restore credential instead (read-only: restore-cluster on another host; any intake)",
                kind: Kind::Flag,
            },
        ],
        examples: &[
            "create_wal_push_credential bs01.example.org pg02.example.org --file ./pg02-wal-push.credential",
            "create_wal_push_credential bs01.example.org pg02.example.org --restore --file ./pg02-restore.credential",
        ],
    },
    Cmd {
        name: "delete_wal_archive",
        group: WAL,
        about: "Stop archiving the WAL of a PgSQL node on a backup server: its agent stops the receiver and drops the \
                slot. The archived WAL and its ledger stay until retention removes them.",
        args: &[pos("server", "SrvID | FQDN"), pos("node", "NodeID | FQDN")],
        examples: &["delete_wal_archive bs01.example.org pg01.example.org"],
    },
    Cmd {
        name: "show_wal_archives",
        group: WAL,
        about: "WAL archives: slot, receiver state, last segment and when it arrived, lag, and the range the \
                archive can replay without a gap. --all adds deleted ones.",
        args: &[
            pos("server", "SrvID | FQDN | all"),
            pos("node", "NodeID | FQDN | all"),
            Arg {
                name: "all",
                label: "Include deleted archives",
                kind: Kind::Flag,
            },
        ],
        examples: &[
            "show_wal_archives",
            "show_wal_archives all pg01.example.org --all",
        ],
    },
    Cmd {
        name: "show_wal_segments",
        group: WAL,
        about: "The WAL ledger of a PgSQL node in LSN order (1000 rows at most): each file with its timeline, LSN range, \
                sizes, SHA-256, how it arrived and its header check. --from/--to take an LSN (0/3000000) or a time.",
        args: &[
            pos("node", "NodeID | FQDN"),
            opt("from", "From LSN or time"),
            opt("to", "To LSN or time"),
            opt("timeline", "Timeline"),
            opt("limit", "Maximum rows (default 1000)"),
        ],
        examples: &[
            "show_wal_segments pg01.example.org",
            "show_wal_segments pg01.example.org --from 0/3000000 --to 0/9000000 --timeline 2",
        ],
    },
    Cmd {
        name: "show_recovery_window",
        group: WAL,
        about: "From when to when the archived WAL of a PgSQL node replays without a gap, per backup server and \
                timeline (following the timeline history across promotions), newest first; each range says why it \
                starts where it does (a hole names the missing files) and which base backups it restores. \
                --holes lists every hole instead; --chains lists each base backup with the WAL after it (WAL count, \
                total size, the last point it restores to).",
        args: &[
            pos("node", "NodeID | FQDN"),
            Arg {
                name: "holes",
                label: "List the missing segments between present ones",
                kind: Kind::Flag,
            },
            Arg {
                name: "chains",
                label: "List each base backup with the WAL after it",
                kind: Kind::Flag,
            },
        ],
        examples: &[
            "show_recovery_window pg01.example.org",
            "show_recovery_window pg01.example.org --holes",
            "show_recovery_window pg01.example.org --chains",
        ],
    },
    Cmd {
        name: "show_replication_status",
        group: WAL,
        about: "Replication of a PgSQL node as the agent archiving it last sampled it (every round, within the [nodes] \
                deadlines; the shell never asks the node): its role, each standby's sent/write/flush/replay LSN and lag, on \
                a standby its WAL receiver and replay delay, every replication slot with the WAL it retains, wal_status and \
                safe_wal_size, pgbackman's own receiver (state, stalls, lag behind the node), and the open WAL alerts. \
                \"As of\" is the sample's age; STALE means the agent stopped reporting. Thresholds: update_pgsql_node_config \
                (replication_lag_threshold, slot_retained_wal_threshold, wal_receiver_down_threshold; the receiver's lag \
                threshold is the archive's --max-lag). Changes nothing.",
        args: &[pos("node", "NodeID | FQDN")],
        examples: &[
            "show_replication_status pg01.example.org",
            "show_replication_status 3",
        ],
    },
    Cmd {
        name: "register_repository",
        group: REPOS,
        about: "Register a repository where backup sets are stored: a directory (local PATH) or an S3-compatible \
                bucket (s3 --endpoint URL --bucket NAME [--prefix P] [--region R]). The S3 keys are never given here: \
                --credentials-file names a file on the agents' host (lines access_key_id=... and secret_access_key=...), \
                else the agents take AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from their environment. Changes only \
                the catalog; set_primary_repository or set_definition_repository sends backups there.",
        args: &[
            pos("name", "Repository name"),
            pos("kind", "Kind (local or s3)"),
            pos("path", "Directory (local)"),
            opt("endpoint", "S3 endpoint URL"),
            opt("bucket", "Bucket"),
            opt("prefix", "Key prefix inside the bucket"),
            opt("region", "Region (default us-east-1)"),
            opt(
                "credentials-file",
                "File with the S3 keys on the agents' host",
            ),
            opt("remarks", "Remarks"),
        ],
        examples: &[
            "register_repository archive local /srv/pgbackman-archive",
            "register_repository offsite s3 --endpoint https://s3.eu-west-1.amazonaws.com --bucket pgbackman --prefix site1 --region eu-west-1",
            "register_repository lab s3 --endpoint http://127.0.0.1:8333 --bucket backups --credentials-file /etc/pgbackman/s3.keys",
        ],
    },
    Cmd {
        name: "update_repository",
        group: REPOS,
        about: "Change a repository. The endpoint, region, credentials file (none: the agents' environment) and \
                remarks can always change; its location (path, bucket, prefix) only while it holds no set.",
        args: &[
            pos("repository", "Repository name | RepoID"),
            opt("path", "Directory (local)"),
            opt("endpoint", "S3 endpoint URL"),
            opt("bucket", "Bucket"),
            opt("prefix", "Key prefix inside the bucket"),
            opt("region", "Region"),
            opt(
                "credentials-file",
                "File with the S3 keys on the agents' host, or none",
            ),
            opt("remarks", "Remarks"),
        ],
        examples: &[
            "update_repository offsite --endpoint https://s3.example.org",
            "update_repository offsite --credentials-file none",
        ],
    },
    Cmd {
        name: "delete_repository",
        group: REPOS,
        about: "Remove a repository from the catalog. Refused while it holds backup sets or a backup server or \
                definition uses it; nothing stored in it is removed.",
        args: &[pos("repository", "Repository name | RepoID")],
        examples: &["delete_repository archive"],
    },
    Cmd {
        name: "set_primary_repository",
        group: REPOS,
        about: "Choose where a backup server stores new backup sets: a repository, or local (its own backup \
                directory, the default). Definitions that name a repository keep theirs; existing sets stay.",
        args: &[
            pos("server", "SrvID | FQDN"),
            pos("repository", "Repository name | RepoID | local"),
        ],
        examples: &[
            "set_primary_repository bs01.example.org offsite",
            "set_primary_repository bs01.example.org local",
        ],
    },
    Cmd {
        name: "set_definition_repository",
        group: REPOS,
        about: "Choose where a backup definition stores new backup sets: a repository, or default (its backup \
                server's primary repository).",
        args: &[
            pos("def_id", "DefID"),
            pos("repository", "Repository name | RepoID | default"),
        ],
        examples: &[
            "set_definition_repository 12 offsite",
            "set_definition_repository 12 default",
        ],
    },
    Cmd {
        name: "set_copy_repository",
        group: REPOS,
        about: "Name a second repository every backup set of a backup server (its default) or of one definition is \
                copied to: after the set is complete in its repository, the agent's maintenance pass copies it object \
                by object and verifies the copy (level 1) before it counts (show_backup_copies); a failed copy raises \
                an alert and is retried at the next pass; retention deletes both. Sets stored already are copied too. \
                none removes the setting (copies made stay until retention deletes their set).",
        args: &[
            pos("target", "SrvID | FQDN | DefID"),
            pos("repository", "Repository name | RepoID | none"),
        ],
        examples: &[
            "set_copy_repository bs01.example.org offsite2",
            "set_copy_repository 12 offsite2",
            "set_copy_repository bs01.example.org none",
        ],
    },
    Cmd {
        name: "show_backup_copies",
        group: REPOS,
        about: "Second repository copies: each set stored in a repository whose definition or server names a copy \
                repository, and its copy there: PENDING (not copied yet), FAILED (why, retried at the next maintenance \
                pass) or VERIFIED (since when).",
        args: &[],
        examples: &["show_backup_copies"],
    },
    Cmd {
        name: "show_repositories",
        group: REPOS,
        about: "Repositories: where each one is, how the agents authenticate (a file or their environment; never a \
                key), which servers use it as primary, how many definitions name it, and the sets and bytes it holds.",
        args: &[],
        examples: &["show_repositories"],
    },
    Cmd {
        name: "register_encryption_key",
        group: REPOS,
        about: "Register an age public key (recipient, age1...) that backup sets can be encrypted to. Only the public \
                key is stored (with its fingerprint); the identity (private key) stays where restores run. Definitions \
                use it with encryption=NAME, or encryption=true through a server's encryption_key; a server's \
                encryption_escrow_key is added to every encrypted set of that server (update_backup_server_config SERVER \
                encryption_key=NAME encryption_escrow_key=NAME). Changes only the catalog.",
        args: &[
            pos("name", "Key name"),
            pos(
                "recipient",
                "age1... public key (age-keygen -y FILE prints it)",
            ),
            opt("remarks", "Remarks"),
        ],
        examples: &[
            "register_encryption_key site-2026 age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
        ],
    },
    Cmd {
        name: "delete_encryption_key",
        group: REPOS,
        about: "Remove an encryption key from the catalog. Refused while a backup set can only be read with it, or a \
                definition or a server's or node's configuration uses it (show_backup_catalog --encrypted-with KEY \
                lists its sets).",
        args: &[pos("key", "Key name | KeyID | fingerprint")],
        examples: &["delete_encryption_key site-2025"],
    },
    Cmd {
        name: "set_definition_encryption",
        group: REPOS,
        about: "Choose what new backup sets of a definition are encrypted to: false, true (its backup server's \
                encryption_key at each run) or a key name. Existing sets keep their keys.",
        args: &[
            pos("def_id", "DefID"),
            pos("encryption", "false | true | key name"),
        ],
        examples: &[
            "set_definition_encryption 12 site-2026",
            "set_definition_encryption 12 true",
        ],
    },
    Cmd {
        name: "show_encryption_keys",
        group: REPOS,
        about: "Encryption keys: name, fingerprint and public key (never a private key), the definitions that name \
                each, the servers that use it as encryption_key or escrow, and the backup sets it can read.",
        args: &[],
        examples: &["show_encryption_keys"],
    },
    Cmd {
        name: "show_alerts",
        group: SYSTEM,
        about: "Alerts, newest first (1000 at most): failed backups, snapshots and restores, lost jobs, overdue \
                definitions, quarantine, maintenance findings (show_reconciliation). State: QUEUED (not mailed yet, see Last error), SENT, FAILED (gave up; \
                retry_alerts), EXPIRED (too old to mail when it could be).",
        args: &[
            pos("server", "SrvID | FQDN | all"),
            pos("node", "NodeID | FQDN | all"),
            pos("state", "State (QUEUED, SENT, FAILED, EXPIRED) | all"),
            opt("type", "Alert type(s), e.g. BACKUP,LOST_JOB,OVERDUE"),
            opt("limit", "Maximum rows (default 1000)"),
        ],
        examples: &[
            "show_alerts",
            "show_alerts all pg01.example.org QUEUED,FAILED",
            "show_alerts all all all --type OVERDUE",
        ],
    },
    Cmd {
        name: "show_reconciliation",
        group: SYSTEM,
        about: "What the last maintenance pass of each backup server found on disk and in the catalog and could not \
                settle: ORPHAN (a backup set on disk that no catalog row names; never deleted automatically), MISSING \
                (a catalog row whose files are gone), BLOCKED (retention must delete a set the agent refuses to delete, \
                and why), PARTITION (a node partition the agent refuses to write to). Each was alerted once, when first seen.",
        args: &[
            pos("server", "SrvID | FQDN | all"),
            opt("kind", "Kind(s): ORPHAN, MISSING, BLOCKED, PARTITION"),
        ],
        examples: &[
            "show_reconciliation",
            "show_reconciliation bs01.example.org --kind ORPHAN,MISSING",
        ],
    },
    Cmd {
        name: "retry_alerts",
        group: SYSTEM,
        about: "Queue alerts that were not mailed (FAILED or EXPIRED) for mailing again, with fresh attempts.",
        args: &[pos("alerts", "AlertID[,AlertID...] | all")],
        examples: &["retry_alerts 12,13", "retry_alerts all"],
    },
    Cmd {
        name: "show_pgbackman_config",
        group: SYSTEM,
        about: "Effective settings of this shell: configuration file, catalog, versions, output format.",
        args: &[],
        examples: &["show_pgbackman_config"],
    },
    Cmd {
        name: "show_pgbackman_stats",
        group: SYSTEM,
        about: "Statistics of the whole installation.",
        args: &[],
        examples: &["show_pgbackman_stats"],
    },
    Cmd {
        name: "show_pgbackman_status",
        group: SYSTEM,
        about: "The status probe for Nagios, Icinga and Zabbix: per PgSQL node and backup definition the verdict \
                (OK, WARNING, CRITICAL, UNKNOWN), the last status, the age of the last success, the queue and whether it \
                is overdue, under an overall verdict. CRITICAL: overdue (no success since a scheduled run, past the node's \
                overdue_grace_period) or the last backup failed; WARNING: a job waited in the queue past --queue-warning \
                minutes (its agent does not take it) or the last backup was cancelled. Schedules are evaluated in the \
                zone of the server's agent (from its heartbeat; else $TZ, default UTC). Each WAL archive is judged by its \
                open WAL alerts (CRITICAL: receiver down, hole, slot lost, no client; WARNING: lag, slot retention; \
                show_replication_status tells more). --nagios prints one line and exits 0 OK, 1 WARNING, 2 CRITICAL, \
                3 UNKNOWN (catalog unreachable within --timeout seconds); --zabbix-discovery nodes|definitions prints \
                Zabbix low-level discovery JSON.",
        args: &[
            Arg {
                name: "nagios",
                label: "One line and the Nagios exit status (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)",
                kind: Kind::Flag,
            },
            opt(
                "zabbix-discovery",
                "Zabbix low-level discovery of: nodes or definitions",
            ),
            opt(
                "queue-warning",
                "Minutes a job may wait in the queue before a WARNING (default 15)",
            ),
            opt(
                "timeout",
                "With --nagios: seconds to wait for the catalog (default 8)",
            ),
        ],
        examples: &[
            "show_pgbackman_status",
            "show_pgbackman_status --nagios --queue-warning 30",
            "show_pgbackman_status --zabbix-discovery definitions",
        ],
    },
    Cmd {
        name: "show_audit_log",
        group: SYSTEM,
        about: "The newest entries of the audit log: who changed what, when (default 50).",
        args: &[pos("limit", "Number of entries")],
        examples: &["show_audit_log 20"],
    },
    Cmd {
        name: "show_history",
        group: SHELL,
        about: "The commands of this shell session.",
        args: &[],
        examples: &["show_history"],
    },
    Cmd {
        name: "set",
        group: SHELL,
        about: "Set a shell parameter: output_format=table|csv|json, expanded=on|off|auto (one record per block, \
                like psql's \\x; auto when a row does not fit the terminal), or timezone=<IANA name>|local (the display \
                zone: times are shown in it, and times typed without a zone are read in it).",
        args: &[pos("setting", "Parameter=value"), pos("value", "Value")],
        examples: &[
            "set output_format=json",
            "set expanded auto",
            "set timezone=Europe/Oslo",
        ],
    },
    Cmd {
        name: "help",
        group: SHELL,
        about: "List the commands, or show one command with its arguments and examples.",
        args: &[pos("command", "Command")],
        examples: &["help", "help register_backup_definition"],
    },
    Cmd {
        name: "clear",
        group: SHELL,
        about: "Clear the screen.",
        args: &[],
        examples: &["clear"],
    },
    Cmd {
        name: "quit",
        group: SHELL,
        about: "Leave the shell (also: exit, \\q, Ctrl-D).",
        args: &[],
        examples: &["quit"],
    },
];

pub fn find(name: &str) -> Option<&'static Cmd> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// Commands whose name is close to `name`, for "did you mean".
pub fn suggestions(name: &str) -> Vec<&'static str> {
    let n = name.to_ascii_lowercase();
    let mut v: Vec<&str> = COMMANDS
        .iter()
        .filter(|c| c.name.contains(&n) || (n.len() >= 4 && n.contains(c.name)) || c.name == n)
        .map(|c| c.name)
        .collect();
    v.truncate(5);
    v
}

impl Cmd {
    pub fn usage(&self) -> String {
        let mut s = self.name.to_string();
        for a in self.args {
            match a.kind {
                Kind::Pos => s.push_str(&format!(" [{}]", a.label)),
                Kind::Rest => s.push_str(&format!(" [{} ...]", a.label)),
                Kind::Opt => s.push_str(&format!(" [--{} <{}>]", a.name, a.name)),
                Kind::Flag => s.push_str(&format!(" [--{}]", a.name)),
            }
        }
        s
    }

    pub fn help(&self) -> String {
        let mut s = format!(
            "{}\n\n  {}\n\nUsage:\n  {}\n",
            self.about,
            self.name,
            self.usage()
        );
        if !self.args.is_empty() {
            s.push_str("\nArguments (omit them all in the shell to be prompted, with defaults in brackets):\n");
            for a in self.args {
                let name = match a.kind {
                    Kind::Opt | Kind::Flag => format!("--{}", a.name),
                    _ => a.name.to_string(),
                };
                s.push_str(&format!("  {name:<24} {}\n", a.label));
            }
        }
        if !self.examples.is_empty() {
            s.push_str("\nExamples:\n");
            for e in self.examples {
                s.push_str(&format!("  {e}\n"));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_examples_use_the_command() {
        let mut names: Vec<_> = COMMANDS.iter().map(|c| c.name).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len());
        for c in COMMANDS {
            for e in c.examples {
                assert!(e.starts_with(c.name), "{e} does not start with {}", c.name);
            }
        }
    }

    #[test]
    fn every_example_parses() {
        for c in COMMANDS {
            for e in c.examples {
                let words = shlex::split(e).unwrap();
                crate::parse::parse(&words).unwrap_or_else(|err| panic!("{e}: {err}"));
            }
        }
    }
}
