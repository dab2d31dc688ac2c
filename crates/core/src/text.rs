//! Text that reaches a terminal: escaping of control and invisible characters, and bounded
//! quoting of user input in messages.
//!
//! Anything shown to a user may come from a node or the catalog (database names, remarks, audit
//! rows) and so from whoever could create a database: an ESC sequence could rewrite the screen,
//! a bidi override or a zero-width space makes one name look like another. [`escape_controls`]
//! makes every such character visible (`\x1b`, `\u{202e}`); JSON output keeps the exact text.

use std::borrow::Cow;
use std::fmt;
use std::fmt::Write as _;

/// Characters an input quoted in a message keeps, at most.
pub const QUOTE_MAX_CHARS: usize = 64;

/// Whether `c` must not reach a terminal as it is: C0 and C1 controls, DEL, bidi controls,
/// zero-width and other invisible format characters, line and paragraph separators.
pub fn is_unsafe_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{ad}'                      // soft hyphen
        | '\u{34f}'                     // combining grapheme joiner
        | '\u{61c}'                     // arabic letter mark
        | '\u{115f}' | '\u{1160}'       // hangul fillers
        | '\u{17b4}' | '\u{17b5}'
        | '\u{180e}'                    // mongolian vowel separator
        | '\u{200b}'..='\u{200f}'       // zero-width space/joiners, LRM, RLM
        | '\u{2028}'..='\u{202e}'       // line/paragraph separators, bidi embeddings/overrides
        | '\u{2060}'..='\u{206f}'       // word joiner, invisible operators, bidi isolates
        | '\u{3164}'                    // hangul filler
        | '\u{fe00}'..='\u{fe0f}'       // variation selectors
        | '\u{feff}'                    // zero-width no-break space (BOM)
        | '\u{ffa0}'
        | '\u{fff9}'..='\u{fffb}'       // interlinear annotations
        | '\u{e0000}'..='\u{e007f}'     // tags
    )
}

/// `s` with every [`is_unsafe_char`] written as an escape: `\x1b` for ASCII controls,
/// `\u{202e}` for the others. With `keep_newlines`, `\n` stays (a table cell or a message of
/// several lines). Borrowed when nothing needs escaping.
pub fn escape_controls(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| is_unsafe_char(c) && !(keep_newlines && c == '\n');
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// `s` in double quotes for a message: control characters escaped, at most
/// [`QUOTE_MAX_CHARS`] characters; a longer value is cut and says how long it was, so a
/// 100 kB argument makes a short message: `"aaaa…" (100000 bytes)`.
pub fn quote(s: &str) -> String {
    let n = s.chars().count();
    if n <= QUOTE_MAX_CHARS {
        return format!("\"{}\"", escape_controls(s, false));
    }
    let head: String = s.chars().take(QUOTE_MAX_CHARS).collect();
    format!("\"{}…\" ({} bytes)", escape_controls(&head, false), s.len())
}

/// Shortens every double-quoted part of `msg` longer than [`QUOTE_MAX_CHARS`] characters the way
/// [`quote`] does. For messages made elsewhere (the catalog's, a library's) that quote input.
pub fn bound_quoted(msg: &str) -> Cow<'_, str> {
    if msg.len() <= QUOTE_MAX_CHARS + 2 {
        return Cow::Borrowed(msg);
    }
    let mut out = String::with_capacity(msg.len().min(4096));
    let mut rest = msg;
    let mut changed = false;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..=start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else {
            rest = after;
            break;
        };
        let inner = &after[..end];
        // A part ending in … was cut already (by [`quote`] or the catalog's api.q).
        if inner.chars().count() > QUOTE_MAX_CHARS && !inner.ends_with('…') {
            let head: String = inner.chars().take(QUOTE_MAX_CHARS).collect();
            let _ = write!(out, "{head}…\" ({} bytes)", inner.len());
            changed = true;
        } else {
            out.push_str(inner);
            out.push('"');
        }
        rest = &after[end + 1..];
    }
    // An unterminated quote, or a long unquoted tail: still bounded.
    if rest.chars().count() > 4 * QUOTE_MAX_CHARS && !rest.contains('\n') {
        let head: String = rest.chars().take(4 * QUOTE_MAX_CHARS).collect();
        let _ = write!(out, "{head}… ({} bytes)", rest.len());
        changed = true;
    } else {
        out.push_str(rest);
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(msg)
    }
}

