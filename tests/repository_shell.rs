//! The repository commands through the real `pgbackman` binary (`-C`): register local and S3
//! repositories, list them, point a server and a definition at one, change and delete them, and
//! the refusals (bad input, in use, sets inside). No key is ever an argument, so none can reach
//! the catalog or the output; a URL carrying one is refused.

mod common;
use common::Env;

#[test]
fn repository_commands() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    env.sql("insert into pgsql_node (hostname, domain_name, status) values ('pg1', 'example.org', 'RUNNING')");

    let out = env
        .cmd("register_repository archive local /srv/pgbackman-archive")
        .ok();
    assert!(
        out.stdout
            .contains("[DONE] Repository archive registered as RepoID 1."),
        "{}",
        out.stdout
    );
    let out = env
        .cmd("register_repository offsite s3 --endpoint http://127.0.0.1:8333 --bucket pgbackman-test --prefix site1")
        .ok();
    assert!(
        out.stdout.contains("RepoID 2") && out.stdout.contains("AWS_ACCESS_KEY_ID"),
        "{}",
        out.stdout
    );
    env.cmd("register_repository offsite s3 --endpoint http://127.0.0.1:8333 --bucket other")
        .fails_with("repository \"offsite\" already exists");
    env.cmd("register_repository x s3 --bucket b")
        .fails_with("needs --endpoint URL and --bucket NAME");
    env.cmd("register_repository x s3 --endpoint https://AKIAKEY:secretkey@s3.example.org --bucket bucket1")
        .fails_with("is not an http(s) URL");
    env.cmd("register_repository x local relative/dir")
        .fails_with("is not an absolute directory");
    env.cmd("register_repository x nfs /mnt")
        .fails_with("repository kind \"nfs\" is not known");

    let j = env.json("show_repositories");
    let list = j["repositories"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{j}");
    assert_eq!(list[0]["name"], "archive");
    assert_eq!(list[0]["location"], "/srv/pgbackman-archive");
    assert_eq!(
        list[1]["location"],
        "http://127.0.0.1:8333/pgbackman-test/site1"
    );
    assert_eq!(list[1]["credentials"], "agent environment");
    let table = env.cmd("show_repositories").ok().stdout;
    assert!(table.contains("offsite") && table.contains("s3"), "{table}");

    env.cmd(
        "update_repository offsite --credentials-file /etc/pgbackman/s3.keys --region eu-west-1",
    )
    .ok();
    let j = env.json("show_repositories");
    assert_eq!(
        j["repositories"][1]["credentials"],
        "file /etc/pgbackman/s3.keys"
    );
    assert_eq!(j["repositories"][1]["region"], "eu-west-1");
    env.cmd("update_repository offsite")
        .fails_with("nothing to change");
    env.cmd("update_repository nosuch --region eu-west-1")
        .fails_with("repository \"nosuch\" does not exist");

    // A server's primary and a definition's repository.
    env.cmd("set_primary_repository bs1.example.org offsite")
        .ok();
    env.cmd("delete_repository offsite")
        .fails_with("still in use");
    env.sql(
        "insert into backup_definition (backup_server_id, pgsql_node_id, dbname) select 1, node_id, 'db1' from pgsql_node",
    );
    env.cmd("set_definition_repository 1 archive").ok();
    env.cmd("set_definition_repository 99 archive")
        .fails_with("backup definition 99 does not exist");
    let j = env.json("show_repositories");
    assert_eq!(j["repositories"][0]["definitions"], 1, "{j}");
    assert_eq!(j["repositories"][1]["primary_of"], "bs1.example.org", "{j}");
    env.cmd("set_definition_repository 1 default").ok();
    env.cmd("set_primary_repository bs1.example.org local").ok();
    env.cmd("delete_repository offsite").ok();
    env.cmd("delete_repository archive").ok();
    assert_eq!(env.sql("select count(*) from repository"), "0");

    let help = env.cmd("help register_repository").ok().stdout;
    assert!(help.contains("--credentials-file"), "{help}");
}
