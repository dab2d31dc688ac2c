//! Timeline history files (`N.history`) and the questions a lineage answers.
//!
//! Semantics from PostgreSQL's `src/backend/access/transam/timeline.c`: each line is
//! `parentTLI <tab> switchpoint <tab> reason`; lines that are blank or start (after white
//! space) with `#` are ignored; the parent timelines must increase and be below the file's own
//! timeline (`readTimeLineHistory`). A parent's entry covers `[previous switch point, its own
//! switch point)` and the file's own timeline runs from the last switch point on; an LSN
//! equal to a switch point belongs to the newer timeline (`tliOfPointInHistory`).

use thiserror::Error;

use super::lsn::Lsn;
use super::names::WalFileName;
use super::segment::{RangeError, SegNo, SegmentRange, SegmentSize, Tli};

/// One timeline of a lineage and the LSNs it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineSpan {
    /// The timeline.
    pub tli: Tli,
    /// Where it starts on this lineage (`0/0` for the first one).
    pub begin: Lsn,
    /// Where the lineage switched away from it (`None`: the lineage's own timeline, open).
    pub end: Option<Lsn>,
}

/// The lineage of one timeline: its ancestors with their switch points, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistory {
    spans: Vec<TimelineSpan>,
}

/// A history file PostgreSQL would refuse, or a question it cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HistoryError {
    /// A line is not `parentTLI <tab> switchpoint [<tab> reason]`.
    #[error(
        "history file {file}, line {line}: {reason}; a history file is written by PostgreSQL at promotion: fetch it again from the node"
    )]
    Syntax {
        /// `0000000N.history`.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file's own timeline is 0.
    #[error("timeline 0 does not exist (timelines start at 1)")]
    TimelineZero,
    /// A requested timeline is not on this lineage.
    #[error(
        "timeline {tli} is not on the lineage of timeline {target} ({lineage}): choose a timeline of this lineage or the history of timeline {tli}"
    )]
    NotOnLineage {
        /// The requested one.
        tli: Tli,
        /// The lineage's own timeline.
        target: Tli,
        /// The timelines of the lineage, oldest first.
        lineage: String,
    },
    /// A range that ends before it starts.
    #[error(transparent)]
    Range(#[from] RangeError),
}

impl TimelineHistory {
    /// The lineage of a timeline without history file: timeline 1, or any timeline whose
    /// history is unknown (PostgreSQL then assumes no parents).
    pub fn root(tli: Tli) -> Result<TimelineHistory, HistoryError> {
        if tli == 0 {
            return Err(HistoryError::TimelineZero);
        }
        Ok(TimelineHistory {
            spans: vec![TimelineSpan {
                tli,
                begin: Lsn::INVALID,
                end: None,
            }],
        })
    }

