//! Repositories in the catalog (issue 13): registered, listed, changed and deleted through
//! `sql/87_repositories.sql`, with the refusals a DBA meets (bad input, duplicates, a location
//! that would lose its sets, a repository still in use); the agent's view of them.

mod common;

use pgbackman_db::repository::{NewRepository, RepositoryChange};
use pgbackman_db::{Audit, Catalog, DbError};
use pgbackman_testkit::TestCluster;

struct Env {
    _pg: TestCluster,
    owner: tokio_postgres::Client,
    cat: Catalog,
}

async fn env() -> Env {
    let (pg, owner, cat) = common::catalog(
            "select api.register_backup_server('bs1', 'example.org', 'RUNNING', '');
             insert into pgsql_node (hostname, domain_name, status) values ('pg1', 'example.org', 'RUNNING');",
    )
    .await;
    Env {
        _pg: pg,
        owner,
        cat,
    }
}

fn audit() -> Audit {
    Audit {
        os_user: "tester".into(),
        command: "test".into(),
    }
}

fn s3(name: &str, bucket: &str, prefix: &str) -> NewRepository {
    NewRepository {
        name: name.into(),
        kind: "s3".into(),
        endpoint: Some("http://127.0.0.1:8333/".into()),
        bucket: Some(bucket.into()),
        prefix: Some(prefix.into()),
        ..Default::default()
    }
}

/// The message, detail and hint of a refusal, in one string.
fn refusal(e: DbError) -> String {
    let s = e.to_string();
    assert!(
        s.contains("HINT") || s.contains("hint") || s.contains('\n'),
        "{s}"
    );
    s
}

#[tokio::test]
async fn register_show_update_delete() {
    let e = env().await;
    let a = audit();
    let local = e
        .cat
        .register_repository(
            &a,
            &NewRepository {
                name: "archive".into(),
                kind: "local".into(),
                path: Some("/srv/archive/".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let remote = e
        .cat
        .register_repository(&a, &s3("offsite", "pgbackman-test", "site1"))
        .await
        .unwrap();
    assert!(remote > local);

    let rows = e.cat.show_repositories().await.unwrap();
    let text = format!("{rows:?}");
    assert!(text.contains("/srv/archive"), "{text}");
    assert!(
        text.contains("http://127.0.0.1:8333/pgbackman-test/site1"),
        "{text}"
    );
    assert!(text.contains("agent environment"), "{text}");

    // Refusals: every one names what is wrong and what to do, and changes nothing.
    for (bad, want) in [
        (s3("offsite", "other-bucket", ""), "already exists"),
        (
            s3("again", "pgbackman-test", "site1"),
            "another repository already stores",
        ),
        (s3("bad", "Bad_Bucket", ""), "bucket name"),
        (s3("bad", "ok-bucket", "/lead"), "not a key prefix"),
        (
            NewRepository {
                endpoint: Some("ftp://x".into()),
                ..s3("bad", "ok-bucket", "")
            },
            "not an http(s) URL",
        ),
        (
            NewRepository {
                endpoint: Some("https://key:secret@s3.example.org".into()),
                ..s3("bad", "ok-bucket", "")
            },
            "not an http(s) URL",
        ),
        (
            NewRepository {
                name: "rel".into(),
                kind: "local".into(),
                path: Some("srv/x".into()),
                ..Default::default()
            },
            "not an absolute directory",
        ),
        (
            NewRepository {
                name: "mixed".into(),
                kind: "local".into(),
                path: Some("/srv/x".into()),
                bucket: Some("b".into()),
                ..Default::default()
            },
            "takes a path only",
        ),
        (
            NewRepository {
                kind: "ftp".into(),
                ..s3("k", "ok-bucket", "")
            },
            "kind",
        ),
    ] {
        let err = refusal(e.cat.register_repository(&a, &bad).await.unwrap_err());
        assert!(err.contains(want), "{want}: {err}");
    }
    let n: i64 = e
        .owner
        .query_one("select count(*) from repository", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    // Update: endpoint, region and credentials file move freely while empty.
    e.cat
        .update_repository(
            &a,
            "OFFSITE",
            &RepositoryChange {
                region: Some("eu-west-1".into()),
                credentials_file: Some("/etc/pgbackman/s3.keys".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let row = e
        .owner
        .query_one(
            "select region, credentials_file from repository where repository_id = $1",
            &[&remote],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "eu-west-1");
    assert_eq!(row.get::<_, String>(1), "/etc/pgbackman/s3.keys");
    let err = refusal(
        e.cat
            .update_repository(
                &a,
                "archive",
                &RepositoryChange {
                    bucket: Some("b".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err(),
    );
    assert!(err.contains("local"), "{err}");

    // In use: the server's primary, then a set in the repository.
    e.cat
        .set_primary_repository(&a, "bs1.example.org", "offsite")
        .await
        .unwrap();
    let err = refusal(e.cat.delete_repository(&a, "offsite").await.unwrap_err());
    assert!(
        err.contains("still in use") && err.contains("bs1.example.org"),
        "{err}"
    );
    let server: i64 = e
        .owner
        .query_one("select server_id from backup_server", &[])
        .await
        .unwrap()
        .get(0);
    let agent = e.cat.agent_repositories(server).await.unwrap();
    assert_eq!(agent.len(), 1);
    assert!(agent[0].is_primary && agent[0].kind == "s3" && agent[0].prefix == "site1");

    e.owner
        .batch_execute(&format!(
            "insert into backup_definition (backup_server_id, pgsql_node_id, dbname)
             select {server}, node_id, 'db1' from pgsql_node;
             insert into backup_catalog (def_id, backup_server_id, pgsql_node_id, dbname, backup_code, started, finished,
                                         execution_status, execution_method, repository_id, object_prefix, total_size)
             select def_id, {server}, pgsql_node_id, 'db1', 'FULL', now(), now(), 'SUCCEEDED', 'CRON', {remote}, 'sets/x', 1000
               from backup_definition"
        ))
        .await
        .unwrap();
    e.cat
        .set_primary_repository(&a, "bs1.example.org", "local")
        .await
        .unwrap();
    let err = refusal(e.cat.delete_repository(&a, "offsite").await.unwrap_err());
    assert!(err.contains("still holds 1 backup sets"), "{err}");
    let err = refusal(
        e.cat
            .update_repository(
                &a,
                "offsite",
                &RepositoryChange {
                    prefix: Some("site2".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err(),
    );
    assert!(err.contains("location cannot change"), "{err}");
    // The endpoint may move (the same store under a new name).
    e.cat
        .update_repository(
            &a,
            "offsite",
            &RepositoryChange {
                endpoint: Some("https://s3.example.org".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    e.cat.delete_repository(&a, "archive").await.unwrap();
    let err = refusal(e.cat.delete_repository(&a, "archive").await.unwrap_err());
    assert!(err.contains("does not exist"), "{err}");
    // Every change is in the audit log.
    let audited: i64 = e
        .owner
        .query_one(
            "select count(*) from audit_log where table_name = 'repository'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(audited >= 5, "{audited}");
}
