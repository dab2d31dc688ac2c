//! Catalog roles against a real cluster: what each group role may run, that no role but the
//! owner writes a table, that an agent acts only for its own backup server, and that the audit
//! log names the login role of a SECURITY DEFINER call.

use std::time::Duration;

use pgbackman_db::{Audit, Catalog, DbError, migrate, roles};
use pgbackman_testkit::TestCluster;

struct Env {
    pg: TestCluster,
    owner: tokio_postgres::Client,
}

/// A catalog with two backup servers (bs1, bs2), a node and a definition on each server, and
/// login roles: ro (readonly), op (operator), adm (admin), agent_a / agent_b (agents of bs1 / bs2).
async fn env() -> Env {
    let pg = TestCluster::start();
    pg.psql("postgres", "create database pgbackman");
    pg.psql(
        "postgres",
        "create role ro login; create role op login; create role adm login; create role agent_a login;
         create role agent_b login; create role nobody login",
    );
    let cfg: tokio_postgres::Config = pg.conninfo("pgbackman").parse().unwrap();
    let mut owner = pgbackman_db::connect_once(&cfg, "test catalog")
        .await
        .unwrap();
    migrate::init(&mut owner).await.unwrap();
    owner
        .batch_execute(
            "select api.register_backup_server('bs1', 'example.org', 'RUNNING', '');
             select api.register_backup_server('bs2', 'example.org', 'RUNNING', '');
             insert into pgsql_node (hostname, domain_name, status) values ('pg1', 'example.org', 'RUNNING');
             insert into backup_definition (backup_server_id, pgsql_node_id, dbname) values (1, 1, 'shop'), (2, 1, 'shop');",
        )
        .await
        .unwrap();
    for (role, level, server) in [
        ("ro", "readonly", None),
        ("op", "operator", None),
        ("adm", "admin", None),
        ("agent_a", "agent", Some("bs1.example.org")),
        ("agent_b", "agent", Some("bs2.example.org")),
    ] {
        let g = roles::grant(&owner, role, level, server).await.unwrap();
        assert_eq!(g, format!("pgbackman_{level}"));
    }
    Env { pg, owner }
}

impl Env {
    fn conninfo(&self, role: &str) -> String {
        self.pg
            .conninfo("pgbackman")
            .replace("user=postgres", &format!("user={role}"))
    }
    async fn catalog(&self, role: &str) -> Catalog {
        let cfg: tokio_postgres::Config = self.conninfo(role).parse().unwrap();
        Catalog::lazy_with_deadline(cfg, "test", role, Duration::from_secs(5)).unwrap()
    }
    async fn client(&self, role: &str) -> tokio_postgres::Client {
        let cfg: tokio_postgres::Config = self.conninfo(role).parse().unwrap();
        pgbackman_db::connect_once(&cfg, role).await.unwrap()
    }
}

fn audit() -> Audit {
    Audit {
        os_user: "alice".into(),
        command: "test".into(),
    }
}

fn denied(r: Result<impl std::fmt::Debug, DbError>) -> DbError {
    let e = r.expect_err("the call should be refused");
    assert_eq!(e.code(), Some("42501"), "{e}");
    e
}

