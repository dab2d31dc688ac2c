//! Each round's look at an archived node (issue 11, part M): one sample of its replication state
//! (`pgbackman_db::replication::sample_node`, within the `[nodes]` deadlines) gives both the
//! archive's state report (slot, node position) and the replication sample the catalog keeps for
//! `show_replication_status` and turns into WAL alerts; the receiver's own state goes with it.
//! What was seen last is kept here for `/metrics`, which must answer with the catalog down.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use pgbackman_db::replication::NodeSample;
use pgbackman_db::wal::ArchiveState;
use pgbackman_db::wal_agent::AgentWalArchive;
use serde_json::{Value as Json, json};

use super::receiver::{self, Status};

/// What /metrics exports of one archive.
#[derive(Debug, Clone, Default)]
struct Seen {
    node: String,
    state: String,
    stalls: u64,
    last_stored_at: Option<DateTime<Utc>>,
    archived_end: Option<u64>,
    node_lsn: Option<u64>,
    slot_retained: Option<i64>,
    slot_safe: Option<i64>,
    holes: Option<i32>,
    open_conditions: Option<i32>,
}

static SEEN: Mutex<BTreeMap<i64, Seen>> = Mutex::new(BTreeMap::new());

fn seen() -> std::sync::MutexGuard<'static, BTreeMap<i64, Seen>> {
    SEEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Archives no longer run here leave /metrics.
pub fn retain(ids: &[i64]) {
    seen().retain(|k, _| ids.contains(k));
}

fn lsn(s: Option<&str>) -> Option<u64> {
    s.and_then(|l| l.parse::<pgbackman_core::wal::Lsn>().ok())
        .map(|l| l.0)
}

/// The receiver's part of the sample.
fn receiver_json(st: &Status) -> Json {
    json!({
        "state": if st.state.is_empty() { "starting" } else { st.state.as_str() },
        "error": st.error,
        "down_since": st.down_since,
        "stalls": st.stalls,
        "last_stall_at": st.last_stall_at,
        "last_stored_at": st.last_stored_at,
        "archived_end_lsn": st.archived_end.map(|l| l.to_string()),
    })
}

/// Samples the node of archive `a` and reports the archive state and the sample.
pub async fn report(ctx: &crate::job::Ctx, a: &AgentWalArchive, status: &receiver::Shared) {
    let lbl = receiver::label(a);
    let st = status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let sampled_at = Utc::now();
    let sample: Result<NodeSample, String> = match receiver::node_config(ctx, a) {
        Ok(c) => pgbackman_db::replication::sample_node(c, &lbl)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("{e:#}")),
    };
    let slot = sample.as_ref().ok().and_then(|s| s.slot(&a.slot_name));
    let int = |v: Option<&Json>, k: &str| {
        v.and_then(|s| s.get(k))
            .and_then(|x| x.as_f64())
            .map(|f| f as i64)
    };
    let s = ArchiveState {
        receiver_state: if st.state.is_empty() {
            "starting".into()
        } else {
            st.state.clone()
        },
        receiver_error: st.error.clone(),
        slot_wal_status: match (&sample, slot) {
            (Ok(_), Some(s)) => s
                .get("wal_status")
                .and_then(Json::as_str)
                .map(str::to_string),
            (Ok(_), None) => Some("missing".into()),
            (Err(_), _) => None,
        },
        slot_retained_bytes: int(slot, "retained_bytes"),
        node_lsn: sample.as_ref().ok().and_then(NodeSample::node_lsn),
    };
    let mut seen_now = Seen {
        node: lbl.clone(),
        state: s.receiver_state.clone(),
        stalls: st.stalls,
        last_stored_at: st.last_stored_at,
        archived_end: st.archived_end.map(|l| l.0),
        node_lsn: lsn(s.node_lsn.as_deref()),
        slot_retained: s.slot_retained_bytes,
        slot_safe: int(slot, "safe_wal_size"),
        ..Seen::default()
    };
    if let Err(e) = ctx
        .db(
            "report_wal_archive_state",
            ctx.catalog
                .report_wal_archive_state(ctx.server_id, a.archive_id, &s),
        )
        .await
    {
        tracing::debug!("WAL archive state not reported: {e}");
    }
    let (role, error, mut body) = match sample {
        Ok(n) => (Some(n.role), None, n.sample),
        Err(e) => (None, Some(e), json!({})),
    };
    body["receiver"] = receiver_json(&st);
    match ctx
        .db(
            "report_replication_sample",
            ctx.catalog.report_replication_sample(
                ctx.server_id,
                a.pgsql_node_id,
                sampled_at,
                role.as_deref(),
                error.as_deref(),
                &body,
            ),
        )
        .await
    {
        Ok((open, holes)) => {
            seen_now.open_conditions = Some(open);
            seen_now.holes = Some(holes);
        }
        Err(e) => {
            // Unreachable: the next round reports again. Refused: a bug worth seeing.
            if e.is_unreachable() {
                tracing::debug!("replication sample not reported: {e}");
            } else {
                tracing::warn!(
                    archive = a.archive_id,
                    "the catalog refused the replication sample of PgSQL node {lbl}: {e}"
                );
            }
            // Keep what the catalog said last (it is down, not changed).
            if let Some(old) = seen().get(&a.archive_id) {
                seen_now.open_conditions = old.open_conditions;
                seen_now.holes = old.holes;
            }
        }
    }
    seen().insert(a.archive_id, seen_now);
}

