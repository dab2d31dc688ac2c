//! Encrypted sets (crate::crypt) against real clusters: every object that holds data or
//! secrets is written as an age file to the key and the escrow key, no plaintext reaches the
//! backup host's disk, `age -d` alone decrypts a dump, level 1 verifies without an identity,
//! and a restore reads the set with either identity while a wrong or missing one is refused
//! before the target changes.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use age::secrecy::ExposeSecret;
use common::{assert_ok, backup_ok, conn, restore, spec};
use pgbackman_core::model::BackupCode;
use pgbackman_dump::crypt::{SetEncryption, SetRecipient};
use pgbackman_dump::verify::{VerifyState, verify_levels_with};
use pgbackman_dump::{BackupSpec, Status, read_manifest};
use pgbackman_testkit::TestCluster;

/// A row value that must never be readable on the backup host.
const SECRET: &str = "zebra-7c1f-confidential-row";

struct Key {
    recipient: SetRecipient,
    identity_file: PathBuf,
}

fn key(dir: &Path, name: &str) -> Key {
    let id = age::x25519::Identity::generate();
    let identity_file = dir.join(format!("{name}.key"));
    std::fs::write(
        &identity_file,
        format!(
            "# created: test\n# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        ),
    )
    .unwrap();
    Key {
        recipient: SetRecipient {
            name: name.into(),
            recipient: id.to_public().to_string(),
            fingerprint: format!("{:016x}", name.len() as u64 * 0x1111),
        },
        identity_file,
    }
}

fn source() -> TestCluster {
    let pg = TestCluster::start();
    pg.create_database("shop");
    pg.psql(
        "postgres",
        "create role shop_owner login password 'role-pass-1234'; alter database shop owner to shop_owner; \
         alter database shop set work_mem = '7MB'",
    );
    pg.psql(
        "shop",
        &format!(
            "create table t (id int primary key, v text); alter table t owner to shop_owner; \
             insert into t select g, '{SECRET}-' || g from generate_series(1, 2000) g"
        ),
    );
    pg
}

fn rows(pg: &TestCluster, db: &str) -> String {
    pg.psql(
        db,
        "select count(*) || ':' || md5(string_agg(v, ',' order by id)) || ':' || pg_get_userbyid((select relowner from pg_class where relname = 't')) from t",
    )
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `age -d -i IDENTITY FILE` with the age binary (the operator's way); None when it is not
/// installed (.ci/install-test-deps installs it).
fn age_binary_decrypt(identity: &Path, file: &Path) -> Option<Vec<u8>> {
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "age -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}

fn encrypted_spec(
    pg: &TestCluster,
    root: &Path,
    job: i64,
    code: BackupCode,
    keys: &[&Key],
) -> BackupSpec {
    BackupSpec {
        encryption: Some(SetEncryption {
            recipients: keys.iter().map(|k| k.recipient.clone()).collect(),
        }),
        ..spec(pg, root, job, code, "shop")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_set_is_opaque_on_disk_and_restores_with_either_identity() {
    let root = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let site = key(keys.path(), "site");
    let escrow = key(keys.path(), "escrow");
    let stranger = key(keys.path(), "stranger");
    let pg = source();

    // Control: a plain set holds the row values and the role's password hash readable.
    let plain = spec(&pg, root.path(), 1, BackupCode::Full, "shop");
    backup_ok(&plain).await;
    let plain_dump = std::fs::read(plain.final_dir.join("dump.pgdump.zst")).unwrap();
    let decoded = zstd::decode_all(&plain_dump[..]).unwrap();
    assert!(contains(&decoded, SECRET.as_bytes()));
    assert!(contains(
        &std::fs::read(plain.final_dir.join("roles.sql")).unwrap(),
        b"SCRAM-SHA-256"
    ));

    let s = encrypted_spec(&pg, root.path(), 2, BackupCode::Full, &[&site, &escrow]);
    let o = backup_ok(&s).await;
    let set = s.final_dir.clone();
    let v = o.verification.clone().unwrap();
    assert_eq!((v.level, v.state), (1, VerifyState::Passed), "{v:?}");

    let m = read_manifest(&set).unwrap();
    assert_eq!(m.format, 2);
    let e = m.encryption.clone().unwrap();
    assert_eq!(e.scheme, "age");
    let mut enc_files = e.files.clone();
    enc_files.sort();
    assert_eq!(enc_files, ["database.sql", "dump.pgdump.zst", "roles.sql"]);
    assert_eq!(
        e.recipients
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["site", "escrow"]
    );
    // No plaintext on the backup host: the encrypted files are age files, and neither a row
    // value nor the password hash nor a statement is anywhere in the set.
    for f in files_under(&set) {
        let data = std::fs::read(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!contains(&data, SECRET.as_bytes()), "{name}");
        assert!(!contains(&data, b"SCRAM-SHA-256"), "{name}");
        assert!(!contains(&data, b"role-pass-1234"), "{name}");
        if enc_files.contains(&name) {
            assert!(data.starts_with(b"age-encryption.org/v1\n"), "{name}");
            assert!(
                !contains(&data, b"CREATE ROLE") && !contains(&data, b"work_mem"),
                "{name}"
            );
        }
    }
    // The staging area holds nothing either.
    assert!(files_under(&root.path().join("staging")).is_empty());

    // The operator's way, without pgbackman: age -d, then zstd -d, gives a pg_dump archive.
    let dump = set.join("dump.pgdump.zst");
    let by_crate = {
        let ids =
            pgbackman_dump::crypt::Identities::load(std::slice::from_ref(&site.identity_file))
                .unwrap();
        let mut out = Vec::new();
        ids.open(&dump).unwrap().read_to_end(&mut out).unwrap();
        out
    };
    match age_binary_decrypt(&escrow.identity_file, &dump) {
        Some(by_age) => {
            eprintln!("decrypted with the age binary");
            assert_eq!(by_age, by_crate);
        }
        None => eprintln!("age binary not installed: decrypted with the age crate only"),
    }
    let archive = zstd::decode_all(&by_crate[..]).unwrap();
    assert!(archive.starts_with(b"PGDMP"));
    assert!(contains(&archive, SECRET.as_bytes()));
    if let Some(roles) = age_binary_decrypt(&site.identity_file, &set.join("roles.sql")) {
        assert!(
            contains(&roles, b"shop_owner"),
            "{}",
            String::from_utf8_lossy(&roles)
        );
    }

    // Restores: none without an identity, none with a stranger's, and neither touches the
    // target; with the site key or the escrow key they restore the same rows.
    let target = TestCluster::start();
    let roles_before = target.psql(
        "postgres",
        "select string_agg(rolname, ',' order by rolname) from pg_roles",
    );
    let mut r = common::rspec(&set, conn(&target), root.path(), 10, "shop");
    let o = restore(&r).await;
    let Status::Failed { step, message, .. } = &o.status else {
        panic!("{o:#?}")
    };
    assert_eq!(step, "identity");
    assert!(
        message.contains("site (") && message.contains("escrow ("),
        "{message}"
    );
    assert!(message.contains("--identity FILE"), "{message}");

    r.job_id = 11;
    r.identity_files = vec![stranger.identity_file.clone()];
    let o = restore(&r).await;
    let Status::Failed { step, message, .. } = &o.status else {
        panic!("{o:#?}")
    };
    assert_eq!(step, "identity");
    assert!(message.contains("none matches its recipients"), "{message}");
    assert!(!message.contains("AGE-SECRET-KEY"), "{message}");
    assert_eq!(
        target.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'shop'"
        ),
        "0"
    );
    assert_eq!(
        target.psql(
            "postgres",
            "select string_agg(rolname, ',' order by rolname) from pg_roles"
        ),
        roles_before
    );

    r.job_id = 12;
    r.identity_files = vec![stranger.identity_file.clone(), site.identity_file.clone()];
    let o = restore(&r).await;
    assert_ok(&o);
    assert_eq!(rows(&target, "shop"), rows(&pg, "shop"));
    assert_eq!(
        target.psql("postgres", "select array_to_string(setconfig, ',') from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase where d.datname = 'shop'"),
        "work_mem=7MB"
    );

    let mut r = common::rspec(&set, conn(&target), root.path(), 13, "shop_escrow");
    r.identity_files = vec![escrow.identity_file.clone()];
    let o = restore(&r).await;
    assert_ok(&o);
    assert_eq!(rows(&target, "shop_escrow"), rows(&pg, "shop"));
    // The restore staged no plaintext either (the decompressed archive, if any, is removed).
    assert!(files_under(&root.path().join("staging")).is_empty());

    // Verification: level 1 without an identity, level 2 with one; a stranger's fails level 2.
    let cancel = pgbackman_dump::CancellationToken::new();
    let bin = common::bin_dir();
    let v = verify_levels_with(&set, &bin, None, &[], &cancel)
        .await
        .unwrap();
    assert_eq!((v.level, v.state), (1, VerifyState::Passed));
    let v = verify_levels_with(
        &set,
        &bin,
        None,
        std::slice::from_ref(&escrow.identity_file),
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!((v.level, v.state), (2, VerifyState::Passed), "{v:?}");
    assert!(v.toc_entries.unwrap() > 0);
    let v = verify_levels_with(
        &set,
        &bin,
        None,
        std::slice::from_ref(&stranger.identity_file),
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!((v.level, v.state), (2, VerifyState::Failed), "{v:?}");
    assert!(v.error.unwrap().contains("none matches its recipients"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_cluster_set_restores_onto_an_empty_cluster() {
    let root = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let site = key(keys.path(), "site");
    let pg = source();
    let s = encrypted_spec(&pg, root.path(), 3, BackupCode::Cluster, &[&site]);
    backup_ok(&s).await;
    let m = read_manifest(&s.final_dir).unwrap();
    assert_eq!(m.encryption.unwrap().files, ["cluster.sql.zst"]);
    let data = std::fs::read(s.final_dir.join("cluster.sql.zst")).unwrap();
    assert!(data.starts_with(b"age-encryption.org/v1\n"));

    let empty = TestCluster::start();
    let mut r = common::rspec(&s.final_dir, conn(&empty), root.path(), 30, "");
    r.identity_files = vec![site.identity_file.clone()];
    let o = restore(&r).await;
    assert_ok(&o);
    assert_eq!(rows(&empty, "shop"), rows(&pg, "shop"));
}

#[test]
fn an_age_file_written_by_the_age_binary_is_read_by_pgbackman() {
    // Interoperability the other way round: the standard format both ways.
    let keys = tempfile::tempdir().unwrap();
    let k = key(keys.path(), "site");
    let plain = keys.path().join("plain");
    std::fs::write(&plain, b"hello from age").unwrap();
    let sealed = keys.path().join("plain.age");
    let Ok(mut child) = Command::new("age")
        .arg("-r")
        .arg(&k.recipient.recipient)
        .arg("-o")
        .arg(&sealed)
        .stdin(Stdio::piped())
        .spawn()
    else {
        eprintln!("age binary not installed: skipped");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from age")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let ids = pgbackman_dump::crypt::Identities::load(&[k.identity_file]).unwrap();
    let mut out = Vec::new();
    ids.open(&sealed).unwrap().read_to_end(&mut out).unwrap();
    assert_eq!(out, b"hello from age");
}