/// Longest word [`bound_words`] leaves whole.
pub const WORD_MAX_CHARS: usize = 200;

/// Cuts every whitespace-separated word longer than [`WORD_MAX_CHARS`] characters: the last guard
/// of a message that repeats input without quotes (a parser's "unexpected argument 'xxx…'").
pub fn bound_words(msg: &str) -> Cow<'_, str> {
    if !msg
        .split_whitespace()
        .any(|w| w.chars().count() > WORD_MAX_CHARS)
    {
        return Cow::Borrowed(msg);
    }
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.chars().count() > WORD_MAX_CHARS {
            let head: String = word.chars().take(WORD_MAX_CHARS).collect();
            let _ = write!(out, "{head}…({} bytes)", word.len());
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in msg.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    Cow::Owned(out)
}

/// `n` and the noun in agreement: "1 backup", "2 backups", "0 backups".
pub fn plural<N: fmt::Display + PartialEq + From<u8>>(n: N, one: &str, many: &str) -> String {
    let word = if n == N::from(1) { one } else { many };
    format!("{n} {word}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_visibly() {
        assert_eq!(escape_controls("db\x1b[2Jx", false), "db\\x1b[2Jx");
        assert_eq!(escape_controls("bell\x07", false), "bell\\x07");
        assert_eq!(escape_controls("c1\u{9b}31m", false), "c1\\u{9b}31m");
        assert_eq!(
            escape_controls("abc\u{202e}gpj.exe", false),
            "abc\\u{202e}gpj.exe"
        );
        assert_eq!(escape_controls("pg\u{200b}01", false), "pg\\u{200b}01");
        assert_eq!(
            escape_controls("a\u{feff}b\u{2066}c", false),
            "a\\u{feff}b\\u{2066}c"
        );
        assert_eq!(escape_controls("del\x7f", false), "del\\x7f");
        assert_eq!(escape_controls("cr\rlf\n", false), "cr\\x0dlf\\x0a");
        assert_eq!(escape_controls("two\nlines\r", true), "two\nlines\\x0d");
    }

    #[test]
    fn ordinary_text_is_untouched_and_borrowed() {
        for s in [
            "billing",
            "ünïcødé",
            "quo\"te's",
            "my db",
            "日本語",
            "emoji 🐘",
            "tab-free",
        ] {
            assert!(matches!(escape_controls(s, false), Cow::Borrowed(_)), "{s}");
        }
    }

    #[test]
    fn quote_is_bounded() {
        assert_eq!(quote("pg01"), "\"pg01\"");
        assert_eq!(quote("a\x1bb"), "\"a\\x1bb\"");
        let long = "x".repeat(100_000);
        let q = quote(&long);
        assert!(q.len() < 100, "{q}");
        assert!(q.ends_with("…\" (100000 bytes)"), "{q}");
    }

    #[test]
    fn bound_words_cuts_long_words() {
        let long = "w".repeat(50_000);
        let msg = format!("unexpected argument '{long}' found\nUsage: x");
        let b = bound_words(&msg);
        assert!(b.len() < 400, "{b}");
        assert!(b.ends_with("(50002 bytes) found\nUsage: x"), "{b}");
        assert_eq!(bound_words("short words stay"), "short words stay");
    }

    #[test]
    fn bound_quoted_shortens_long_quoted_parts_only() {
        let long = "y".repeat(10_000);
        let msg = format!("hostname \"{long}\" is not valid; \"short\" stays");
        let b = bound_quoted(&msg);
        assert!(b.len() < 200, "{b}");
        assert!(b.starts_with("hostname \"yyyy"), "{b}");
        assert!(
            b.contains("…\" (10000 bytes) is not valid; \"short\" stays"),
            "{b}"
        );
        assert_eq!(bound_quoted("plain \"ok\" message"), "plain \"ok\" message");
        let once = format!("hostname {} is not valid", quote(&long));
        assert_eq!(bound_quoted(&once), once, "already bounded");
        let unquoted = "z".repeat(5000);
        assert!(bound_quoted(&unquoted).len() < 400);
    }
}