/// The archives' part of `/metrics` (Prometheus text).
pub fn metrics() -> String {
    let seen = seen();
    let mut out = String::new();
    type Get = fn(&Seen) -> Option<f64>;
    let series: [(&str, &str, &str, Get); 9] = [
        (
            "pgbackman_agent_wal_receiver_up",
            "gauge",
            "1 when the WAL receiver of the archive is streaming.",
            |s| Some(f64::from(u8::from(s.state == "streaming"))),
        ),
        (
            "pgbackman_agent_wal_receiver_stalls_total",
            "counter",
            "Stalls of the WAL receiver detected (and restarted) since the agent started.",
            |s| Some(s.stalls as f64),
        ),
        (
            "pgbackman_agent_wal_lag_bytes",
            "gauge",
            "The node's WAL position minus the end of the newest segment this agent archived since it started.",
            |s| Some(s.node_lsn?.saturating_sub(s.archived_end?) as f64),
        ),
        (
            "pgbackman_agent_wal_last_segment_timestamp_seconds",
            "gauge",
            "When the last WAL file was stored (Unix time).",
            |s| Some(s.last_stored_at?.timestamp() as f64),
        ),
        (
            "pgbackman_agent_wal_archived_end_lsn",
            "gauge",
            "End of the newest full segment this agent archived since it started, as a byte position.",
            |s| Some(s.archived_end? as f64),
        ),
        (
            "pgbackman_agent_wal_holes",
            "gauge",
            "Holes (missing segments between present ones) in this server's ledger copy, as the catalog said last.",
            |s| Some(f64::from(s.holes?)),
        ),
        (
            "pgbackman_agent_wal_open_conditions",
            "gauge",
            "Open WAL conditions (alerted, not cleared) of the node, as the catalog said last.",
            |s| Some(f64::from(s.open_conditions?)),
        ),
        (
            "pgbackman_agent_wal_slot_retained_bytes",
            "gauge",
            "WAL the archive's replication slot holds on the node.",
            |s| Some(s.slot_retained? as f64),
        ),
        (
            "pgbackman_agent_wal_slot_safe_wal_size_bytes",
            "gauge",
            "WAL that can still be written before the slot is lost (absent: unlimited).",
            |s| Some(s.slot_safe? as f64),
        ),
    ];
    for (name, kind, help, f) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (id, s) in seen.iter() {
            if let Some(v) = f(s) {
                let _ = writeln!(
                    out,
                    "{name}{{archive=\"{id}\",node=\"{}\"}} {v}",
                    escape(&s.node)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP pgbackman_agent_wal_receiver_state The WAL receiver's state (1 for the current one).\n\
         # TYPE pgbackman_agent_wal_receiver_state gauge"
    );
    for (id, s) in seen.iter() {
        let _ = writeln!(
            out,
            "pgbackman_agent_wal_receiver_state{{archive=\"{id}\",node=\"{}\",state=\"{}\"}} 1",
            escape(&s.node),
            escape(&s.state)
        );
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