#[tokio::test(flavor = "current_thread")]
async fn each_group_role_runs_its_commands_only() {
    let env = env().await;

    // readonly: the version check and every listing, nothing that changes anything.
    let ro = env.catalog("ro").await;
    ro.check_compatible().await.unwrap();
    assert_eq!(ro.show_backup_servers().await.unwrap().len(), 2);
    ro.show_backup_server_config("bs1.example.org")
        .await
        .unwrap();
    ro.show_jobs_queue(&None, true).await.unwrap();
    ro.show_audit_log(10).await.unwrap();
    let e = denied(
        ro.register_backup_server(
            &audit(),
            "bs3",
            Some("example.org"),
            Some("RUNNING"),
            Some(""),
        )
        .await,
    );
    let e = ro.explain_denied(e).await;
    let text = e.to_string();
    assert!(
        text.contains(
            "catalog role ro may not run register_backup_server: that takes pgbackman_admin"
        ),
        "{text}"
    );
    assert!(text.contains("pgbackman db grant ro admin"), "{text}");
    denied(ro.run_backup_definition_now(&audit(), 1).await);

    // operator: runs backups now and cancels them, but neither registers nor deletes.
    let op = env.catalog("op").await;
    let job = op.run_backup_definition_now(&audit(), 1).await.unwrap();
    op.cancel_job(&audit(), job).await.unwrap();
    assert_eq!(op.retry_alerts(&audit(), None).await.unwrap(), 0);
    denied(ro.retry_alerts(&audit(), None).await);
    let e = op
        .explain_denied(denied(
            op.delete_backup_definition_id(&audit(), 1, false).await,
        ))
        .await;
    assert!(
        e.to_string()
            .contains("may not run delete_backup_definition_id: that takes pgbackman_admin"),
        "{e}"
    );

    // admin: registers and deletes.
    let adm = env.catalog("adm").await;
    adm.register_backup_server(
        &audit(),
        "bs3",
        Some("example.org"),
        Some("RUNNING"),
        Some(""),
    )
    .await
    .unwrap();
    adm.delete_backup_server(&audit(), "bs3.example.org")
        .await
        .unwrap();

    // No role but the owner writes a table directly, not even admin.
    let c = env.client("adm").await;
    for sql in [
        "insert into backup_server (hostname, domain_name) values ('x', 'example.org')",
        "update job set state = 'QUEUED'",
        "delete from audit_log",
    ] {
        let e = c.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}"
        );
    }
    // An agent role runs no shell command.
    let a = env.catalog("agent_a").await;
    denied(a.run_backup_definition_now(&audit(), 1).await);
    denied(a.cancel_job(&audit(), job).await);

    // A role holding no catalog role is told what to grant, from the version check on.
    let nobody = env.catalog("nobody").await;
    let e = nobody.check_compatible().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("catalog role nobody may not read table refinery_schema_history"),
        "{e}"
    );
    assert!(
        e.to_string().contains("pgbackman db grant nobody readonly"),
        "{e}"
    );

    // The audit log names the login role (session_user), not the owner the function ran as,
    // next to the OS user.
    let row = env
        .owner
        .query_one(
            "select db_user, os_user from audit_log where table_name = 'backup_server' and object_id = '3' and operation = 'INSERT'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "adm");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("alice"));
    let shown = adm.show_audit_log(5).await.unwrap();
    assert!(format!("{shown:?}").contains("adm"), "{shown:?}");

    // Revoking takes the commands away again.
    assert_eq!(
        roles::revoke(&env.owner, "op", None).await.unwrap(),
        vec!["pgbackman_operator".to_string()]
    );
    let op = env.catalog("op").await;
    denied(op.run_backup_definition_now(&audit(), 1).await);
}

