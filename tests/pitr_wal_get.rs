//! `pgbackman-agent wal-get` keeps restore_command's exit codes (issue 12, F10): 0 restored from
//! the plan; 1 when the catalog's ledger confirms the file is not in the archive; 126 (after its
//! retries) for a damaged stored file, and for a file the plan does not list while the catalog
//! is unreachable. Nothing is ever left at %p unless it is exactly what was archived.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Env;
use sha2::Digest;

fn wal_get(config: &Path, plan: &Path, name: &str, dest: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgbackman-agent"))
        .arg("wal-get")
        .arg("--config")
        .arg(config)
        .arg("--plan")
        .arg(plan)
        .arg(name)
        .arg(dest)
        .output()
        .unwrap()
}

fn write_plan(dir: &Path, content: &[u8]) -> std::path::PathBuf {
    let stored = dir.join("000000010000000000000003.zst");
    std::fs::write(&stored, zstd::encode_all(content, 3).unwrap()).unwrap();
    let plan = serde_json::json!({
        "server_id": 1, "node_id": 1, "system_identifier": "7412345678901234567", "config": null,
        "files": [{"name": "000000010000000000000003", "kind": "full", "timeline": 1,
                   "size": content.len(), "sha256": sha2::Sha256::digest(content).iter().map(|b| format!("{b:02x}")).collect::<String>(),
                   "codec": "zstd", "stored_path": stored.display().to_string()}]
    });
    let p = dir.join("wal-get.json");
    std::fs::write(&p, plan.to_string()).unwrap();
    p
}

#[test]
fn wal_get_exit_codes() {
    let env = Env::new();
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("agent.toml");
    std::fs::write(
        &config,
        format!("[catalog]\nconninfo = \"{}\"\n", env.conninfo()),
    )
    .unwrap();
    let content = vec![42u8; 1 << 20];
    let plan = write_plan(d.path(), &content);
    let pg_wal = d.path().join("pg_wal");
    std::fs::create_dir(&pg_wal).unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");

    // In the plan: restored, byte for byte.
    let o = wal_get(&config, &plan, "000000010000000000000003", &dest);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    std::fs::remove_file(&dest).unwrap();

    // Not in the plan, and the ledger has no such file: the end of the archive (1). Both the
    // next segment and a history file of a timeline that never existed.
    for name in ["000000010000000000000004", "00000002.history"] {
        let o = wal_get(&config, &plan, name, &dest);
        assert_eq!(o.status.code(), Some(1), "{name}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("not in the archive"),
            "{o:?}"
        );
        assert!(!dest.exists());
    }

    // A damaged stored file: retried, then 126, and nothing at %p.
    let stored = d.path().join("000000010000000000000003.zst");
    let mut bytes = std::fs::read(&stored).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&stored, &bytes).unwrap();
    let o = wal_get(&config, &plan, "000000010000000000000003", &dest);
    assert_eq!(o.status.code(), Some(126), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("attempt 3 of 3"), "{err}");
    assert!(err.contains("000000010000000000000003"), "{err}");
    assert!(!dest.exists());
    assert_eq!(
        std::fs::read_dir(&pg_wal).unwrap().count(),
        0,
        "no temporary file left"
    );

    // Not in the plan and the catalog unreachable: never "not found" (126).
    env.catalog.stop();
    let o = wal_get(&config, &plan, "000000010000000000000004", &dest);
    assert_eq!(o.status.code(), Some(126), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("asking the catalog"),
        "{o:?}"
    );

    // No plan at all (the clone's directory gone): 126.
    let o = wal_get(
        &config,
        &d.path().join("nope.json"),
        "000000010000000000000003",
        &dest,
    );
    assert_eq!(o.status.code(), Some(126), "{o:?}");
}
