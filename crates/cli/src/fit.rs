//! Tables that fit the terminal.
//!
//! The width is `COLUMNS` when it is set to a positive number, else the size of the terminal when
//! standard output is one, else unlimited (a pipe or a file gets whole lines; CSV and JSON never
//! depend on the width). A listing wider than that first wraps its long cells (comfy-table's
//! dynamic arrangement, each column kept at least as wide as a timestamp or its longest header
//! word), then drops columns in the order the listing declares ([`drop_order`], in `priorities`) and says in a
//! footer which ones it hid. `set expanded on|off|auto` (`-x` / `--expanded` with `-C`) shows one
//! record per block instead, like psql's `\x`; `auto` does so when a row does not fit.

use std::fmt;
use std::str::FromStr;

use comfy_table::presets::ASCII_FULL_CONDENSED;
use comfy_table::{ColumnConstraint, ContentArrangement, Table, Width};
use unicode_width::UnicodeWidthStr;

pub use crate::priorities::drop_order;

/// psql's `\x`: one record per block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Expanded {
    #[default]
    Off,
    On,
    /// Expanded when a row does not fit the width, even with its long cells wrapped.
    Auto,
}

impl FromStr for Expanded {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" => Ok(Expanded::On),
            "off" | "false" | "no" | "" => Ok(Expanded::Off),
            "auto" => Ok(Expanded::Auto),
            other => Err(format!(
                "expanded \"{}\" is not valid: use on, off or auto",
                pgbackman_core::text::escape_controls(other, false)
            )),
        }
    }
}

impl fmt::Display for Expanded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expanded::Off => "off",
            Expanded::On => "on",
            Expanded::Auto => "auto",
        })
    }
}

/// How tables are laid out: the width to fit (None: unlimited) and the expanded mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    pub width: Option<usize>,
    pub expanded: Expanded,
}

impl Layout {
    /// The layout for standard output now (the terminal may have been resized since the last
    /// command).
    pub fn for_stdout(expanded: Expanded) -> Layout {
        Layout {
            width: terminal_width(),
            expanded,
        }
    }
}

/// `COLUMNS` when set to a positive number, else the terminal's width when standard output is a
/// terminal, else None (unlimited).
pub fn terminal_width() -> Option<usize> {
    if let Some(n) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return Some(n);
    }
    // comfy-table asks the terminal only when standard output is one.
    Table::new().width().map(usize::from).filter(|w| *w > 0)
}

/// A timestamp with its zone: a column is never wrapped below this unless its content is shorter.
const KEEP_WHOLE: usize = 25;

/// Display width of the widest line of `s`.
pub fn widest(s: &str) -> usize {
    s.lines().map(UnicodeWidthStr::width).max().unwrap_or(0)
}

/// The narrowest a column of long texts (errors, commands, descriptions) is wrapped to.
const WRAP_MIN: usize = 16;

/// The longest word kept whole when a column wraps (a longer one, e.g. a path, is cut).
const WORD_MAX: usize = 30;

/// The narrowest a column may become: its whole content when no cell is longer than
/// [`KEEP_WHOLE`] (ids, names, timestamps stay on one line), else [`WRAP_MIN`] or its longest
/// word up to [`WORD_MAX`] (parameter names are not cut); at least its longest header word
/// (headers wrap between words).
fn lower_bound(header: &str, cells: &[&str]) -> usize {
    let content = cells.iter().map(|c| widest(c)).max().unwrap_or(0);
    let longest_word = |s: &str| {
        s.split_whitespace()
            .map(UnicodeWidthStr::width)
            .max()
            .unwrap_or(0)
    };
    let word = cells.iter().map(|c| longest_word(c)).max().unwrap_or(0);
    let whole = content.max(UnicodeWidthStr::width(header));
    let lb = if content <= KEEP_WHOLE {
        content
    } else {
        WRAP_MIN.max(word.min(WORD_MAX))
    };
    lb.max(longest_word(header)).min(whole).max(1)
}

