//! Output: comfy-table for people, RFC 4180 CSV and typed JSON for scripts.
//!
//! Text from the catalog or a node (database names, host names, remarks, audit rows) may hold
//! terminal control characters: tables, CSV, `[DONE]` lines, free text and error messages show
//! them escaped (`\x1b`, `\u{202e}`, [`pgbackman_core::text::escape_controls`]); JSON keeps the
//! exact text (its own escaping is safe).

use pgbackman_core::duration;
use pgbackman_core::model::OutputFormat;
use pgbackman_core::text::escape_controls;
use pgbackman_db::{Rows, Value};
use serde_json::{Map, Value as Json, json};

use crate::fit::{self, Layout};

/// What a command produced.
#[derive(Debug)]
pub enum Output {
    /// A listing; `kind` is the JSON result type (e.g. "backup_servers").
    List {
        kind: &'static str,
        rows: Rows,
    },
    /// A one-row report shown as key/value pairs.
    Report {
        kind: &'static str,
        rows: Rows,
    },
    /// A completed change: `[DONE] ...` lines.
    Done(Vec<String>),
    /// Free text (help, history).
    Text(String),
    /// A JSON document printed as is, whatever the output format (Zabbix discovery).
    Json(Json),
    Nothing,
}

/// CSV/JSON key of a column header: "Backup server" → "backup_server".
pub fn key(column: &str) -> String {
    let mut k: String = column
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    while k.contains("__") {
        k = k.replace("__", "_");
    }
    k.trim_matches('_').to_string()
}

/// Columns holding a PostgreSQL interval that measures a run: shown in the one duration format
/// of [`pgbackman_core::duration`] (CSV and JSON keep the interval text).
fn is_duration(column: &str) -> bool {
    matches!(
        column,
        "Duration" | "Elapsed" | "Restore time" | "Drill restore time"
    ) || column.ends_with("running time")
}

fn is_size(column: &str) -> bool {
    column.ends_with("size") || column.ends_with("Size")
}

