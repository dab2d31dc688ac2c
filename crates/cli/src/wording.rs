//! Wording shared by the commands' messages: schedules in one form, sentences inside others,
//! errors that name their node once.

use pgbackman_core::model;

/// A sentence used inside another one, in parentheses: without its own final period (no
/// "(At 03:00 every day.).").
pub fn sentence_part(s: &str) -> String {
    s.trim_end().trim_end_matches('.').to_string()
}

/// A selection error that names the node: "... does not exist on PgSQL node pg01", said once.
pub fn on_node_error(e: &model::SelectionError, fqdn: &str) -> anyhow::Error {
    let msg = e.to_string();
    match msg.strip_suffix("the PgSQL node") {
        Some(head) => anyhow::anyhow!("{head}PgSQL node {fqdn}"),
        None => anyhow::anyhow!("{msg} (PgSQL node {fqdn})"),
    }
}

/// A cron line in its one shown form: numbers without leading zeros (`5 6 * * *`, whether the
/// minute was drawn at random as `05` or typed as `5`). Anything that is not a 5-field line of
/// numbers, ranges, lists and steps is left as it is.
pub fn schedule_text(line: &str) -> String {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let numeric = |f: &str| {
        f.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '*' | ',' | '-' | '/'))
    };
    if fields.len() != 5 || !fields.iter().all(|f| numeric(f)) {
        return line.to_string();
    }
    fields
        .iter()
        .map(|f| {
            let mut out = String::new();
            let mut num = String::new();
            for c in f.chars().chain(std::iter::once(' ')) {
                if c.is_ascii_digit() {
                    num.push(c);
                    continue;
                }
                if !num.is_empty() {
                    let t = num.trim_start_matches('0');
                    out.push_str(if t.is_empty() { "0" } else { t });
                    num.clear();
                }
                if c != ' ' {
                    out.push(c);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_have_one_form() {
        assert_eq!(schedule_text("05 06 * * *"), "5 6 * * *");
        assert_eq!(schedule_text("00 00 1-05 */02 1,03"), "0 0 1-5 */2 1,3");
        assert_eq!(schedule_text("30 2 * * mon-fri"), "30 2 * * mon-fri");
        assert_eq!(schedule_text("At 06:05"), "At 06:05");
    }

    #[test]
    fn a_description_inside_parentheses_has_no_period() {
        assert_eq!(sentence_part("At 03:00 every day."), "At 03:00 every day");
    }
}
