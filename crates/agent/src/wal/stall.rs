//! The receiver's stall watchdog. pg_receivewal has no receive timeout (`--status-interval`
//! only sends) and TCP keepalives are answered by the node's kernel even when its processes are
//! SIGSTOPped or a middlebox stopped forwarding: the stream then freezes for ever, unseen, while
//! the slot makes the node's pg_wal grow. Progress is what pg_receivewal writes into
//! `incoming/` (a new file, or the open `.partial` segment changing). After `[nodes]
//! stall_timeout` without progress the node is asked for its position, within the node
//! deadlines: no answer, or an answer past the segment being received, is a stall (an idle node
//! that answers from the same segment is not).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use pgbackman_core::wal::SegmentSize;
use pgbackman_db::wal_agent::AgentWalArchive;

use crate::job::Ctx;

/// What pg_receivewal has written last: the newest segment file's name, its size and mtime.
type Marker = Option<(String, u64, Option<SystemTime>)>;

pub struct Watch {
    after: Option<Duration>,
    seg_size: u64,
    marker: Marker,
    since: Instant,
}

impl Watch {
    pub fn new(t: &pgbackman_config::NodeTimeouts, seg_size: SegmentSize) -> Watch {
        Watch {
            after: t.stall.as_ref().map(|l| l.after),
            seg_size: u64::from(seg_size.bytes()),
            marker: None,
            since: Instant::now(),
        }
    }

    /// Some(why) when the stream is stalled.
    pub async fn check(
        &mut self,
        ctx: &Ctx,
        a: &AgentWalArchive,
        incoming: &Path,
    ) -> Option<String> {
        let after = self.after?;
        let m = marker(incoming);
        if m != self.marker {
            self.marker = m;
            self.since = Instant::now();
            return None;
        }
        let quiet = self.since.elapsed();
        if quiet < after {
            return None;
        }
        let lbl = super::receiver::label(a);
        let at = self.receiving_segno();
        let probe = async {
            let c = super::receiver::node_config(ctx, a)?;
            Ok::<_, anyhow::Error>(pgbackman_db::wal_node::slot_state(c, &lbl, &a.slot_name).await?)
        };
        // The node deadlines bound the probe; the outer limit only guards against a bug there.
        let t = &ctx.cfg.nodes;
        let limit = t.connect.after + t.statement.after + Duration::from_secs(5);
        let verdict = match tokio::time::timeout(limit, probe).await {
            Err(_) => Some(format!(
                "no WAL received for {} s and PgSQL node {lbl} did not answer within {} s",
                quiet.as_secs(),
                limit.as_secs()
            )),
            Ok(Err(e)) => Some(format!(
                "no WAL received for {} s and PgSQL node {lbl} did not answer: {e:#}",
                quiet.as_secs()
            )),
            Ok(Ok(s)) => {
                let node = s
                    .node_lsn
                    .as_deref()
                    .and_then(|l| l.parse::<pgbackman_core::wal::Lsn>().ok())
                    .map(|l| l.0 / self.seg_size);
                match (node, at) {
                    (Some(n), Some(r)) if n > r => Some(format!(
                        "no WAL received for {} s while PgSQL node {lbl} is at {} (segment {n}, the receiver at segment {r})",
                        quiet.as_secs(),
                        s.node_lsn.unwrap_or_default()
                    )),
                    _ => None,
                }
            }
        };
        if verdict.is_none() {
            // An idle node: look again after another stall_timeout.
            self.since = Instant::now();
        }
        verdict
    }

    /// The segment number of the newest segment file in incoming/.
    fn receiving_segno(&self) -> Option<u64> {
        let (name, _, _) = self.marker.as_ref()?;
        segno_of(name, self.seg_size)
    }
}

/// `TTTTTTTTXXXXXXXXYYYYYYYY[.partial]` → XLogSegNo.
fn segno_of(name: &str, seg_size: u64) -> Option<u64> {
    let hex = name.get(..24)?;
    let log = u64::from_str_radix(hex.get(8..16)?, 16).ok()?;
    let seg = u64::from_str_radix(hex.get(16..24)?, 16).ok()?;
    Some(log * (0x1_0000_0000 / seg_size) + seg)
}

fn marker(incoming: &Path) -> Marker {
    std::fs::read_dir(incoming)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.to_string();
            let hex = n.get(..24)?;
            let tail = &n[24..];
            (hex.bytes().all(|b| b.is_ascii_hexdigit()) && (tail.is_empty() || tail == ".partial"))
                .then_some((n, e))
        })
        .max_by(|x, y| x.0[8..24].cmp(&y.0[8..24]).then(x.0.cmp(&y.0)))
        .map(|(n, e)| {
            let md = e.metadata().ok();
            (
                n,
                md.as_ref().map_or(0, |m| m.len()),
                md.and_then(|m| m.modified().ok()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_numbers_of_names() {
        let s16 = 16 << 20;
        assert_eq!(segno_of("000000010000000000000003", s16), Some(3));
        assert_eq!(segno_of("000000020000000100000002.partial", s16), Some(258));
        assert_eq!(segno_of("00000002.history", s16), None);
    }

    #[test]
    fn the_marker_is_the_newest_segment_file() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(marker(d.path()), None);
        std::fs::write(d.path().join("000000010000000000000003"), b"x").unwrap();
        std::fs::write(d.path().join("000000010000000000000004.partial"), b"yy").unwrap();
        std::fs::write(d.path().join("00000002.history"), b"z").unwrap();
        let m = marker(d.path()).unwrap();
        assert_eq!(m.0, "000000010000000000000004.partial");
        assert_eq!(m.1, 2);
    }
}
