//! WAL replay control on a standby PgSQL node (`pause_recovery_on_standby`): short admin
//! sessions with the node deadlines (`[nodes]`: bounded connect, each statement bounded and
//! also the session's `statement_timeout`). The agent decides when; this only does it.

use crate::error::DbError;

/// What a pause request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// The node is a primary (or was promoted): nothing to pause.
    NotInRecovery,
    /// Replay was already paused by someone else: left as it is, and not ours to resume.
    AlreadyPaused,
    /// We paused replay; resume it with [`resume_replay`].
    Paused,
}

/// What a resume request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The node left recovery meanwhile (promoted): nothing to resume.
    NotInRecovery,
    Resumed,
}

/// Pauses WAL replay on the node if it is in recovery and replay runs. `label` names the node
/// in errors; a role without the right gets the GRANT to run.
pub async fn pause_replay(
    config: impl Into<pgbackman_config::ConnConfig>,
    label: &str,
) -> Result<Pause, DbError> {
    const WHAT: &str = "pausing WAL replay";
    let (config, client, task) = crate::node::admin_connect(config, label).await?;
    let work = async {
        let r = client
            .query_one(
                "select pg_is_in_recovery(), pg_is_in_recovery() and pg_is_wal_replay_paused()",
                &[],
            )
            .await?;
        let (in_recovery, paused): (bool, bool) = (r.get(0), r.get(1));
        if !in_recovery {
            return Ok(Pause::NotInRecovery);
        }
        if paused {
            return Ok(Pause::AlreadyPaused);
        }
        client.execute("select pg_wal_replay_pause()", &[]).await?;
        Ok(Pause::Paused)
    };
    let r = crate::tls::within_statement_limit(&config, &client, WHAT, work).await;
    let result = outcome(&config, label, WHAT, r);
    crate::node::finish(client, task).await;
    result
}

/// Resumes WAL replay on the node (a no-op if it is not paused); see [`pause_replay`].
pub async fn resume_replay(
    config: impl Into<pgbackman_config::ConnConfig>,
    label: &str,
) -> Result<Resume, DbError> {
    const WHAT: &str = "resuming WAL replay";
    let (config, client, task) = crate::node::admin_connect(config, label).await?;
    let work = async {
        let r = client.query_one("select pg_is_in_recovery()", &[]).await?;
        if !r.get::<_, bool>(0) {
            return Ok(Resume::NotInRecovery);
        }
        client.execute("select pg_wal_replay_resume()", &[]).await?;
        Ok(Resume::Resumed)
    };
    let r = crate::tls::within_statement_limit(&config, &client, WHAT, work).await;
    let result = outcome(&config, label, WHAT, r);
    crate::node::finish(client, task).await;
    result
}

/// The result of a bounded call: a refusal for lack of privilege says what to grant.
fn outcome<T>(
    config: &pgbackman_config::ConnConfig,
    label: &str,
    what: &str,
    r: Result<Result<T, tokio_postgres::Error>, String>,
) -> Result<T, DbError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e))
            if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            let user = config.get_user().unwrap_or("the admin user");
            Err(DbError::Invalid(format!(
                "role \"{user}\" may not control WAL replay on standby node {label} ({what}: {})\n\
                 HINT: run on the primary (the grant replicates): GRANT EXECUTE ON FUNCTION \
                 pg_catalog.pg_wal_replay_pause(), pg_catalog.pg_wal_replay_resume() TO \"{user}\"; \
                 or make it a superuser, or set pause_recovery_on_standby=false with update_pgsql_node_config",
                e.as_db_error()
                    .map(|d| d.message())
                    .unwrap_or("permission denied")
            )))
        }
        Ok(Err(e)) => Err(DbError::client(format!("{what} on PgSQL node {label}"), e)),
        Err(reason) => Err(DbError::Client {
            context: format!("PgSQL node {label}"),
            reason,
        }),
    }
}
