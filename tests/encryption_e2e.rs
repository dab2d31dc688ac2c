//! Encryption at rest end to end (issue 13): the real agent and shell with a registered age key
//! and an escrow key. A definition with encryption=KEY is backed up by the agent to its disk
//! and to a bucket of a real S3 server (SeaweedFS): every data object is an age file readable
//! by `age -d` with either identity, no row value is on the backup host, the catalog records
//! the fingerprints (`show_backup_catalog --encrypted-with`), level 1 verifies without an
//! identity. A restore by an agent without an identity, or with the wrong one, fails before the
//! target changes; with `[agent.encryption] identity_files` it restores. The key cannot be
//! deleted while its sets exist. No identity appears in argv, logs, the catalog or the output.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use age::secrecy::ExposeSecret;
use common::Env;
use common::agent::{Agent, files_under, run_now, wait_for};
use pgbackman_store::s3::Limits;
use pgbackman_store::{Credentials, Location};
use pgbackman_testkit::S3Server;
use pgbackman_testkit::s3::{ACCESS_KEY, BUCKET, SECRET_KEY};

const ROW: &str = "okapi-93d2-row-value";

struct Key {
    recipient: String,
    secret: String,
    file: PathBuf,
}

fn key(dir: &Path, name: &str) -> Key {
    let id = age::x25519::Identity::generate();
    let file = dir.join(format!("{name}.txt"));
    let secret = id.to_string().expose_secret().to_string();
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    Key {
        recipient: id.to_public().to_string(),
        secret,
        file,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `age -d -i key file | zstd -d` with the age binary; the crate's decryptor when the binary
/// is missing (said on stderr).
fn age_decrypt(identity: &Path, file: &Path) -> Vec<u8> {
    match Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(file)
        .output()
    {
        Ok(o) => {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            o.stdout
        }
        Err(_) => {
            eprintln!("age binary not installed: decrypting with the age crate");
            let id = age::IdentityFile::from_file(identity.display().to_string())
                .unwrap()
                .into_identities()
                .unwrap();
            let d = age::Decryptor::new(std::fs::File::open(file).unwrap()).unwrap();
            let mut r = d
                .decrypt(id.iter().map(|i| i.as_ref() as &dyn age::Identity))
                .unwrap();
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut r, &mut out).unwrap();
            out
        }
    }
}

#[test]
fn encrypted_backups_to_disk_and_s3_restore_only_with_the_identity() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let env = Env::new();
    env.register_backup_servers(&["bs1"]);
    let node = env.start_node("127.0.0.2", "a");
    node.create_database("shop");
    node.psql(
        "shop",
        &format!("create table items as select g as id, '{ROW}-' || g as v from generate_series(1, 5000) g"),
    );
    let keydir = tempfile::tempdir().unwrap();
    let site = key(keydir.path(), "site");
    let vault = key(keydir.path(), "vault");
    let other = key(keydir.path(), "other");
    env.cmd(&format!("register_encryption_key site {}", site.recipient))
        .ok();
    env.cmd(&format!(
        "register_encryption_key vault {}",
        vault.recipient
    ))
    .ok();
    env.cmd("update_backup_server_config bs1.example.org encryption_escrow_key=vault")
        .ok();
    // encryption=site on the definition (positional, like the old flag).
    env.cmd(
        "register_backup_definition bs1.example.org 127.0.0.2 shop \"\" 0 3 '*' '*' '*' FULL site",
    )
    .ok();
    let mut agent = Agent::start(&env, "bs1.example.org", None);
    let bck = run_now(&env, &agent, 1);
    wait_for(
        &env,
        &format!(
            "select execution_status || ' ' || verification_level || ' ' || verification_state from backup_catalog where bck_id = {bck}"
        ),
        "SUCCEEDED 1 PASSED",
        60,
        &agent,
    );
    let fps = env.sql(&format!(
        "select array_to_string(encrypted_with, ',') from backup_catalog where bck_id = {bck}"
    ));
    let want = env.sql("select string_agg(fingerprint, ',' order by name) from encryption_key");
    assert_eq!(fps, want, "site, then the escrow key");
    let details = env.json(&format!("show_backup_details {bck}"));
    let enc = details["backup_details"][0]["encrypted_with"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        enc.starts_with("site (") && enc.contains(", vault ("),
        "{enc}"
    );
    let dir = PathBuf::from(env.sql(&format!(
        "select backup_dir from backup_catalog where bck_id = {bck}"
    )));
    // Nothing readable on the backup host: not in the set, not in staging, not in the state.
    for f in files_under(agent.dir.path()) {
        let data = std::fs::read(&f).unwrap();
        assert!(!contains(&data, ROW.as_bytes()), "{}", f.display());
    }
    let dump = age_decrypt(&site.file, &dir.join("dump.pgdump.zst"));
    let archive = zstd::decode_all(&dump[..]).unwrap();
    assert!(archive.starts_with(b"PGDMP") && contains(&archive, ROW.as_bytes()));
    assert_eq!(age_decrypt(&vault.file, &dir.join("dump.pgdump.zst")), dump);

    // What each key opens.
    let listed = |k: &str| {
        env.json(&format!("show_backup_catalog --encrypted-with {k}"))["backup_catalog"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!((listed("site"), listed("vault")), (1, 1));
    env.cmd("delete_encryption_key site")
        .fails_with("still protects 1 backup sets");
    env.cmd(&format!(
        "register_encryption_key other {}",
        other.recipient
    ))
    .ok();
    assert_eq!(listed("other"), 0);

    // A snapshot of the encrypted database is encrypted like its definition.
    env.cmd("register_snapshot_definition bs1.example.org 127.0.0.2 shop \"\" now FULL \"2 days\" \"\" snap1")
        .ok();
    wait_for(
        &env,
        "select execution_status || ' ' || array_to_string(encrypted_with, ',') from backup_catalog where snapshot_id is not null",
        &format!("SUCCEEDED {want}"),
        60,
        &agent,
    );
    let snap_dir = PathBuf::from(
        env.sql("select backup_dir from backup_catalog where snapshot_id is not null"),
    );
    assert!(
        std::fs::read(snap_dir.join("dump.pgdump.zst"))
            .unwrap()
            .starts_with(b"age-encryption.org/v1\n")
    );
    env.sql("delete from backup_catalog where snapshot_id is not null");

    // verify_backup (level 1) needs no identity.
    env.cmd(&format!("verify_backup {bck}")).ok();
    wait_for(&env, "select count(*) from verification", "1", 60, &agent);
    assert_eq!(
        env.sql("select level || ' ' || state from verification"),
        "1 PASSED"
    );

    // A restore by an agent that holds no identity: refused before the target changes.
    let target = pgbackman_testkit::TestCluster::start_on(&["127.0.0.3"]);
    env.cmd(&format!(
        "register_pgsql_node 127.0.0.3 \"\" {} postgres RUNNING b",
        target.port()
    ))
    .ok();
    let restore = |n: i64, agent: &Agent, opts: &str| {
        env.cmd(&format!(
            "register_restore_definition now {bck} 127.0.0.3 shop \"\" --jobs 1 {opts}"
        ))
        .ok();
        wait_for(
            &env,
            &format!("select count(*) from restore_catalog where restore_def = {n}"),
            "1",
            60,
            agent,
        );
        env.sql(&format!(
            "select execution_status || ' ' || coalesce(error_step, '') || ': ' || coalesce(error_message, '') from restore_catalog where restore_def = {n}"
        ))
    };
    let r = restore(1, &agent, "");
    assert!(
        r.starts_with("ERROR identity: ") && r.contains("--identity FILE"),
        "{r}"
    );
    let dbs = || {
        target.psql(
            "postgres",
            "select string_agg(datname, ',' order by datname) from pg_database",
        )
    };
    let before = dbs();
    assert!(!before.contains("shop"));
    // A drill by that agent: refused the same way (level 3 needs the identity).
    env.cmd("update_backup_server_config bs1.example.org drill_node=127.0.0.3")
        .ok();
    env.cmd(&format!("run_restore_drill {bck}")).ok();
    wait_for(&env, "select count(*) from verification", "2", 60, &agent);
    let drill = env.sql(
        "select kind || ' ' || state || ': ' || coalesce(error_message, '') from verification order by verification_id desc limit 1",
    );
    assert!(
        drill.starts_with("DRILL ")
            && !drill.contains("PASSED")
            && drill.contains("--identity FILE"),
        "{drill}"
    );

    // The wrong identity, named by the restore (`--identity`, a path on the agent's host):
    // refused the same way. A key pasted instead of a path is refused by the shell.
    env.cmd(&format!(
        "register_restore_definition now {bck} 127.0.0.3 shop \"\" --identity {}",
        other.secret
    ))
    .fails_with("not the key itself");
    let r = restore(2, &agent, &format!("--identity {}", other.file.display()));
    assert!(
        r.starts_with("ERROR identity: ") && r.contains("none matches its recipients"),
        "{r}"
    );
    assert_eq!(dbs(), before);

    // The escrow identity, configured on this agent: restored.
    agent.stop();
    let mut agent = Agent::start_with(
        &env,
        "bs1.example.org",
        None,
        &format!(
            "[agent.encryption]\nidentity_files = [\"{}\", \"{}\"]\n",
            other.file.display(),
            vault.file.display()
        ),
    );
    let r = restore(3, &agent, "");
    assert!(r.starts_with("SUCCEEDED"), "{r}");
    // And a drill by the agent that holds the escrow identity passes (level 3).
    env.cmd(&format!("run_restore_drill {bck}")).ok();
    wait_for(&env, "select count(*) from verification", "3", 60, &agent);
    assert_eq!(
        env.sql("select kind || ' ' || level || ' ' || state from verification order by verification_id desc limit 1"),
        "DRILL 3 PASSED",
        "{}",
        env.sql("select error_message from verification order by verification_id desc limit 1")
    );
    assert_eq!(
        target.psql(
            "shop",
            "select count(*) || ' ' || md5(string_agg(v, ',' order by id)) from items"
        ),
        node.psql(
            "shop",
            "select count(*) || ' ' || md5(string_agg(v, ',' order by id)) from items"
        )
    );

    // The same definition into an S3 bucket: objects are age files too.
    let s3 = S3Server::start();
    let s3keys = keydir.path().join("s3.keys");
    std::fs::write(
        &s3keys,
        format!("access_key_id={ACCESS_KEY}\nsecret_access_key={SECRET_KEY}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&s3keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.cmd(&format!(
        "register_repository offsite s3 --endpoint {} --bucket {BUCKET} --credentials-file {}",
        s3.endpoint(),
        s3keys.display()
    ))
    .ok();
    env.cmd("set_definition_repository 1 offsite").ok();
    let bck2 = run_now(&env, &agent, 1);
    wait_for(
        &env,
        &format!(
            "select execution_status || ' ' || verification_state from backup_catalog where bck_id = {bck2}"
        ),
        "SUCCEEDED PASSED",
        60,
        &agent,
    );
    let prefix = env.sql(&format!(
        "select object_prefix from backup_catalog where bck_id = {bck2}"
    ));
    let store = pgbackman_store::open(
        "offsite",
        &Location::S3 {
            endpoint: s3.endpoint(),
            bucket: BUCKET.into(),
            prefix: String::new(),
            region: "us-east-1".into(),
        },
        Some(Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: None,
        }),
        &Limits::default(),
    )
    .unwrap();
    let read = |name: &str| {
        let mut bytes = Vec::new();
        let mut st = rt
            .block_on(store.read(&format!("{prefix}/{name}")))
            .unwrap();
        while let Some(c) = rt.block_on(futures_util::StreamExt::next(&mut st)) {
            bytes.extend_from_slice(&c.unwrap());
        }
        bytes
    };
    for f in ["dump.pgdump.zst", "roles.sql", "database.sql"] {
        let b = read(f);
        assert!(b.starts_with(b"age-encryption.org/v1\n"), "{f}");
        let plain = keydir.path().join(format!("s3-{f}"));
        std::fs::write(&plain, &b).unwrap();
        let d = age_decrypt(&site.file, &plain);
        if f == "dump.pgdump.zst" {
            assert!(contains(&zstd::decode_all(&d[..]).unwrap(), ROW.as_bytes()));
        } else {
            assert!(contains(&d, b"shop") || contains(&d, b"postgres"), "{f}");
        }
    }
    let manifest: serde_json::Value = serde_json::from_slice(&read("manifest.json")).unwrap();
    assert_eq!(manifest["format"], 2);
    assert_eq!(manifest["encryption"]["scheme"], "age");
    assert_eq!((listed("site"), listed("vault")), (2, 2));

    // The encrypted set in the bucket restores and drills like the local one: its objects are
    // decrypted as they stream (the escrow identity of this agent), checked by their sha256.
    env.cmd(&format!(
        "register_restore_definition now {bck2} 127.0.0.3 shop_s3 \"\" --jobs 1"
    ))
    .ok();
    wait_for(
        &env,
        "select count(*) from restore_catalog where restore_def = 4",
        "1",
        60,
        &agent,
    );
    assert_eq!(
        env.sql("select execution_status || ' ' || coalesce(error_message, '') from restore_catalog where restore_def = 4"),
        "SUCCEEDED"
    );
    assert_eq!(
        target.psql(
            "shop_s3",
            "select count(*) || ' ' || md5(string_agg(v, ',' order by id)) from items"
        ),
        node.psql(
            "shop",
            "select count(*) || ' ' || md5(string_agg(v, ',' order by id)) from items"
        )
    );
    let drills = env.sql("select count(*) from verification");
    env.cmd(&format!("run_restore_drill {bck2}")).ok();
    wait_for(
        &env,
        "select count(*) from verification",
        &(drills.parse::<i64>().unwrap() + 1).to_string(),
        60,
        &agent,
    );
    assert_eq!(
        env.sql("select kind || ' ' || level || ' ' || state from verification order by verification_id desc limit 1"),
        "DRILL 3 PASSED",
        "{}",
        env.sql("select error_message from verification order by verification_id desc limit 1")
    );

    // No identity anywhere: argv, log, catalog, shell output.
    let pid = agent.pid();
    let argv = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .into_owned();
    let log = agent.log();
    for k in [&site, &vault, &other] {
        assert!(!argv.contains(&k.secret) && !log.contains(&k.secret));
        assert_eq!(
            env.sql(&format!(
                "select count(*) from (select to_jsonb(t)::text x from encryption_key t
                   union all select to_jsonb(a)::text from audit_log a
                   union all select to_jsonb(b)::text from backup_catalog b
                   union all select to_jsonb(r)::text from restore_catalog r
                   union all select to_jsonb(j)::text from job j) r where x like '%{}%'",
                k.secret
            )),
            "0"
        );
        for line in [
            "show_encryption_keys",
            "show_backup_catalog",
            &format!("show_backup_details {bck}"),
            "show_restore_catalog",
        ] {
            let out = env.cmd(line).ok();
            assert!(
                !out.stdout.contains(&k.secret) && !out.stderr.contains(&k.secret),
                "{line}"
            );
        }
    }
    agent.stop();
}
