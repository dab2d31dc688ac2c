//! The agent's heartbeat and the catalog configuration it runs with (`sql/25_agents.sql`), and
//! the warning the shell prints when it queues a job for a server whose agent is not seen.

use crate::catalog::Catalog;
use crate::error::DbError;

/// What an agent tells the catalog at each heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    pub server_id: i64,
    pub agent: &'a str,
    pub version: &'a str,
    /// online / degraded / offline, as the agent's /healthz says.
    pub health: &'a str,
    pub spooled: i32,
    /// IANA name of the zone its schedules fire in.
    pub time_zone: &'a str,
    /// `{"parameter": {"value": ..., "source": "catalog" | "agent file" | "default"}}`.
    pub config: &'a serde_json::Value,
    pub started: chrono::DateTime<chrono::Utc>,
}

impl Catalog {
    /// The backup-server configuration values the agent uses, as the catalog has them now.
    pub async fn agent_config(&self, server_id: i64) -> Result<Vec<(String, String)>, DbError> {
        let rows = self
            .client()
            .await?
            .query(
                "select parameter, value from api.agent_config($1)",
                &[&server_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
            .collect())
    }

    /// Records the heartbeat; returns the FQDNs of the servers whose silent agent it found and
    /// raised an AGENT_NOT_SEEN alert for.
    pub async fn agent_heartbeat(&self, h: &Heartbeat<'_>) -> Result<Vec<String>, DbError> {
        let rows = self
            .client()
            .await?
            .query(
                "select * from api.agent_heartbeat($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &h.server_id,
                    &h.agent,
                    &h.version,
                    &h.health,
                    &h.spooled,
                    &h.time_zone,
                    h.config,
                    &h.started,
                ],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Why the job will wait (its server's agent is not seen), or None.
    pub async fn job_agent_warning(&self, job_id: i64) -> Result<Option<String>, DbError> {
        Ok(self
            .client()
            .await?
            .query_one("select api.job_agent_warning($1)", &[&job_id])
            .await?
            .get(0))
    }

    /// The same for a backup server (SrvID or FQDN).
    pub async fn server_agent_warning(&self, server: &str) -> Result<Option<String>, DbError> {
        let server_id = self.server_id(server).await?;
        Ok(self
            .client()
            .await?
            .query_one("select api.agent_warning($1)", &[&server_id])
            .await?
            .get(0))
    }
}

impl Catalog {
    /// The zone a server's schedules fire in (its agent's), or "agent zone unknown".
    pub async fn agent_zone(&self, server: &str) -> Result<String, DbError> {
        let id = self.server_id(server).await?;
        Ok(self
            .client()
            .await?
            .query_one("select api.agent_zone($1)", &[&id])
            .await?
            .get(0))
    }
}