/// Width of a table whose columns are `widths` wide (ASCII_FULL_CONDENSED: `| a | b |`).
fn table_width(widths: impl Iterator<Item = usize>) -> usize {
    let (sum, n) = widths.fold((0, 0), |(s, n), w| (s + w, n + 1));
    sum + 3 * n + 1
}

fn new_table() -> Table {
    let mut t = Table::new();
    t.load_style(ASCII_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled);
    t
}

/// The table of the columns `keep`, fitted into `width` when given.
fn draw(header: &[String], rows: &[Vec<String>], keep: &[usize], width: Option<usize>) -> String {
    let mut t = new_table();
    t.set_header(keep.iter().map(|&i| header[i].clone()));
    for r in rows {
        t.add_row(keep.iter().map(|&i| r[i].clone()));
    }
    if let Some(w) = width {
        t.set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(u16::try_from(w).unwrap_or(u16::MAX));
        let bounds = keep.iter().map(|&i| {
            let cells: Vec<&str> = rows.iter().map(|r| r[i].as_str()).collect();
            let lb = lower_bound(&header[i], &cells);
            // comfy-table's widths include the padding, one space each side.
            ColumnConstraint::LowerBoundary(Width::Fixed(u16::try_from(lb + 2).unwrap_or(u16::MAX)))
        });
        t.set_constraints(bounds);
    }
    t.to_string()
}

fn bounds(header: &[String], rows: &[Vec<String>]) -> Vec<usize> {
    (0..header.len())
        .map(|i| {
            let cells: Vec<&str> = rows.iter().map(|r| r[i].as_str()).collect();
            lower_bound(&header[i], &cells)
        })
        .collect()
}

/// Whether the table fits `width` with every column, its long cells wrapped.
fn fits(header: &[String], rows: &[Vec<String>], width: usize) -> bool {
    table_width(bounds(header, rows).into_iter()) <= width
}

/// A table of `header` and `rows` (cell texts, already escaped) that fits `width`: long cells
/// wrapped, then columns dropped in `order` (then the rightmost). Returns the table and the
/// names of the hidden columns. `drop` false: wrap only (key/value reports).
pub fn fitted(
    header: &[String],
    rows: &[Vec<String>],
    order: &[&str],
    width: Option<usize>,
    drop: bool,
) -> (String, Vec<String>) {
    let mut keep: Vec<usize> = (0..header.len()).collect();
    let Some(w) = width else {
        return (draw(header, rows, &keep, None), Vec::new());
    };
    let lb = bounds(header, rows);
    // Declared order first, then from the right; the first column (the id) stays.
    let mut victims: Vec<usize> = order
        .iter()
        .filter_map(|name| header.iter().position(|h| h == name))
        .collect();
    let rest: Vec<usize> = (1..header.len())
        .rev()
        .filter(|i| !victims.contains(i))
        .collect();
    victims.extend(rest);
    let mut victims = victims.into_iter();
    let mut hidden = Vec::new();
    loop {
        let needed = table_width(keep.iter().map(|&i| lb[i]));
        if needed <= w || !drop || keep.len() <= 1 {
            let out = draw(header, rows, &keep, Some(w));
            // comfy-table may still exceed the width by a few columns: then drop one more.
            if widest(&out) <= w || !drop || keep.len() <= 1 {
                return (out, hidden);
            }
        }
        match victims.next() {
            Some(v) => {
                keep.retain(|&i| i != v);
                hidden.push(header[v].clone());
            }
            None => return (draw(header, rows, &keep, Some(w)), hidden),
        }
    }
}

