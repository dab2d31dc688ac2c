//! The encryption-key commands through the real `pgbackman` binary (`-C`): register age public
//! keys (parsed: a bad key or a pasted identity is refused, the identity never echoed), list
//! them, definitions with encryption=KEY / true (the server's key) / false and what the agent
//! gets for each (`api.definition_recipients`, with the escrow key), and the refusals (no
//! server key, key in use, unknown key).

mod common;
use age::secrecy::ExposeSecret;
use common::Env;

fn key() -> (String, String) {
    let id = age::x25519::Identity::generate();
    (
        id.to_public().to_string(),
        id.to_string().expose_secret().to_string(),
    )
}

fn register_def(env: &Env, db: &str, encryption: &str, key: &str) -> String {
    env.sql(&format!(
        "select api.register_backup_definition('1', '1', '{db}', null, null, null, null, null, 'FULL', {encryption}, \
         null, null, null, null, '', {key})"
    ))
}

#[test]
fn encryption_key_commands() {
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    env.sql("insert into pgsql_node (hostname, domain_name, status) values ('pg1', 'example.org', 'RUNNING')");
    let (r1, id1) = key();
    let (r2, _) = key();
    let (r3, _) = key();

    let out = env
        .cmd(&format!("register_encryption_key site-2026 {r1}"))
        .ok();
    assert!(
        out.stdout
            .contains("[DONE] Encryption key site-2026 registered as KeyID 1"),
        "{}",
        out.stdout
    );
    env.cmd(&format!(
        "register_encryption_key vault {r2} --remarks offline"
    ))
    .ok();
    env.cmd(&format!("register_encryption_key again {r1}"))
        .fails_with("already exists");
    let mut bad = r3.clone();
    bad.replace_range(10..11, if &r3[10..11] == "q" { "p" } else { "q" });
    env.cmd(&format!("register_encryption_key bad {bad}"))
        .fails_with("is not an age X25519 public key");
    // A pasted identity: refused, and never shown back.
    let run = env.cmd(&format!("register_encryption_key oops {id1}"));
    let run = run.fails_with("identity (a private key)");
    assert!(
        !run.stdout.contains(&id1) && !run.stderr.contains(&id1),
        "{}{}",
        run.stdout,
        run.stderr
    );
    // The catalog refuses one too (a client other than the shell).
    let e = env
        .catalog
        .cluster()
        .psql(
            "pgbackman",
            &format!("select api.register_encryption_key('x', '{id1}', '')"),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("age identity") && !e.contains(&id1), "{e}");

    let j = env.json("show_encryption_keys");
    let keys = j["encryption_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{j}");
    assert_eq!(keys[0]["name"], "site-2026");
    assert_eq!(keys[0]["recipient"], r1.as_str());
    let fp1 = keys[0]["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fp1.len(), 16);
    assert_eq!(
        fp1,
        env.sql(&format!("select api.encryption_fingerprint('{r1}')"))
    );
    // No identity anywhere in the catalog.
    assert_eq!(
        env.sql("select count(*) from encryption_key where recipient !~ '^age1'"),
        "0"
    );

    // encryption=true needs a server key.
    let e = env
        .catalog
        .cluster()
        .psql(
            "pgbackman",
            "select api.register_backup_definition('1', '1', 'db0', null, null, null, null, null, 'FULL', true, null, null, null, null, '')",
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("needs an encryption key on backup server"),
        "{e}"
    );
    env.cmd("update_backup_server_config 1 encryption_key=nosuch")
        .fails_with("is not a registered encryption key");
    env.cmd("update_backup_server_config 1 encryption_key=site-2026 encryption_escrow_key=vault")
        .ok();
    let d_true = register_def(&env, "db1", "true", "null");
    let d_key = register_def(&env, "db2", "null", "'vault'");
    let d_plain = register_def(&env, "db3", "false", "null");
    let recipients = |d: &str| {
        env.sql(&format!(
            "select coalesce((select string_agg(x ->> 'name', ',') from jsonb_array_elements(api.definition_recipients({d})) x), 'plain')"
        ))
    };
    assert_eq!(recipients(&d_true), "site-2026,vault");
    assert_eq!(recipients(&d_key), "vault", "escrow equal to the key: once");
    assert_eq!(recipients(&d_plain), "plain");
    let defs = env.json("show_backup_definitions");
    let enc: Vec<String> = defs["backup_definitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["encryption"].as_str().unwrap().to_string())
        .collect();
    assert!(enc.contains(&"true (server key)".to_string()), "{enc:?}");
    assert!(enc.contains(&"vault".to_string()), "{enc:?}");

    // A node default naming a key; an unknown one is refused.
    env.cmd("update_pgsql_node_config 1 encryption=vault").ok();
    env.cmd("update_pgsql_node_config 1 encryption=nosuch")
        .fails_with("neither true, false nor a registered encryption key");
    let d_node = register_def(&env, "db4", "null", "null");
    assert_eq!(recipients(&d_node), "vault");

    env.cmd(&format!("set_definition_encryption {d_plain} site-2026"))
        .ok();
    assert_eq!(recipients(&d_plain), "site-2026,vault");
    env.cmd(&format!("set_definition_encryption {d_plain} false"))
        .ok();
    assert_eq!(recipients(&d_plain), "plain");

    // In use: refused, naming the users.
    env.cmd("delete_encryption_key vault")
        .fails_with("is still in use");
    // A set that only this key reads.
    env.cmd("update_pgsql_node_config 1 encryption=false").ok();
    env.cmd(&format!("set_definition_encryption {d_key} true"))
        .ok();
    env.cmd("update_backup_server_config 1 encryption_escrow_key=")
        .ok();
    env.sql(&format!(
        "insert into job (kind, backup_server_id, pgsql_node_id, def_id, state) values ('BACKUP', 1, 1, {d_key}, 'SUCCEEDED');
         insert into backup_catalog (job_id, def_id, backup_server_id, pgsql_node_id, dbname, backup_code, started, finished,
                                     execution_status, execution_method, encrypted_with)
         select max(job_id), {d_key}, 1, 1, 'db2', 'FULL', now(), now(), 'SUCCEEDED', 'MANUAL', array[(select fingerprint from encryption_key where name = 'vault')]
           from job"
    ));
    env.cmd("delete_encryption_key vault")
        .fails_with("still protects 1 backup sets");
    let j = env.json("show_backup_catalog --encrypted-with vault");
    assert_eq!(j["backup_catalog"].as_array().unwrap().len(), 1, "{j}");
    let j = env.json("show_backup_catalog --encrypted-with site-2026");
    assert_eq!(j["backup_catalog"].as_array().unwrap().len(), 0, "{j}");
    let j = env.json(&format!("show_backup_catalog --encrypted-with {fp1}"));
    assert_eq!(j["backup_catalog"].as_array().unwrap().len(), 0, "{j}");
    env.cmd("show_backup_catalog --encrypted-with nosuch")
        .fails_with("encryption key \"nosuch\" does not exist");
    env.sql("delete from backup_catalog");
    env.cmd(&format!("set_definition_encryption {d_node} false"))
        .ok();
    env.cmd("delete_encryption_key vault").ok();
    let j = env.json("show_encryption_keys");
    assert_eq!(j["encryption_keys"].as_array().unwrap().len(), 1, "{j}");
}
