//! Quoting for the SQL this crate writes (roles.sql, database.sql) and for libpq conninfo values.
//!
//! Every identifier and literal that reaches a file goes through these functions; nothing taken
//! from a server is ever spliced unquoted. The SQL built here ([`set_clause`]) is output for
//! those files, like [`crate::sqlgen`]'s, not a query.

/// PostgreSQL keywords that are not "unreserved" (reserved, column-name and type/function-name
/// keywords) from PostgreSQL 15's `pg_get_keywords()`, plus those added by 16 and 17. An
/// identifier equal to one of them must be quoted. Sorted, for binary search.
const KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "json",
    "json_array",
    "json_arrayagg",
    "json_exists",
    "json_object",
    "json_objectagg",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json_table",
    "json_value",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "merge_action",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// `name` as an SQL identifier, with the semantics of PostgreSQL's `quote_ident()`: left bare
/// when it is all lowercase ASCII letters, digits and `_`, does not start with a digit and is not
/// a keyword; otherwise double-quoted with embedded `"` doubled.
pub fn quote_ident(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && KEYWORDS.binary_search(&name).is_err();
    if bare {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `value` as an SQL string literal for a session with `standard_conforming_strings = on` (the
/// files this crate writes set it first): single quotes doubled, backslashes literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `value` as a libpq conninfo value: single-quoted, with `\` and `'` backslash-escaped. Any
/// text (spaces, `=`, quotes, unicode) survives.
pub fn conninfo_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Text safe inside an SQL `--` comment line: control characters (newlines included) are shown
/// escaped, so a name can never end the comment and start a statement.
pub fn comment_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a GUC list value the way the server's `SplitGUCList` does (used for `search_path`
/// and the other `GUC_LIST_QUOTE` settings): comma-separated, whitespace around items
/// ignored, double-quoted items keep their text with `""` meaning `"`, unquoted items are not
/// case-folded. `None` when the text is malformed.
pub fn split_guc_list(value: &str) -> Option<Vec<String>> {
    let mut items = Vec::new();
    let mut chars = value.chars().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    };
    skip_ws(&mut chars);
    if chars.peek().is_none() {
        return Some(items); // empty list
    }
    loop {
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        item.push('"');
                    }
                    '"' => break,
                    c => item.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                item.push(c);
                chars.next();
            }
            if item.is_empty() {
                return None;
            }
        }
        items.push(item);
        skip_ws(&mut chars);
        match chars.next() {
            None => return Some(items),
            Some(',') => skip_ws(&mut chars),
            Some(_) => return None,
        }
    }
}

/// Settings whose value is a list of quoted items (`GUC_LIST_QUOTE`), as in pg_dump's
/// `variable_is_guc_list_quote`.
fn is_guc_list_quote(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "local_preload_libraries"
            | "search_path"
            | "session_preload_libraries"
            | "shared_preload_libraries"
            | "temp_tablespaces"
            | "unix_socket_directories"
    )
}

/// `SET <name> TO <value>` for one `name=value` entry of `pg_db_role_setting.setconfig`, as
/// pg_dump's `makeAlterConfigCommand` writes it: list settings become a list of literals,
/// everything else one literal. `None` for an entry without `=`.
pub fn set_clause(entry: &str) -> Option<String> {
    let (name, value) = entry.split_once('=')?;
    let rendered = if is_guc_list_quote(name) {
        match split_guc_list(value) {
            Some(items) if !items.is_empty() => items
                .iter()
                .map(|i| quote_literal(i))
                .collect::<Vec<_>>()
                .join(", "),
            // Malformed or empty: keep the text as it is, as one literal.
            _ => quote_literal(value),
        }
    } else {
        quote_literal(value)
    };
    Some(format!("SET {} TO {rendered}", quote_ident(name)))
}

/// Quotes `words` so that [`pgbackman_core::params::split_shell_words`] gives them back.
pub fn shell_join(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_sorted() {
        let mut sorted = KEYWORDS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, KEYWORDS);
    }

    #[test]
    fn identifiers() {
        let cases = [
            ("alice", "alice"),
            ("_x1", "_x1"),
            ("Alice", "\"Alice\""),
            ("1abc", "\"1abc\""),
            ("user", "\"user\""),
            ("select", "\"select\""),
            ("role", "role"), // unreserved
            ("my role", "\"my role\""),
            ("a\"b", "\"a\"\"b\""),
            ("ünï", "\"ünï\""),
            ("", "\"\""),
            ("a$b", "\"a$b\""),
            ("x.y", "\"x.y\""),
        ];
        for (name, want) in cases {
            assert_eq!(quote_ident(name), want, "{name:?}");
        }
    }

    #[test]
    fn literals_and_conninfo() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "'a\\b'");
        assert_eq!(conninfo_value("my db"), "'my db'");
        assert_eq!(conninfo_value("a'b\\c=d"), "'a\\'b\\\\c=d'");
    }

    #[test]
    fn comments_cannot_break_out() {
        assert_eq!(comment_text("a\nDROP TABLE x;"), "a\\nDROP TABLE x;");
        assert_eq!(comment_text("ok ünï"), "ok ünï");
    }

    #[test]
    fn guc_lists() {
        assert_eq!(
            split_guc_list("\"$user\", public").unwrap(),
            vec!["$user", "public"]
        );
        assert_eq!(
            split_guc_list(" a ,\"B \"\"q\"\"\",c").unwrap(),
            vec!["a", "B \"q\"", "c"]
        );
        assert_eq!(split_guc_list("").unwrap(), Vec::<String>::new());
        assert_eq!(split_guc_list("a,,b"), None);
        assert_eq!(split_guc_list("\"open"), None);
        assert_eq!(split_guc_list("a b"), None);
    }

    #[test]
    fn set_clauses() {
        assert_eq!(
            set_clause("search_path=\"$user\", public").unwrap(),
            "SET search_path TO '$user', 'public'"
        );
        assert_eq!(
            set_clause("work_mem=64MB").unwrap(),
            "SET work_mem TO '64MB'"
        );
        assert_eq!(
            set_clause("myapp.note=it's=fine").unwrap(),
            "SET \"myapp.note\" TO 'it''s=fine'"
        );
        assert_eq!(set_clause("broken"), None);
    }

    #[test]
    fn shell_join_round_trips() {
        let words: Vec<String> = ["--exclude-table=my 'table'", "-n", "a\"b$c", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let joined = shell_join(&words);
        assert_eq!(
            pgbackman_core::params::split_shell_words(&joined).unwrap(),
            words
        );
    }
}