/// One record per block, psql's `\x` layout, values wrapped to `width`.
pub fn expanded(header: &[String], rows: &[Vec<String>], width: Option<usize>) -> String {
    let kw = header
        .iter()
        .map(|h| UnicodeWidthStr::width(h.as_str()))
        .max()
        .unwrap_or(0);
    let vw = width.map(|w| w.saturating_sub(kw + 3).max(8));
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        let mut lines: Vec<(String, String)> = Vec::new();
        for (h, v) in header.iter().zip(r) {
            let mut first = true;
            let parts: Vec<&str> = if v.is_empty() {
                vec![""]
            } else {
                v.lines().collect()
            };
            for part in parts {
                for piece in wrap(part, vw) {
                    let key = if first { h.clone() } else { String::new() };
                    first = false;
                    lines.push((key, piece));
                }
            }
        }
        let value_width = lines
            .iter()
            .map(|(_, v)| UnicodeWidthStr::width(v.as_str()))
            .max()
            .unwrap_or(0);
        let title = format!("-[ RECORD {} ]", n + 1);
        let left = title.len().max(kw + 1);
        let mut bar = format!("{title:-<left$}+{}", "-".repeat(value_width + 1));
        if let Some(w) = width {
            bar = bar.chars().take(w.max(title.len())).collect();
        }
        out.push_str(&bar);
        out.push('\n');
        for (k, v) in lines {
            let pad = kw - UnicodeWidthStr::width(k.as_str());
            let line = format!("{k}{} | {v}", " ".repeat(pad));
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// `s` cut into lines of at most `width` columns, at spaces where there are any.
pub fn wrap(s: &str, width: Option<usize>) -> Vec<String> {
    let Some(w) = width.filter(|w| *w > 0) else {
        return vec![s.to_string()];
    };
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in s.split(' ') {
        let candidate = if line.is_empty() {
            word.to_string()
        } else {
            format!("{line} {word}")
        };
        if UnicodeWidthStr::width(candidate.as_str()) <= w {
            line = candidate;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        // A word longer than the line is cut.
        let mut rest = word.to_string();
        while UnicodeWidthStr::width(rest.as_str()) > w {
            let mut cut = String::new();
            for c in rest.chars() {
                if UnicodeWidthStr::width(cut.as_str())
                    + unicode_width::UnicodeWidthChar::width(c).unwrap_or(0)
                    > w
                {
                    break;
                }
                cut.push(c);
            }
            if cut.is_empty() {
                break;
            }
            rest = rest[cut.len()..].to_string();
            lines.push(cut);
        }
        line = rest;
    }
    lines.push(line);
    lines
}

/// Free text (help, history) fitted to `width`: a long line wraps at spaces, its continuation
/// lines indented under the text after its first gap of two spaces (the description column of
/// `help`), else under its own indentation.
pub fn wrap_text(s: &str, width: Option<usize>) -> String {
    let Some(w) = width else {
        return s.to_string();
    };
    let mut out = String::with_capacity(s.len());
    for line in s.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        if UnicodeWidthStr::width(body) <= w {
            out.push_str(line);
            continue;
        }
        let lead = body.len() - body.trim_start().len();
        let hang = body[lead..]
            .find("  ")
            .map(|i| {
                let after = &body[lead + i..];
                lead + i + after.len() - after.trim_start().len()
            })
            .filter(|h| *h <= w * 2 / 3)
            .unwrap_or(lead.min(w / 2));
        let (head, rest) = body.split_at(hang);
        let pieces = wrap(rest.trim_start(), Some(w - hang));
        for (i, p) in pieces.iter().enumerate() {
            if i == 0 {
                out.push_str(head);
            } else {
                out.push('\n');
                out.push_str(&" ".repeat(hang));
            }
            out.push_str(p);
        }
        out.push_str(nl);
    }
    out
}

/// A listing for people: fitted table or expanded blocks, row count, and what was hidden.
pub fn listing(kind: &str, header: &[String], rows: &[Vec<String>], layout: Layout) -> String {
    let n = rows.len();
    let count = format!("({n} row{})\n", if n == 1 { "" } else { "s" });
    let expand = match layout.expanded {
        Expanded::On => true,
        Expanded::Off => false,
        Expanded::Auto => layout.width.is_some_and(|w| !fits(header, rows, w)),
    };
    if expand && !rows.is_empty() {
        return format!("{}{count}", expanded(header, rows, layout.width));
    }
    let (table, hidden) = fitted(header, rows, drop_order(kind), layout.width, true);
    let mut out = format!("{table}\n{count}");
    if !hidden.is_empty() {
        let k = hidden.len();
        let note = format!(
            "{k} column{} hidden to fit {} columns: {}. `set expanded on` (-x with -C) or -o csv shows every column.",
            if k == 1 { "" } else { "s" },
            layout.width.unwrap_or(0),
            hidden.join(", ")
        );
        for l in wrap(&note, layout.width) {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> (Vec<String>, Vec<Vec<String>>) {
        let header: Vec<String> = [
            "AlertID",
            "Registered",
            "Type",
            "Error",
            "Send to",
            "Message-ID",
        ]
        .map(String::from)
        .to_vec();
        let rows = vec![vec![
            "1".into(),
            "2026-12-03 13:32:30+00:00".into(),
            "BACKUP".into(),
            "pg_dump: error: connection to database \"broken_db\" failed: FATAL:  permission denied".into(),
            "dba-team@example.org".into(),
            "<0123456789abcdef@bs1.example.org>".into(),
        ]];
        (header, rows)
    }

    #[test]
    fn tables_fit_every_width_and_name_what_they_hide() {
        let (h, r) = grid();
        for w in [40, 60, 80, 120, 200] {
            let layout = Layout {
                width: Some(w),
                expanded: Expanded::Off,
            };
            let out = listing("alerts", &h, &r, layout);
            assert!(widest(&out) <= w, "{w}:\n{out}");
            assert!(out.contains("AlertID") && out.contains("(1 row)"), "{out}");
        }
        let out = listing(
            "alerts",
            &h,
            &r,
            Layout {
                width: Some(80),
                expanded: Expanded::Off,
            },
        );
        // Message-ID goes before Send to, as alerts declare; the error stays, wrapped.
        assert!(
            out.contains("hidden to fit 80 columns: Message-ID"),
            "{out}"
        );
        assert!(out.contains("permission"), "{out}");
        let wide = listing("alerts", &h, &r, Layout::default());
        assert!(!wide.contains("hidden"), "{wide}");
    }

    #[test]
    fn expanded_is_one_block_per_record() {
        let (h, r) = grid();
        let out = expanded(&h, &r, Some(50));
        assert!(out.starts_with("-[ RECORD 1 ]"), "{out}");
        assert!(out.contains("\nType       | BACKUP\n"), "{out}");
        assert!(widest(&out) <= 50, "{out}");
        let auto = Layout {
            width: Some(60),
            expanded: Expanded::Auto,
        };
        assert!(listing("alerts", &h, &r, auto).starts_with("-[ RECORD 1 ]"));
        let roomy = Layout {
            width: Some(400),
            expanded: Expanded::Auto,
        };
        assert!(listing("alerts", &h, &r, roomy).starts_with("+--"));
    }

    #[test]
    fn wrap_breaks_at_spaces_and_cuts_long_words() {
        assert_eq!(wrap("aaa bbb ccc", Some(7)), ["aaa bbb", "ccc"]);
        assert_eq!(wrap("abcdefghij", Some(4)), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("x", None), ["x"]);
    }

    #[test]
    fn help_text_wraps_under_its_description_column() {
        let s = "Shell:\n  set      Set a shell parameter: output_format and expanded\n";
        let out = wrap_text(s, Some(30));
        assert_eq!(
            out,
            "Shell:\n  set      Set a shell\n           parameter:\n           output_format and\n           expanded\n"
        );
        assert_eq!(wrap_text(s, None), s);
    }

    #[test]
    fn expanded_modes_parse() {
        assert_eq!("ON".parse::<Expanded>(), Ok(Expanded::On));
        assert_eq!("auto".parse::<Expanded>(), Ok(Expanded::Auto));
        assert!(
            "sometimes"
                .parse::<Expanded>()
                .unwrap_err()
                .contains("on, off or auto")
        );
    }
}
