//! The catalog side of push WAL archives (V17): registered without a slot, a credential stored
//! as a hash and replaced only when asked, the refusals a DBA meets (with a HINT), the agent's
//! list carrying the intake and the hash, and deletion without a slot to drop.

mod common;

use pgbackman_db::Audit;
use pgbackman_db::wal::NewWalArchive;

fn audit() -> Audit {
    Audit {
        os_user: "tester".into(),
        command: "test".into(),
    }
}

#[tokio::test]
async fn a_push_archive_has_no_slot_and_a_hashed_credential_replaced_only_when_asked() {
    let (_pg, owner, cat) = common::catalog(
            "select api.register_backup_server('bs1', 'example.org', 'RUNNING', '');
             insert into pgsql_node (hostname, domain_name, status) values ('pg1', 'example.org', 'RUNNING'),
                                                                          ('pg2', 'example.org', 'RUNNING');",
    )
    .await;
    let new = |node: &str, intake: &str, slot: Option<&str>| NewWalArchive {
        server: "bs1.example.org".into(),
        node: node.into(),
        slot: slot.map(str::to_string),
        intake: Some(intake.into()),
        ..Default::default()
    };
    for (a, want) in [
        (
            new("pg1.example.org", "push", Some("s1")),
            "--intake push takes no --slot",
        ),
        (new("pg1.example.org", "pull", None), "is not an intake"),
    ] {
        let e = cat
            .register_wal_archive(&audit(), &a)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("HINT"), "{e}");
    }
    let (id, slot) = cat
        .register_wal_archive(&audit(), &new("pg1.example.org", "push", None))
        .await
        .unwrap();
    assert_eq!(slot, "");
    cat.register_wal_archive(&audit(), &new("pg2.example.org", "stream", None))
        .await
        .unwrap();
    let h1 = "a".repeat(64);
    let h2 = "b".repeat(64);
    assert_eq!(
        cat.wal_push_credential_state("bs1.example.org", "pg1.example.org")
            .await
            .unwrap(),
        Some(("push".into(), None))
    );
    assert_eq!(
        cat.set_wal_push_credential(&audit(), "bs1.example.org", "pg1.example.org", &h1, false)
            .await
            .unwrap(),
        id
    );
    let e = cat
        .set_wal_push_credential(&audit(), "bs1.example.org", "pg1.example.org", &h2, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("already has a credential") && e.contains("HINT"),
        "{e}"
    );
    cat.set_wal_push_credential(&audit(), "bs1.example.org", "pg1.example.org", &h2, true)
        .await
        .unwrap();
    for (node, hash, want) in [
        ("pg2.example.org", h1.as_str(), "not by wal-push"),
        ("pg1.example.org", "secret", "SHA-256"),
    ] {
        let e = cat
            .set_wal_push_credential(&audit(), "bs1.example.org", node, hash, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
    }
    let list = cat.agent_wal_archives(1).await.unwrap();
    let push = list.iter().find(|a| a.archive_id == id).unwrap();
    assert_eq!(
        (push.intake.as_str(), push.slot_name.as_str()),
        ("push", "")
    );
    assert_eq!(push.push_token_sha256.as_deref(), Some(h2.as_str()));
    assert!(
        list.iter()
            .any(|a| a.intake == "stream" && a.slot_name == "pgbackman_bs1")
    );
    // Deleted at once: no slot to drop.
    cat.delete_wal_archive(&audit(), "bs1.example.org", "pg1.example.org")
        .await
        .unwrap();
    let st = owner
        .query_one(
            "select status from wal_archive where archive_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(st.get::<_, String>(0), "DELETED");
    assert!(
        cat.agent_wal_archives(1)
            .await
            .unwrap()
            .iter()
            .all(|a| a.archive_id != id)
    );
}