#[tokio::test(flavor = "current_thread")]
async fn an_agent_acts_for_its_own_backup_server_only() {
    let env = env().await;
    let lease = Duration::from_secs(60);
    let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let (a, b) = (env.catalog("agent_a").await, env.catalog("agent_b").await);
    a.check_compatible().await.unwrap();
    assert_eq!(a.agent_server_id("bs1.example.org").await.unwrap(), 1);
    assert_eq!(a.agent_definitions(1).await.unwrap().len(), 1);

    // Its own server: fire, claim, heartbeat and report as always.
    let (job_a, attempt) = a
        .record_scheduled_job(1, 1, at("2026-11-21T02:00:00Z"), "a", lease)
        .await
        .unwrap()
        .unwrap();
    assert!(!a.heartbeat(job_a, attempt, 0, lease).await.unwrap());

    // Server B's work, through every door: refused with 42501 and a hint.
    let (job_b, attempt_b) = b
        .record_scheduled_job(2, 2, at("2026-11-21T02:00:00Z"), "b", lease)
        .await
        .unwrap()
        .unwrap();
    let op = env.catalog("op").await;
    let queued_b = op.run_backup_definition_now(&audit(), 2).await.unwrap();
    let e = denied(a.claim_jobs(2, "a", lease, 10, 2, &["BACKUP"]).await);
    let text = e.to_string();
    assert!(
        text.contains("catalog role agent_a acts for backup server bs1.example.org only, not for bs2.example.org"),
        "{text}"
    );
    assert!(text.contains("HINT: "), "{text}");
    denied(
        a.record_scheduled_job(2, 2, at("2026-11-21T03:00:00Z"), "a", lease)
            .await,
    );
    denied(a.heartbeat(job_b, attempt_b, 0, lease).await);
    let cancelled = serde_json::json!({"status": "CANCELLED", "error_message": "cancelled"});
    denied(a.report_backup(job_b, attempt_b, &cancelled).await);
    denied(
        a.report_offline_backup(2, 2, at("2026-11-21T04:00:00Z"), "a", &cancelled)
            .await,
    );
    denied(a.overdue_candidates(2).await);
    // Nothing of B changed: its job is still B's, running, and its queued job unclaimed.
    let row = env
        .owner
        .query_one(
            "select (select state from job where job_id = $1), (select state from job where job_id = $2)",
            &[&job_b, &queued_b],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "RUNNING");
    assert_eq!(row.get::<_, String>(1), "QUEUED");
    // B claims its own.
    assert_eq!(
        b.claim_jobs(2, "b", lease, 10, 2, &["BACKUP"])
            .await
            .unwrap()
            .len(),
        1
    );

    // An agent role bound to no server is told how to bind it.
    roles::revoke(&env.owner, "agent_b", Some("agent"))
        .await
        .unwrap();
    env.owner
        .batch_execute("grant pgbackman_agent to agent_b")
        .await
        .unwrap();
    let e = denied(b.claim_jobs(2, "b", lease, 10, 2, &["BACKUP"]).await);
    assert!(
        e.to_string()
            .contains("catalog role agent_b is not bound to any backup server"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("pgbackman db grant agent_b agent --server"),
        "{e}"
    );

    // The owner still acts for every server (the agents of earlier installs log in as it).
    let owner = env.catalog("postgres").await;
    owner
        .claim_jobs(2, "o", lease, 10, 2, &["BACKUP"])
        .await
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn grant_refuses_what_it_cannot_do_with_a_hint() {
    let env = env().await;
    for (role, level, server, expect) in [
        ("ghost", "readonly", None, "role \"ghost\" does not exist"),
        ("ro", "superuser", None, "unknown catalog role level"),
        ("ro", "agent", None, "give it with --server"),
        (
            "ro",
            "agent",
            Some("bs9"),
            "backup server \"bs9\" is not registered",
        ),
        (
            "ro",
            "readonly",
            Some("bs1"),
            "--server applies to agent roles only",
        ),
    ] {
        let e = roles::grant(&env.owner, role, level, server)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(expect), "{e}");
        assert!(e.to_string().contains("HINT: "), "{e}");
    }
    let listed = roles::list(&env.owner).await.unwrap();
    assert!(
        listed.contains(&(
            "agent_a".to_string(),
            "pgbackman_agent".to_string(),
            "bs1.example.org".to_string()
        )),
        "{listed:?}"
    );
}

/// A function added to schema api without a place in the privilege lists stops the install,
/// naming it (so a new function is never left callable by nobody, or by everybody).
#[tokio::test(flavor = "current_thread")]
async fn an_unlisted_api_function_stops_the_install() {
    let env = env().await;
    let mut c = env.client("postgres").await;
    let tx = c.transaction().await.unwrap();
    for (name, body) in migrate::SQL_BUNDLE {
        if *name == "95_security.sql" {
            tx.batch_execute(
                "create function api.show_something_new() returns int language sql as 'select 1'",
            )
            .await
            .unwrap();
        }
        let r = tx.batch_execute(body).await;
        if *name == "95_security.sql" {
            let e = DbError::from(r.unwrap_err()).to_string();
            assert!(
                e.contains("api function(s) in no privilege list: show_something_new"),
                "{e}"
            );
            assert!(e.contains("sql/95_security.sql"), "{e}");
        } else {
            r.unwrap();
        }
    }
}

/// An owner that may not create roles still installs (and upgrades) a working catalog: the
/// group roles are skipped with a warning, and `db grant` says what to run.
#[tokio::test(flavor = "current_thread")]
async fn an_owner_without_createrole_installs_a_catalog_of_its_own() {
    let pg = TestCluster::start();
    pg.psql("postgres", "create role owner2 login");
    pg.psql("postgres", "create database pgbackman owner owner2");
    let cfg: tokio_postgres::Config = pg
        .conninfo("pgbackman")
        .replace("user=postgres", "user=owner2")
        .parse()
        .unwrap();
    let mut c = pgbackman_db::connect_once(&cfg, "owner2").await.unwrap();
    migrate::init(&mut c).await.unwrap();
    migrate::upgrade(&mut c).await.unwrap();
    c.batch_execute("select api.register_backup_server('bs1', 'example.org', 'RUNNING', '')")
        .await
        .unwrap();
    assert_eq!(
        pg.psql(
            "postgres",
            "select count(*) from pg_roles where rolname like 'pgbackman\\_%'"
        ),
        "0"
    );
    pg.psql("postgres", "create role ro login");
    let e = roles::grant(&c, "ro", "readonly", None).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("group role pgbackman_readonly does not exist"),
        "{e}"
    );
    assert!(e.to_string().contains("CREATEROLE"), "{e}");
}
