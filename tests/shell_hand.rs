//! The shell as the hand meets it outside the terminal: the display zone (listings, AT times,
//! the config key), PgBackMan's shortcuts with -C, and a shell command given as arguments.

mod common;

use common::Env;

fn with_zone(env: &Env, zone: &str) {
    let dir = env.home.path().join(".config/pgbackman");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("pgbackman.toml"),
        format!("[shell]\ntimezone = \"{zone}\"\n"),
    )
    .unwrap();
}

#[test]
fn times_are_read_and_shown_in_the_display_zone() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "a");
    node.create_database("shop");
    // Asia/Kolkata: +05:30 all year, far from the tests' TZ=UTC.
    with_zone(&env, "Asia/Kolkata");
    let utc_of = |id: i64| {
        env.sql(&format!(
            "select to_char(at_time at time zone 'UTC', 'YYYY-MM-DD HH24:MI') from snapshot_definition where snapshot_id = {id}"
        ))
    };

    // A time without a zone is read in the display zone, and the confirmation says so.
    let out = env
        .cmd("register_snapshot_definition bs1.example.org 127.0.0.2 shop \"\" \"2030-12-01 02:00\" FULL")
        .ok()
        .stdout;
    assert!(
        out.contains("to run at 2030-12-01 02:00:00+05:30 (read in Asia/Kolkata)"),
        "{out}"
    );
    assert_eq!(utc_of(1), "2030-11-30 20:30");

    // A time with a zone or an offset is taken as given.
    for (id, at, utc) in [
        (2, "2030-12-01 02:00 UTC", "2030-12-01 02:00"),
        (3, "2030-12-01 02:00 Europe/Oslo", "2030-12-01 01:00"),
        (4, "2030-12-01T02:00:00-05:00", "2030-12-01 07:00"),
    ] {
        let out = env
            .cmd(&format!(
                "register_snapshot_definition bs1.example.org 127.0.0.2 shop \"\" \"{at}\" FULL \"\" \"\" t{id}"
            ))
            .ok()
            .stdout;
        assert!(out.contains("(as given)"), "{at}: {out}");
        assert_eq!(utc_of(id), utc, "{at}");
    }

    // Listings show times in the display zone with the offset; JSON carries ISO 8601 (UTC).
    let table = env.cmd("show_snapshot_definitions").ok().stdout;
    assert!(table.contains("2030-12-01 02:00:00+05:30"), "{table}");
    let j = env.json("show_snapshot_definitions");
    let text = j.to_string();
    assert!(text.contains("2030-11-30T20:30:00+00:00"), "{text}");
    let cfg = env.cmd("show_pgbackman_config").ok().stdout;
    assert!(
        cfg.lines()
            .any(|l| l.contains("Display time zone") && l.contains("Asia/Kolkata")),
        "{cfg}"
    );
    // A wall-clock time the clocks skip is refused, naming the zone.
    env.cmd("register_snapshot_definition bs1.example.org 127.0.0.2 shop \"\" \"2030-03-31 02:30 Europe/Oslo\" FULL")
        .fails_with("does not exist in Europe/Oslo");
    assert_eq!(env.sql("select count(*) from snapshot_definition"), "4");

    // --from is read in the display zone too.
    env.sql("insert into backup_catalog (snapshot_id, backup_server_id, pgsql_node_id, dbname, backup_code, started, finished, execution_status, execution_method)
             values (1, 1, 1, 'shop', 'FULL', '2030-01-01 20:00Z', '2030-01-01 20:00Z', 'SUCCEEDED', 'MANUAL')");
    // 20:00 UTC is 01:30 on the 2nd in Kolkata: --from 2030-01-02 (midnight there) includes it.
    let rows = env.json("show_backup_catalog all all all all all --from 2030-01-02");
    assert_eq!(
        rows["backup_catalog"].as_array().unwrap().len(),
        1,
        "{rows}"
    );
    let rows = env.json("show_backup_catalog all all all all all --from \"2030-01-02 02:00\"");
    assert_eq!(
        rows["backup_catalog"].as_array().unwrap().len(),
        0,
        "{rows}"
    );
}

#[test]
fn a_zone_that_is_not_an_iana_name_is_refused() {
    let env = Env::new();
    with_zone(&env, "Europe/Olso");
    let r = env.cmd("show_backup_servers");
    let r = r.fails_with("[shell] timezone in ");
    assert!(
        r.stderr
            .contains("\"Europe/Olso\" is not an IANA time zone name")
            && r.stderr.contains("HINT: use a name such as Europe/Oslo"),
        "{}",
        r.stderr
    );
    with_zone(&env, "UTC");
    env.cmd("set timezone=europe/oslo")
        .fails_with("did you mean Europe/Oslo?");
    let out = env.cmd("set timezone=Europe/Oslo").ok().stdout;
    assert!(out.contains("timezone = Europe/Oslo"), "{out}");
}

#[test]
fn shortcuts_work_with_dash_c() {
    let env = Env::new();
    for quit in ["\\q", "EOF", "quit"] {
        let r = env.cmd(quit).ok();
        assert_eq!(r.stdout, "", "{quit}");
    }
    let r = env.cmd("\\h").ok();
    assert!(
        r.stdout.contains("Commands (help <command>"),
        "{}",
        r.stdout
    );
    let r = env.cmd("\\h show_jobs_queue").ok();
    assert!(
        r.stdout.contains("Usage:\n  show_jobs_queue"),
        "{}",
        r.stdout
    );
    let r = env.cmd("help shortcuts").ok();
    assert!(
        r.stdout.contains("\\q, quit, exit") && r.stdout.contains("a second Tab lists"),
        "{}",
        r.stdout
    );
    let r = env.cmd("help support").ok();
    assert!(
        r.stdout.contains("When reporting a problem"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_shell_command_given_as_arguments_names_the_dash_c_line() {
    let home = tempfile::tempdir().unwrap();
    let out = common::command(home.path())
        .args(["-o", "json", "show_backup_catalog", "all", "my db"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("[ERROR] show_backup_catalog is a shell command: give it with -C")
            && err.contains("pgbackman -o json -C \"show_backup_catalog all 'my db'\""),
        "{err}"
    );
    // Anything else keeps clap's own message.
    let out = common::command(home.path()).arg("nosuch").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unrecognized subcommand"), "{err}");
}