    /// Parses the content of `0000000N.history` for timeline `tli` (bytes: the reason may be
    /// in any encoding; it is ignored, as PostgreSQL does).
    pub fn parse(tli: Tli, content: &[u8]) -> Result<TimelineHistory, HistoryError> {
        if tli == 0 {
            return Err(HistoryError::TimelineZero);
        }
        let file = format!("{tli:08X}.history");
        let mut spans: Vec<TimelineSpan> = Vec::new();
        let mut prev_end = Lsn::INVALID;
        let mut last_line = 0;
        for (i, raw) in content.split(|b| *b == b'\n').enumerate() {
            let syntax = |reason: String| HistoryError::Syntax {
                file: file.clone(),
                line: i + 1,
                reason,
            };
            let text = String::from_utf8_lossy(raw);
            let line = text.trim_start();
            if line.trim_end().is_empty() || line.starts_with('#') {
                continue;
            }
            // Fields are separated by tabs (PostgreSQL writes tabs; its sscanf also takes
            // spaces); the reason after the switch point is ignored.
            let mut fields = line.split(['\t', ' ', '\r']).filter(|f| !f.is_empty());
            let parent = fields.next().unwrap_or_default();
            let parent: Tli = parent
                .parse()
                .ok()
                .filter(|p: &Tli| *p > 0 && parent.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    syntax(format!(
                        "expected a numeric timeline ID, found {:?}",
                        parent.chars().take(20).collect::<String>()
                    ))
                })?;
            let switch = fields
                .next()
                .ok_or_else(|| syntax("expected a switch point LSN after the timeline".into()))?;
            let switch: Lsn = switch.parse().map_err(|e: super::lsn::LsnError| {
                syntax(format!("bad switch point: {}", e.reason))
            })?;
            if let Some(last) = spans.last() {
                if parent <= last.tli {
                    return Err(syntax(format!(
                        "timeline {parent} after timeline {}: timeline IDs must increase",
                        last.tli
                    )));
                }
                if switch < prev_end {
                    return Err(syntax(format!(
                        "switch point {switch} is before the previous one {prev_end}"
                    )));
                }
            }
            spans.push(TimelineSpan {
                tli: parent,
                begin: prev_end,
                end: Some(switch),
            });
            prev_end = switch;
            last_line = i + 1;
        }
        if let Some(last) = spans.last()
            && last.tli >= tli
        {
            return Err(HistoryError::Syntax {
                file,
                line: last_line,
                reason: format!(
                    "parent timeline {} is not below the file's own timeline {tli}",
                    last.tli
                ),
            });
        }
        spans.push(TimelineSpan {
            tli,
            begin: prev_end,
            end: None,
        });
        Ok(TimelineHistory { spans })
    }

    /// The lineage's own (newest) timeline.
    pub fn target(&self) -> Tli {
        self.spans.last().expect("never empty").tli
    }
    /// Every timeline of the lineage with its span, oldest first.
    pub fn spans(&self) -> &[TimelineSpan] {
        &self.spans
    }
    /// Whether `tli` is on this lineage.
    pub fn contains(&self, tli: Tli) -> bool {
        self.spans.iter().any(|s| s.tli == tli)
    }
    /// Where the lineage left `tli` (`tliSwitchPoint`): `Ok(None)` for the lineage's own
    /// timeline.
    pub fn switch_point(&self, tli: Tli) -> Result<Option<Lsn>, HistoryError> {
        self.span_of(tli).map(|s| s.end)
    }

    fn span_of(&self, tli: Tli) -> Result<&TimelineSpan, HistoryError> {
        self.spans
            .iter()
            .find(|s| s.tli == tli)
            .ok_or_else(|| HistoryError::NotOnLineage {
                tli,
                target: self.target(),
                lineage: self
                    .spans
                    .iter()
                    .map(|s| s.tli.to_string())
                    .collect::<Vec<_>>()
                    .join(" → "),
            })
    }

    /// The timeline WAL position `lsn` is on when following this lineage
    /// (`tliOfPointInHistory`): a switch point belongs to the newer timeline.
    pub fn timeline_of(&self, lsn: Lsn) -> Tli {
        self.spans
            .iter()
            .find(|s| s.begin <= lsn && s.end.is_none_or(|e| lsn < e))
            .map(|s| s.tli)
            // Spans are contiguous from 0/0 to open: the last one always matches.
            .unwrap_or_else(|| self.target())
    }

    /// The timeline whose file holds segment `segno` when recovery follows this lineage.
    ///
    /// PostgreSQL's `XLogFileReadAnyTLI` (src/backend/access/transam/xlogrecovery.c) tries
    /// the timelines newest first and skips one only when the segment is before the segment
    /// its begin LSN is in. So the segment holding a switch point, which exists on both the
    /// old and the new timeline, is read from the **new** one (it holds the old WAL up to the
    /// switch point and the new timeline's after it).
    pub fn timeline_of_segment(&self, segno: SegNo, size: SegmentSize) -> Tli {
        self.spans
            .iter()
            .rev()
            .find(|s| s.begin.is_invalid() || size.segment_of(s.begin) <= segno)
            .map(|s| s.tli)
            .unwrap_or_else(|| self.spans[0].tli)
    }

    /// The segment files recovery reads for the WAL from `start` to `end` along this lineage:
    /// one [`SegmentRange`] per timeline, in order. Includes the end LSN's segment, as
    /// [`SegmentSize::covering`] does; a switch point's segment is taken from the newer
    /// timeline (see [`timeline_of_segment`](Self::timeline_of_segment)).
    pub fn segments_for(
        &self,
        start: Lsn,
        end: Lsn,
        size: SegmentSize,
    ) -> Result<Vec<SegmentRange>, HistoryError> {
        let whole = size.covering(self.target(), start, end)?;
        let (first, last) = (*whole.segments.start(), *whole.segments.end());
        let mut out: Vec<SegmentRange> = Vec::new();
        // Walk the timelines oldest first; each takes the segments from where its file
        // is preferred (its begin segment, or the range's first) to before the next one's.
        let spans = &self.spans;
        for (i, s) in spans.iter().enumerate() {
            let from = if i == 0 {
                first
            } else {
                size.segment_of(s.begin).max(first)
            };
            let to = match spans.get(i + 1) {
                // The next timeline takes its begin segment; this one stops before it.
                Some(next) => match size.segment_of(next.begin).checked_sub(1) {
                    Some(t) => t.min(last),
                    None => continue,
                },
                None => last,
            };
            if from <= to {
                out.push(SegmentRange {
                    tli: s.tli,
                    segments: from..=to,
                    size,
                });
            }
        }
        Ok(out)
    }

    /// The history files of this lineage (every timeline but 1 has one), oldest first: what
    /// a restore or retention keeps beside the segments.
    pub fn history_files(&self, size: SegmentSize) -> Vec<WalFileName> {
        self.spans
            .iter()
            .filter(|s| s.tli > 1)
            .map(|s| WalFileName::history(s.tli, size))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: SegmentSize = SegmentSize::DEFAULT;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    /// What PostgreSQL 15 wrote for timeline 3 after two promotions.
    const TL3: &str = "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tno recovery target specified\n";

    #[test]
    fn parses_postgresql_history_files() {
        let h = TimelineHistory::parse(3, TL3.as_bytes()).unwrap();
        assert_eq!(h.target(), 3);
        assert_eq!(
            h.spans(),
            &[
                TimelineSpan {
                    tli: 1,
                    begin: Lsn(0),
                    end: Some(lsn("0/3000148"))
                },
                TimelineSpan {
                    tli: 2,
                    begin: lsn("0/3000148"),
                    end: Some(lsn("0/5000000"))
                },
                TimelineSpan {
                    tli: 3,
                    begin: lsn("0/5000000"),
                    end: None
                },
            ]
        );
        assert!(h.contains(2) && !h.contains(4));
        assert_eq!(h.switch_point(1).unwrap(), Some(lsn("0/3000148")));
        assert_eq!(h.switch_point(3).unwrap(), None);
        let e = h.switch_point(7).unwrap_err().to_string();
        assert!(
            e.contains("timeline 7 is not on the lineage of timeline 3 (1 → 2 → 3)"),
            "{e}"
        );
        let names: Vec<String> = h.history_files(S).iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["00000002.history", "00000003.history"]);
    }

    #[test]
    fn comments_blank_lines_reasons_and_crlf() {
        let text = "# made by hand\n   \n  1\t0/3000148\tbefore 2026-12-03 12:00:00+00\r\n\t# indented comment\n2 0/5000000\n";
        let h = TimelineHistory::parse(3, text.as_bytes()).unwrap();
        assert_eq!(h.spans().len(), 3);
        assert_eq!(h.switch_point(2).unwrap(), Some(lsn("0/5000000")));
        // A reason in another encoding is ignored.
        let h = TimelineHistory::parse(2, b"1\t0/3000148\tnom \xe9\xe9\n").unwrap();
        assert_eq!(h.switch_point(1).unwrap(), Some(lsn("0/3000148")));
        // No trailing newline.
        assert!(TimelineHistory::parse(2, b"1\t0/3000148").is_ok());
    }

    #[test]
    fn refuses_what_postgresql_refuses() {
        let cases: &[(Tli, &str, &str)] = &[
            (3, "x\t0/1\n", "numeric timeline ID"),
            (3, "-1\t0/1\n", "numeric timeline ID"),
            (3, "0\t0/1\n", "numeric timeline ID"),
            (3, "99999999999\t0/1\n", "numeric timeline ID"),
            (3, "1\n", "switch point"),
            (3, "1\tzz\n", "bad switch point"),
            (3, "1\t0/123456789\n", "more than 8"),
            (3, "2\t0/3000000\n1\t0/5000000\n", "must increase"),
            (3, "1\t0/3000000\n1\t0/5000000\n", "must increase"),
            (4, "1\t0/5000000\n2\t0/3000000\n", "before the previous one"),
            (
                2,
                "1\t0/1\n2\t0/2\n",
                "line 2: parent timeline 2 is not below",
            ),
        ];
        for (tli, text, why) in cases {
            let e = TimelineHistory::parse(*tli, text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{text:?}: {e}");
            assert!(e.contains(&format!("{tli:08X}.history")), "{e}");
        }
        assert!(matches!(
            TimelineHistory::parse(0, b""),
            Err(HistoryError::TimelineZero)
        ));
        assert!(TimelineHistory::root(0).is_err());
        // An empty file: no parents.
        let h = TimelineHistory::parse(5, b"\n# nothing\n").unwrap();
        assert_eq!(h, TimelineHistory::root(5).unwrap());
    }

    #[test]
    fn timeline_of_an_lsn_switch_points_belong_to_the_newer() {
        let h = TimelineHistory::parse(3, TL3.as_bytes()).unwrap();
        assert_eq!(h.timeline_of(lsn("0/0")), 1);
        assert_eq!(h.timeline_of(lsn("0/3000147")), 1);
        assert_eq!(h.timeline_of(lsn("0/3000148")), 2);
        assert_eq!(h.timeline_of(lsn("0/4FFFFFF")), 2);
        assert_eq!(h.timeline_of(lsn("0/5000000")), 3);
        assert_eq!(h.timeline_of(Lsn(u64::MAX)), 3);
        let root = TimelineHistory::root(1).unwrap();
        assert_eq!(root.timeline_of(lsn("5/0")), 1);
    }

    #[test]
    fn segment_files_across_switch_points() {
        let h = TimelineHistory::parse(3, TL3.as_bytes()).unwrap();
        // 0/3000148 is in segment 3: segment 3 comes from timeline 2 (it has timeline 1's
        // WAL up to the switch and timeline 2's after). 0/5000000 starts segment 5: segment 4
        // is timeline 2's, 5 on timeline 3's.
        assert_eq!(h.timeline_of_segment(2, S), 1);
        assert_eq!(h.timeline_of_segment(3, S), 2);
        assert_eq!(h.timeline_of_segment(4, S), 2);
        assert_eq!(h.timeline_of_segment(5, S), 3);
        let r = h
            .segments_for(lsn("0/1000028"), lsn("0/6000010"), S)
            .unwrap();
        let names: Vec<String> = r
            .iter()
            .flat_map(|r| r.names())
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000020000000000000003",
                "000000020000000000000004",
                "000000030000000000000005",
                "000000030000000000000006",
            ]
        );
        assert_eq!(r.iter().map(|r| r.tli).collect::<Vec<_>>(), [1, 2, 3]);
        // Every segment comes from timeline_of_segment's answer.
        for range in &r {
            for segno in range.segments.clone() {
                assert_eq!(h.timeline_of_segment(segno, S), range.tli);
            }
        }
        // A range inside one timeline.
        let r = h
            .segments_for(lsn("0/3000148"), lsn("0/3000200"), S)
            .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].first_name().to_string(), "000000020000000000000003");
        // A range starting after the last switch point.
        let r = h
            .segments_for(lsn("0/7000000"), lsn("0/9000000"), S)
            .unwrap();
        assert_eq!((r.len(), r[0].tli, r[0].segments.clone()), (1, 3, 7..=9));
        // A range before the first switch.
        let r = h.segments_for(lsn("0/0"), lsn("0/2000000"), S).unwrap();
        assert_eq!((r.len(), r[0].tli, r[0].segments.clone()), (1, 1, 0..=2));
        let e = h.segments_for(lsn("0/5"), lsn("0/4"), S).unwrap_err();
        assert!(e.to_string().contains("ends before it starts"), "{e}");
    }

    #[test]
    fn two_switches_in_one_segment() {
        // Timeline 2 lived for less than a segment: segment 3 holds both switch points, so it
        // is read from timeline 3 and timeline 2 contributes no file.
        let h = TimelineHistory::parse(3, b"1\t0/3000100\tx\n2\t0/3000200\ty\n").unwrap();
        let r = h
            .segments_for(lsn("0/2000000"), lsn("0/4000000"), S)
            .unwrap();
        let got: Vec<(Tli, SegNo, SegNo)> = r
            .iter()
            .map(|r| (r.tli, *r.segments.start(), *r.segments.end()))
            .collect();
        assert_eq!(got, [(1, 2, 2), (3, 3, 4)]);
    }
}