pub fn pretty_bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["bytes", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v.abs() >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Text for a terminal: control characters escaped, line breaks kept.
pub fn safe(s: &str) -> String {
    escape_controls(s, true).into_owned()
}

fn cell_text(column: &str, v: &Value) -> String {
    safe(&raw_cell_text(column, v))
}

fn raw_cell_text(column: &str, v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Int(n) if is_size(column) => pretty_bytes(*n),
        Value::Int(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Text(s) if is_duration(column) => {
            duration::parse_pg_interval(s).map_or_else(|| s.clone(), duration::human_secs)
        }
        Value::Text(s) if column == "Schedule" => crate::wording::schedule_text(s),
        Value::Text(s) => s.clone(),
        // The display zone, with the offset as the suffix (README, Operations, Time).
        Value::Time(t) => crate::zone::display().show(t),
        Value::List(l) => l.join(", "),
        Value::Json(j) if column == "Phase timings" => json_lines(j, true),
        Value::Json(j) => json_lines(j, false),
    }
}

/// JSON in a table cell, for people: one array element or object member per line; numbers of
/// `seconds` objects in the one duration format.
fn json_lines(j: &Json, seconds: bool) -> String {
    let scalar = |v: &Json| match v {
        Json::String(s) => s.clone(),
        Json::Number(n) if seconds => n
            .as_f64()
            .map_or_else(|| n.to_string(), duration::human_secs),
        Json::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    };
    match j {
        Json::Array(items) => items
            .iter()
            .map(|i| match i {
                Json::Object(m) => m.values().map(scalar).collect::<Vec<_>>().join("  "),
                other => scalar(other),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Json::Object(m) => m
            .iter()
            .map(|(k, v)| match v.as_f64() {
                // A member that counts seconds reads as a duration.
                Some(secs) if k == "seconds" || k.ends_with("_seconds") => {
                    format!("{k}: {}", duration::human_secs(secs))
                }
                _ => format!("{k}: {}", scalar(v)),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => scalar(other),
    }
}

fn csv_text(v: &Value) -> String {
    safe(&raw_csv_text(v))
}

fn raw_csv_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Int(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Text(s) => s.clone(),
        Value::Time(t) => t.to_rfc3339(),
        Value::List(l) => l.join(","),
        Value::Json(j) => j.to_string(),
    }
}

fn json_value(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Int(n) => json!(n),
        Value::Float(f) => json!(f),
        Value::Bool(b) => json!(b),
        Value::Text(s) => json!(s),
        Value::Time(t) => json!(t.to_rfc3339()),
        Value::List(l) => json!(l),
        Value::Json(j) => j.clone(),
    }
}

fn json_rows(rows: &Rows) -> Vec<Json> {
    rows.rows
        .iter()
        .map(|r| {
            let mut m = Map::new();
            for (c, v) in rows.columns.iter().zip(r) {
                m.insert(key(c), json_value(v));
            }
            Json::Object(m)
        })
        .collect()
}

fn csv_of(rows: &Rows) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    // Writing into a Vec cannot fail.
    let _ = w.write_record(rows.columns.iter().map(|c| key(c)));
    // Cells are escaped ([`csv_text`]): a CSV file is read in terminals and spreadsheets too.
    for r in &rows.rows {
        let _ = w.write_record(r.iter().map(csv_text));
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// Renders `out` as text ready to print (with a trailing newline when not empty), tables at
/// their natural width.
pub fn render(out: &Output, format: OutputFormat) -> String {
    render_with(out, format, Layout::default())
}

/// The failure of a backup, shown first in its details: what a reader looks for.
const FAILURE_FIRST: &[&str] = &[
    "Execution status",
    "Failed step",
    "Exit status",
    "Error message",
    "Stderr tail",
];

/// Report rows in the order a person reads them: for a failed backup, its failure right after
/// its BckID (CSV and JSON keep the catalog's order).
fn report_order(kind: &str, rows: &Rows, r: &[Value]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.columns.len()).collect();
    let failed = rows
        .columns
        .iter()
        .position(|c| c == "Failed step")
        .is_some_and(|i| !matches!(r[i], Value::Null));
    if kind == "backup_details" && failed {
        let front: Vec<usize> = FAILURE_FIRST
            .iter()
            .filter_map(|name| rows.columns.iter().position(|c| c == name))
            .collect();
        order.retain(|i| !front.contains(i));
        let at = order
            .iter()
            .position(|&i| rows.columns[i] == "BckID")
            .map_or(0, |p| p + 1);
        order.splice(at..at, front);
    }
    order
}

/// [`render`] for a terminal: tables fitted to `layout` (wrapped, columns dropped, expanded).
pub fn render_with(out: &Output, format: OutputFormat, layout: Layout) -> String {
    match (out, format) {
        (Output::Nothing, _) => String::new(),
        (Output::Text(s), OutputFormat::Table) => ensure_nl(fit::wrap_text(&safe(s), layout.width)),
        (Output::Text(s), _) => ensure_nl(safe(s)),
        (Output::Json(j), _) => ensure_nl(j.to_string()),
        (Output::Done(lines), OutputFormat::Json) => {
            ensure_nl(json!({"status": "done", "messages": lines}).to_string())
        }
        (Output::Done(lines), _) => lines
            .iter()
            .map(|l| format!("[DONE] {}\n", escape_controls(l, false)))
            .collect(),
        (Output::List { kind, rows } | Output::Report { kind, rows }, OutputFormat::Json) => {
            let mut m = Map::new();
            m.insert((*kind).to_string(), Json::Array(json_rows(rows)));
            ensure_nl(Json::Object(m).to_string())
        }
        (Output::List { rows, .. } | Output::Report { rows, .. }, OutputFormat::Csv) => {
            csv_of(rows)
        }
        (Output::List { kind, rows }, OutputFormat::Table) => {
            let header: Vec<String> = rows.columns.iter().map(|c| safe(c)).collect();
            let cells: Vec<Vec<String>> = rows
                .rows
                .iter()
                .map(|r| {
                    rows.columns
                        .iter()
                        .zip(r)
                        .map(|(c, v)| cell_text(c, v))
                        .collect()
                })
                .collect();
            fit::listing(kind, &header, &cells, layout)
        }
        (Output::Report { kind, rows }, OutputFormat::Table) => {
            let header = vec!["Parameter".to_string(), "Value".to_string()];
            let mut cells = Vec::new();
            for r in &rows.rows {
                for i in report_order(kind, rows, r) {
                    let c = &rows.columns[i];
                    cells.push(vec![safe(c), cell_text(c, &r[i])]);
                }
            }
            let (t, _) = fit::fitted(&header, &cells, &[], layout.width, false);
            format!("{t}\n")
        }
    }
}

fn ensure_nl(mut s: String) -> String {
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> Rows {
        Rows {
            columns: vec![
                "SrvID".into(),
                "Backup server".into(),
                "Remarks".into(),
                "Registered".into(),
                "Total size".into(),
            ],
            rows: vec![vec![
                Value::Int(7),
                Value::Text("bs1.example.org".into()),
                Value::Text("has \"quotes\", commas\nand newlines".into()),
                Value::Time(chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()),
                Value::Null,
            ]],
        }
    }

    #[test]
    fn keys() {
        assert_eq!(key("Backup server"), "backup_server");
        assert_eq!(key("SrvID"), "srvid");
        assert_eq!(key("AT time (UTC)"), "at_time_utc");
    }

    #[test]
    fn csv_is_rfc4180() {
        let s = render(
            &Output::List {
                kind: "x",
                rows: sample(),
            },
            OutputFormat::Csv,
        );
        let mut r = csv::Reader::from_reader(s.as_bytes());
        let rec = r.records().next().unwrap().unwrap();
        assert_eq!(&rec[2], "has \"quotes\", commas\nand newlines");
        assert_eq!(&rec[3], "2026-01-02T03:04:05+00:00");
        assert_eq!(&rec[4], "");
        assert!(s.contains("\r\n"));
    }

    #[test]
    fn json_is_typed() {
        let s = render(
            &Output::List {
                kind: "backup_servers",
                rows: sample(),
            },
            OutputFormat::Json,
        );
        let v: Json = serde_json::from_str(&s).unwrap();
        let row = &v["backup_servers"][0];
        assert_eq!(row["srvid"], json!(7));
        assert_eq!(row["total_size"], Json::Null);
        assert_eq!(row["registered"], json!("2026-01-02T03:04:05+00:00"));
    }

    #[test]
    fn control_characters_are_escaped_except_in_json() {
        let rows = Rows {
            columns: vec!["DBname".into()],
            rows: vec![vec![Value::Text(
                "db\x1b[2J\x07\u{202e}x\u{200b}y\u{9b}".into(),
            )]],
        };
        let escaped = "db\\x1b[2J\\x07\\u{202e}x\\u{200b}y\\u{9b}";
        for f in [OutputFormat::Table, OutputFormat::Csv] {
            let out = render(
                &Output::List {
                    kind: "x",
                    rows: rows.clone(),
                },
                f,
            );
            assert!(out.contains(escaped), "{f}: {out}");
            assert!(
                !out.contains('\x1b') && !out.contains('\u{202e}'),
                "{f}: {out}"
            );
        }
        let out = render(
            &Output::Report {
                kind: "x",
                rows: rows.clone(),
            },
            OutputFormat::Table,
        );
        assert!(out.contains(escaped), "{out}");
        let done = render(
            &Output::Done(vec!["dbname [a\x1b]0;owned\x07] registered\nfake".into()]),
            OutputFormat::Table,
        );
        assert_eq!(
            done,
            "[DONE] dbname [a\\x1b]0;owned\\x07] registered\\x0afake\n"
        );
        let json = render(&Output::List { kind: "x", rows }, OutputFormat::Json);
        let v: Json = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v["x"][0]["dbname"],
            json!("db\x1b[2J\x07\u{202e}x\u{200b}y\u{9b}")
        );
    }

    #[test]
    fn durations_have_one_format_in_tables_only() {
        let rows = Rows {
            columns: vec!["Duration".into(), "Phase timings".into()],
            rows: vec![vec![
                Value::Text("00:03:20.4".into()),
                Value::Json(json!({"connect": 0.026, "dump": 12.5})),
            ]],
        };
        let out = Output::List { kind: "x", rows };
        let t = render(&out, OutputFormat::Table);
        assert!(t.contains("| 3 min 20 s |"), "{t}");
        assert!(
            t.contains("connect: 26 ms") && t.contains("dump: 13 s"),
            "{t}"
        );
        let details = Output::List {
            kind: "x",
            rows: Rows {
                columns: vec!["Details".into()],
                rows: vec![vec![Value::Json(
                    json!({"seconds": 0.025, "toc_entries": 12}),
                )]],
            },
        };
        let d = render(&details, OutputFormat::Table);
        assert!(
            d.contains("seconds: 25 ms") && d.contains("toc_entries: 12"),
            "{d}"
        );
        let csv = render(&out, OutputFormat::Csv);
        assert!(csv.contains("00:03:20.4"), "{csv}");
    }

    #[test]
    fn sizes_are_pretty_in_tables() {
        assert_eq!(pretty_bytes(512), "512 bytes");
        assert_eq!(pretty_bytes(1536), "1.5 kB");
    }
}
