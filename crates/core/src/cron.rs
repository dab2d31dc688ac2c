//! Classic 5-field crontab schedules.
//!
//! The catalog stores the five fields of a backup definition separately (`minutes_cron`,
//! `hours_cron`, `day_month_cron`, `month_cron`, `weekday_cron`), so a [`CronSchedule`] is built
//! from five strings ([`CronSchedule::parse_fields`]) or from one line
//! ([`CronSchedule::parse_line`]).
//!
//! Semantics are those of Vixie cron / cronie:
//! - five fields, no seconds, no years;
//! - `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, comma lists of these;
//! - month names `jan`..`dec` and weekday names `sun`..`sat`, case-insensitive;
//! - 0 and 7 are both Sunday;
//! - when both day-of-month and day-of-week are restricted (neither begins with `*`), a day
//!   matches when EITHER matches; when one of them begins with `*` both must match (so
//!   `*` alone simply leaves the other field in charge).
//!
//! Quartz/croner extensions (`?`, `L`, `W`, `#`, seconds, years, `+` prefix) are rejected, so a
//! schedule accepted here means the same thing in a system crontab.
//!
//! Every field is validated here before `croner` sees it, so an error says which field is wrong
//! and why. Fire times come from `croner`, which handles daylight-saving changes as documented:
//! a fixed-time job (single minute and hour) whose wall-clock time falls into a DST gap runs at the
//! first instant after the gap, and runs only once (at the earlier instant) when its time is
//! repeated; interval/wildcard jobs skip the gap and run in both halves of a repeated hour.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Timelike};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// One of the five fields of a crontab schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CronField {
    /// Minute, 0-59.
    Minute,
    /// Hour, 0-23.
    Hour,
    /// Day of month, 1-31.
    DayOfMonth,
    /// Month, 1-12 or `jan`-`dec`.
    Month,
    /// Day of week, 0-7 (0 and 7 are Sunday) or `sun`-`sat`.
    DayOfWeek,
}

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
/// Longest length of each month (February counts 29 days, as in a leap year).
const MONTH_MAX_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl CronField {
    /// The five fields in crontab order.
    pub const ALL: [CronField; 5] = [
        CronField::Minute,
        CronField::Hour,
        CronField::DayOfMonth,
        CronField::Month,
        CronField::DayOfWeek,
    ];

    /// Name used in messages: `minute`, `hour`, `day-of-month`, `month`, `day-of-week`.
    pub fn name(self) -> &'static str {
        match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        }
    }

    /// Smallest number the field accepts.
    pub fn min(self) -> u32 {
        match self {
            CronField::Minute | CronField::Hour | CronField::DayOfWeek => 0,
            CronField::DayOfMonth | CronField::Month => 1,
        }
    }

    /// Largest number the field accepts (7 for day-of-week: Sunday again).
    pub fn max(self) -> u32 {
        match self {
            CronField::Minute => 59,
            CronField::Hour => 23,
            CronField::DayOfMonth => 31,
            CronField::Month => 12,
            CronField::DayOfWeek => 7,
        }
    }

    /// One sentence listing the syntax the field accepts, with an example.
    pub fn syntax_hint(self) -> &'static str {
        match self {
            CronField::Minute => {
                "a minute field takes *, a number 0-59, a range a-b, a step */n or a-b/n, or a comma list of these (e.g. 30, 0,30 or */15)"
            }
            CronField::Hour => {
                "an hour field takes *, a number 0-23, a range a-b, a step */n or a-b/n, or a comma list of these (e.g. 2, 1-6 or */6)"
            }
            CronField::DayOfMonth => {
                "a day-of-month field takes *, a number 1-31, a range a-b, a step */n or a-b/n, or a comma list of these (e.g. 1, 1,15 or */2)"
            }
            CronField::Month => {
                "a month field takes *, a number 1-12 or a name jan-dec, a range a-b, a step */n or a-b/n, or a comma list of these (e.g. jan-mar or */3)"
            }
            CronField::DayOfWeek => {
                "a day-of-week field takes *, a number 0-7 (0 and 7 are Sunday) or a name sun-sat, a range a-b, a step */n or a-b/n, or a comma list of these (e.g. mon-fri or sat,sun)"
            }
        }
    }

    /// Names accepted instead of numbers, and the number of the first name.
    fn names(self) -> (&'static [&'static str], u32) {
        match self {
            CronField::Month => (&MONTH_NAMES, 1),
            CronField::DayOfWeek => (&WEEKDAY_NAMES, 0),
            _ => (&[], 0),
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A field of a schedule is not valid: which field, its text, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} field \"{value}\": {reason}; {hint}", hint = field.syntax_hint())]
pub struct CronError {
    /// The field that is wrong.
    pub field: CronField,
    /// The field's text as given.
    pub value: String,
    /// What is wrong with it, e.g. `25 is out of range 0-23`.
    pub reason: String,
}

/// A whole crontab line is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronLineError {
    /// The line does not have exactly five fields.
    #[error(
        "schedule \"{line}\" has {found} field(s): a schedule has 5, minute hour day-of-month month day-of-week (e.g. \"30 2 * * *\")"
    )]
    FieldCount {
        /// The line as given.
        line: String,
        /// How many whitespace-separated fields it has.
        found: usize,
    },
    /// An `@` shortcut that is not one of `@hourly`, `@daily`, `@midnight`, `@weekly`,
    /// `@monthly`, `@yearly`, `@annually` (`@reboot` has no meaning for backups).
    #[error(
        "schedule \"{0}\" is not a known shortcut: use @hourly, @daily, @weekly, @monthly or @yearly, or 5 fields"
    )]
    Shortcut(String),
    /// One of the fields is not valid.
    #[error(transparent)]
    Field(#[from] CronError),
}

/// Parsed form of one field: the set of values and a numeric rendering for croner.
struct ParsedField {
    /// Bit i set when value i matches (day-of-week 7 is folded into 0).
    bits: u64,
    /// Same field with names replaced by numbers.
    normalized: String,
}

fn field_error(field: CronField, value: &str, reason: impl Into<String>) -> CronError {
    CronError {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Validates one field of a schedule.
///
/// Leading and trailing whitespace is ignored; anything else that is not classic cron syntax is
/// rejected with a reason, e.g. `invalid hour field "25": 25 is out of range 0-23; ...`.
pub fn validate_cron_field(field: CronField, value: &str) -> Result<(), CronError> {
    parse_field(field, value).map(|_| ())
}

fn parse_field(field: CronField, raw: &str) -> Result<ParsedField, CronError> {
    let text = raw.trim();
    let err = |reason: String| field_error(field, raw, reason);
    if text.is_empty() {
        return Err(err("the field is empty".into()));
    }
    if text.chars().any(char::is_whitespace) {
        return Err(err(
            "a field cannot contain spaces (write a list as 1,2,3 without spaces)".into(),
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "*,-/".contains(*c)))
    {
        let extra = if "?#".contains(c) {
            " (?, L, W and # are Quartz extensions, not classic cron)"
        } else {
            ""
        };
        return Err(err(format!("character '{c}' is not allowed{extra}")));
    }
    let mut bits = 0u64;
    let mut items = Vec::new();
    for item in text.split(',') {
        let (lo, hi, step, normalized) = parse_item(field, item).map_err(err)?;
        let mut v = lo;
        while v <= hi {
            let bit = if field == CronField::DayOfWeek && v == 7 {
                0
            } else {
                v
            };
            bits |= 1 << bit;
            v += step;
        }
        items.push(normalized);
    }
    // croner accepts `*` only as a whole field, not as a list item.
    if items.len() > 1 {
        let whole = format!("{}-{}", field.min(), field.max());
        for item in &mut items {
            if item == "*" {
                item.clone_from(&whole);
            }
        }
    }
    Ok(ParsedField {
        bits,
        normalized: items.join(","),
    })
}

/// Parses one list item into (low, high, step, numeric rendering).
fn parse_item(field: CronField, item: &str) -> Result<(u32, u32, u32, String), String> {
    if item.is_empty() {
        return Err("empty list item (a comma too many?)".into());
    }
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => {
            if step.contains('/') {
                return Err(format!("\"{item}\" has more than one '/'"));
            }
            if step.is_empty() {
                return Err(format!("\"{item}\" has no step after '/'"));
            }
            if !step.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("step \"{step}\" in \"{item}\" is not a number"));
            }
            let n: u32 = step.parse().unwrap_or(u32::MAX);
            if n == 0 || n > field.max() {
                return Err(format!(
                    "step {step} in \"{item}\" is not allowed: a step is a number from 1 to {}",
                    field.max()
                ));
            }
            (range, Some(n))
        }
        None => (item, None),
    };
    let (lo, hi, rendered) = if range == "*" {
        (field.min(), field.max(), "*".to_string())
    } else if let Some((a, b)) = range.split_once('-') {
        if a.is_empty() {
            return Err(format!(
                "range \"{range}\" has no start (numbers cannot be negative)"
            ));
        }
        if b.is_empty() {
            return Err(format!("range \"{range}\" has no end"));
        }
        if b.contains('-') {
            return Err(format!("\"{range}\" has more than one '-'"));
        }
        let lo = parse_value(field, a, false)?;
        let hi = parse_value(field, b, lo > 0)?;
        if lo > hi {
            return Err(format!(
                "range {a}-{b} goes backwards: its start must not be greater than its end"
            ));
        }
        (lo, hi, format!("{lo}-{hi}"))
    } else {
        if step.is_some() {
            return Err(format!(
                "\"{item}\" needs * or a range before the '/': write */n or a-b/n (\"5/10\" is not classic cron)"
            ));
        }
        let v = parse_value(field, range, false)?;
        (v, v, v.to_string())
    };
    match step {
        Some(n) => Ok((lo, hi, n, format!("{rendered}/{n}"))),
        None => Ok((lo, hi, 1, rendered)),
    }
}

/// Parses a number or a name. `sunday_is_seven` makes `sun` mean 7 (end of a weekday range).
fn parse_value(field: CronField, s: &str, sunday_is_seven: bool) -> Result<u32, String> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let n: u32 = s.parse().unwrap_or(u32::MAX);
        if n < field.min() || n > field.max() {
            return Err(format!(
                "{s} is out of range {}-{}",
                field.min(),
                field.max()
            ));
        }
        return Ok(n);
    }
    let (names, first) = field.names();
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        let v = first + i as u32;
        return Ok(
            if field == CronField::DayOfWeek && v == 0 && sunday_is_seven {
                7
            } else {
                v
            },
        );
    }
    let quartz = matches!(field, CronField::DayOfMonth | CronField::DayOfWeek)
        && s.chars().any(|c| "LWlw".contains(c));
    Err(match field {
        CronField::Month => format!("\"{s}\" is not a number 1-12 or a month name jan-dec"),
        CronField::DayOfWeek if !quartz => {
            format!("\"{s}\" is not a number 0-7 or a weekday name sun-sat")
        }
        _ if quartz => format!(
            "\"{s}\" is not a number (?, L, W and # are Quartz extensions, not classic cron)"
        ),
        _ => format!("\"{s}\" is not a number"),
    })
}

/// A validated classic crontab schedule.
///
/// Equality compares the five fields as text (trimmed), not the set of times they select.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    fields: [String; 5],
    cron: Cron,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.fields == other.fields
    }
}

impl Eq for CronSchedule {}

impl std::hash::Hash for CronSchedule {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.fields.hash(state);
    }
}

impl CronSchedule {
    /// Builds a schedule from the five fields as the catalog stores them.
    ///
    /// Each field is trimmed; the texts are kept as given (names and case preserved) for
    /// [`Self::fields`] and [`Self::to_line`]. Also rejects a schedule that can never fire
    /// (e.g. day 30 in February with day-of-week `*`).
    pub fn parse_fields(
        minute: &str,
        hour: &str,
        day_of_month: &str,
        month: &str,
        day_of_week: &str,
    ) -> Result<CronSchedule, CronError> {
        let raw = [minute, hour, day_of_month, month, day_of_week];
        let mut parsed = Vec::with_capacity(5);
        for (field, text) in CronField::ALL.into_iter().zip(raw) {
            parsed.push(parse_field(field, text)?);
        }
        let fields = raw.map(|s| s.trim().to_string());
        let (dom, dow) = (&fields[2], &fields[4]);
        // Vixie cron: if either day field begins with '*', both must match; else either.
        let dom_and_dow = dom.starts_with('*') || dow.starts_with('*');
        if dom_and_dow && dom != "*" {
            let longest = (1..=12u32)
                .filter(|m| parsed[3].bits & (1 << m) != 0)
                .map(|m| MONTH_MAX_DAYS[m as usize - 1])
                .max()
                .unwrap_or(31);
            let first_day = parsed[2].bits.trailing_zeros();
            if first_day > longest {
                return Err(field_error(
                    CronField::DayOfMonth,
                    day_of_month,
                    format!(
                        "no selected day exists in the selected month(s) (the longest has {longest} days), so the schedule would never run"
                    ),
                ));
            }
        }
        let line = parsed
            .iter()
            .map(|p| p.normalized.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .dom_and_dow(dom_and_dow)
            .build()
            .parse(&line)
            .map_err(|e| {
                // Unreachable when the validation above is right; kept as a clear error.
                field_error(
                    CronField::Minute,
                    minute,
                    format!("the scheduler rejected \"{line}\": {e}"),
                )
            })?;
        Ok(CronSchedule { fields, cron })
    }

    /// Parses a line `"m h dom mon dow"` (fields separated by any whitespace), or one of the
    /// shortcuts `@hourly`, `@daily`/`@midnight`, `@weekly`, `@monthly`, `@yearly`/`@annually`,
    /// which are expanded to their five fields.
    pub fn parse_line(line: &str) -> Result<CronSchedule, CronLineError> {
        let text = line.trim();
        if let Some(name) = text.strip_prefix('@') {
            let expanded = match name.to_ascii_lowercase().as_str() {
                "hourly" => "0 * * * *",
                "daily" | "midnight" => "0 0 * * *",
                "weekly" => "0 0 * * 0",
                "monthly" => "0 0 1 * *",
                "yearly" | "annually" => "0 0 1 1 *",
                _ => return Err(CronLineError::Shortcut(text.to_string())),
            };
            return Self::parse_line(expanded);
        }
        let parts: Vec<&str> = text.split_whitespace().collect();
        match parts.as_slice() {
            [m, h, dom, mon, dow] => Ok(Self::parse_fields(m, h, dom, mon, dow)?),
            _ => Err(CronLineError::FieldCount {
                line: line.to_string(),
                found: parts.len(),
            }),
        }
    }

    /// The five fields as stored (trimmed), in crontab order.
    pub fn fields(&self) -> [&str; 5] {
        [
            self.fields[0].as_str(),
            self.fields[1].as_str(),
            self.fields[2].as_str(),
            self.fields[3].as_str(),
            self.fields[4].as_str(),
        ]
    }

    /// The minute field.
    pub fn minute(&self) -> &str {
        &self.fields[0]
    }

    /// The hour field.
    pub fn hour(&self) -> &str {
        &self.fields[1]
    }

    /// The day-of-month field.
    pub fn day_of_month(&self) -> &str {
        &self.fields[2]
    }

    /// The month field.
    pub fn month(&self) -> &str {
        &self.fields[3]
    }

    /// The day-of-week field.
    pub fn day_of_week(&self) -> &str {
        &self.fields[4]
    }

    /// Whether a day must match both day fields (one of them begins with `*`) rather than
    /// either (both restricted), as in Vixie cron.
    pub fn days_must_match_both(&self) -> bool {
        self.fields[2].starts_with('*') || self.fields[4].starts_with('*')
    }

    /// The schedule as one crontab line, `"m h dom mon dow"`.
    pub fn to_line(&self) -> String {
        self.fields.join(" ")
    }

    /// The first fire time strictly after `after`, in `after`'s time zone; `None` if there is
    /// none within croner's search limit (about a year of wall-clock seconds past the last
    /// matching date; in practice every accepted schedule has one).
    pub fn next_after<Tz: TimeZone>(&self, after: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        self.cron.find_next_occurrence(after, false).ok()
    }

    /// The last fire time strictly before `before` (e.g. to detect a fire missed while the agent
    /// was down).
    pub fn prev_before<Tz: TimeZone>(&self, before: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        // croner works in whole seconds: a fire at second s is before `before` when
        // `before` has a fraction past s, so that second is searched inclusively.
        if before.nanosecond() != 0 {
            let whole = before.with_nanosecond(0)?;
            self.cron.find_previous_occurrence(&whole, true).ok()
        } else {
            self.cron.find_previous_occurrence(before, false).ok()
        }
    }

    /// The next `n` fire times strictly after `after`.
    pub fn upcoming<Tz: TimeZone>(&self, after: &DateTime<Tz>, n: usize) -> Vec<DateTime<Tz>> {
        let mut out: Vec<DateTime<Tz>> = Vec::with_capacity(n);
        let mut cursor = after.clone();
        while out.len() < n {
            match self.next_after(&cursor) {
                Some(t) => {
                    cursor = t.clone();
                    out.push(t);
                }
                None => break,
            }
        }
        out
    }

    /// The schedule in English words, from croner's `describe()`, lightly edited: e.g.
    /// `At 02:30 every day.`, `Every 15 minutes, of hour 2.`, `At 01:15, on Monday, Tuesday,
    /// Wednesday, Thursday, and Friday.`
    pub fn describe(&self) -> String {
        let mut text = self.cron.describe();
        if let Some(rest) = text.strip_prefix("At every ") {
            text = format!("Every {rest}");
        }
        // croner says "At 02:30." for a daily job; say that it is daily.
        let b = text.as_bytes();
        let at_time_only = b.len() == 9
            && text.starts_with("At ")
            && b[5] == b':'
            && b[8] == b'.'
            && [3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit());
        if at_time_only && self.fields[2] == "*" && self.fields[3] == "*" && self.fields[4] == "*" {
            text = format!("{} every day.", &text[..8]);
        }
        text
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_line())
    }
}

impl FromStr for CronSchedule {
    type Err = CronLineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CronSchedule::parse_line(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, Utc};
    use chrono_tz::Europe::Oslo;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn bits_of(field: CronField, s: &str) -> Vec<u32> {
        let b = parse_field(field, s).unwrap().bits;
        (0..64).filter(|i| b & (1u64 << i) != 0).collect()
    }

    #[test]
    fn valid_fields_expand_to_expected_values() {
        use CronField::*;
        let cases: &[(CronField, &str, Vec<u32>)] = &[
            (Minute, "*", (0..=59).collect()),
            (Minute, "0", vec![0]),
            (Minute, "59", vec![59]),
            (Minute, "07", vec![7]),
            (Minute, "*/15", vec![0, 15, 30, 45]),
            (Minute, "1-30/5", vec![1, 6, 11, 16, 21, 26]),
            (Minute, "0,30", vec![0, 30]),
            (Minute, "5,1-3,*/20", vec![0, 1, 2, 3, 5, 20, 40]),
            (Minute, "01-59", (1..=59).collect()),
            (Minute, "*/59", vec![0, 59]),
            (Minute, " 5 ", vec![5]),
            (Hour, "*", (0..=23).collect()),
            (Hour, "23", vec![23]),
            (Hour, "*/6", vec![0, 6, 12, 18]),
            (Hour, "1-6", (1..=6).collect()),
            (Hour, "22-23,0-1", vec![0, 1, 22, 23]),
            (DayOfMonth, "*", (1..=31).collect()),
            (DayOfMonth, "1", vec![1]),
            (DayOfMonth, "31", vec![31]),
            (DayOfMonth, "*/10", vec![1, 11, 21, 31]),
            (DayOfMonth, "1,15", vec![1, 15]),
            (Month, "*", (1..=12).collect()),
            (Month, "jan", vec![1]),
            (Month, "DEC", vec![12]),
            (Month, "Jan-Mar", vec![1, 2, 3]),
            (Month, "*/3", vec![1, 4, 7, 10]),
            (Month, "feb,aug,12", vec![2, 8, 12]),
            (DayOfWeek, "*", (0..=6).collect()),
            (DayOfWeek, "0", vec![0]),
            (DayOfWeek, "7", vec![0]),
            (DayOfWeek, "SUN", vec![0]),
            (DayOfWeek, "mon-fri", vec![1, 2, 3, 4, 5]),
            (DayOfWeek, "MON-Fri", vec![1, 2, 3, 4, 5]),
            (DayOfWeek, "fri-sun", vec![0, 5, 6]),
            (DayOfWeek, "5-7", vec![0, 5, 6]),
            (DayOfWeek, "sat,sun", vec![0, 6]),
            (DayOfWeek, "*/2", vec![0, 2, 4, 6]),
            (DayOfWeek, "0-7", (0..=6).collect()),
        ];
        for (field, text, want) in cases {
            assert_eq!(&bits_of(*field, text), want, "{field} {text:?}");
            assert!(validate_cron_field(*field, text).is_ok());
        }
    }

    #[test]
    fn invalid_fields_say_which_field_and_why() {
        use CronField::*;
        let cases: &[(CronField, &str, &str)] = &[
            (Minute, "", "the field is empty"),
            (Minute, "   ", "the field is empty"),
            (Minute, "60", "60 is out of range 0-59"),
            (Minute, "99999999999", "99999999999 is out of range 0-59"),
            (Minute, "1 2", "cannot contain spaces"),
            (Minute, "1,,2", "empty list item"),
            (Minute, "1,", "empty list item"),
            (Minute, ",1", "empty list item"),
            (Minute, "*/0", "step 0"),
            (Minute, "*/60", "step 60"),
            (Minute, "*/", "no step"),
            (Minute, "*/x", "step \"x\""),
            (Minute, "*/2/3", "more than one '/'"),
            (Minute, "5/10", "needs * or a range"),
            (Minute, "-1", "has no start"),
            (Minute, "-1-5", "has no start"),
            (Minute, "5-", "has no end"),
            (Minute, "1-2-3", "more than one '-'"),
            (Minute, "10-5", "range 10-5 goes backwards"),
            (Minute, "abc", "\"abc\" is not a number"),
            (Minute, "jan", "\"jan\" is not a number"),
            (Minute, "**", "\"**\" is not a number"),
            (Minute, "*-5", "\"*\" is not a number"),
            (Minute, "+5", "character '+' is not allowed"),
            (Minute, "5.5", "character '.' is not allowed"),
            (Hour, "24", "24 is out of range 0-23"),
            (Hour, "25", "25 is out of range 0-23"),
            (Hour, "0-24", "24 is out of range 0-23"),
            (DayOfMonth, "0", "0 is out of range 1-31"),
            (DayOfMonth, "32", "32 is out of range 1-31"),
            (DayOfMonth, "L", "Quartz"),
            (DayOfMonth, "15W", "Quartz"),
            (DayOfMonth, "?", "Quartz"),
            (Month, "0", "0 is out of range 1-12"),
            (Month, "13", "13 is out of range 1-12"),
            (Month, "january", "not a number 1-12 or a month name"),
            (Month, "mon", "not a number 1-12 or a month name"),
            (DayOfWeek, "8", "8 is out of range 0-7"),
            (DayOfWeek, "1#2", "Quartz"),
            (DayOfWeek, "5L", "Quartz"),
            (DayOfWeek, "monday", "not a number 0-7 or a weekday name"),
            (DayOfWeek, "jan", "not a number 0-7 or a weekday name"),
            (DayOfWeek, "sat-mon", "goes backwards"),
            (DayOfWeek, "*/8", "step 8"),
        ];
        for (field, text, why) in cases {
            let e = validate_cron_field(*field, text).unwrap_err();
            assert_eq!(e.field, *field, "{text:?}");
            assert_eq!(e.value, *text);
            assert!(
                e.reason.contains(why),
                "{field} {text:?}: {} (wanted {why:?})",
                e.reason
            );
            let shown = e.to_string();
            assert!(shown.starts_with(&format!("invalid {} field \"{text}\": ", field.name())));
            assert!(shown.contains(field.syntax_hint()));
        }
    }

    #[test]
    fn error_display_is_exact() {
        let e = CronSchedule::parse_fields("30", "25", "*", "*", "*").unwrap_err();
        assert_eq!(e.field, CronField::Hour);
        assert_eq!(
            e.to_string(),
            format!(
                "invalid hour field \"25\": 25 is out of range 0-23; {}",
                CronField::Hour.syntax_hint()
            )
        );
        assert!(
            e.to_string()
                .contains("an hour field takes *, a number 0-23")
        );
    }

    #[test]
    fn first_bad_field_is_reported() {
        let e = CronSchedule::parse_fields("70", "25", "0", "13", "8").unwrap_err();
        assert_eq!(e.field, CronField::Minute);
        let e = CronSchedule::parse_fields("0", "0", "0", "13", "8").unwrap_err();
        assert_eq!(e.field, CronField::DayOfMonth);
        let e = CronSchedule::parse_fields("0", "0", "1", "1", "8").unwrap_err();
        assert_eq!(e.field, CronField::DayOfWeek);
    }

    #[test]
    fn parse_line_and_round_trip() {
        let c = CronSchedule::parse_line("  30 2\t*  * MON-fri ").unwrap();
        assert_eq!(c.fields(), ["30", "2", "*", "*", "MON-fri"]);
        assert_eq!(c.to_line(), "30 2 * * MON-fri");
        assert_eq!(c.to_string(), c.to_line());
        assert_eq!(c.minute(), "30");
        assert_eq!(c.hour(), "2");
        assert_eq!(c.day_of_month(), "*");
        assert_eq!(c.month(), "*");
        assert_eq!(c.day_of_week(), "MON-fri");
        let again: CronSchedule = c.to_line().parse().unwrap();
        assert_eq!(again, c);
        let f = CronSchedule::parse_fields(" 30", "2 ", "*", "*", "MON-fri").unwrap();
        assert_eq!(f, c);
    }

    #[test]
    fn parse_line_errors() {
        for (line, found) in [
            ("", 0),
            ("* * * *", 4),
            ("0 * * * * *", 6),
            ("0 0 * * * 2026", 6),
        ] {
            match CronSchedule::parse_line(line).unwrap_err() {
                CronLineError::FieldCount { found: f, .. } => assert_eq!(f, found, "{line:?}"),
                other => panic!("{line:?}: {other}"),
            }
        }
        let e = CronSchedule::parse_line("* * * *").unwrap_err().to_string();
        assert!(e.contains("has 4 field(s)"), "{e}");
        assert!(matches!(
            CronSchedule::parse_line("@reboot"),
            Err(CronLineError::Shortcut(_))
        ));
        match CronSchedule::parse_line("0 25 * * *").unwrap_err() {
            CronLineError::Field(e) => assert_eq!(e.field, CronField::Hour),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn shortcuts_expand() {
        for (s, line) in [
            ("@hourly", "0 * * * *"),
            ("@daily", "0 0 * * *"),
            ("@MIDNIGHT", "0 0 * * *"),
            ("@weekly", "0 0 * * 0"),
            ("@monthly", "0 0 1 * *"),
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
        ] {
            assert_eq!(CronSchedule::parse_line(s).unwrap().to_line(), line);
        }
    }

    #[test]
    fn impossible_schedules_are_rejected() {
        for (dom, month, dow) in [
            ("30", "2", "*"),
            ("30,31", "feb", "*"),
            ("31", "4,6,9,11", "*"),
            ("31", "2", "*/2"),
        ] {
            let e = CronSchedule::parse_fields("0", "0", dom, month, dow).unwrap_err();
            assert_eq!(e.field, CronField::DayOfMonth, "{dom} {month} {dow}");
            assert!(e.reason.contains("never run"), "{}", e.reason);
        }
        // Either day field can match: Mondays in February still exist.
        let c = CronSchedule::parse_fields("0", "0", "30", "2", "1").unwrap();
        assert_eq!(
            c.next_after(&utc(2026, 1, 1, 0, 0)),
            Some(utc(2026, 2, 2, 0, 0))
        );
        // February 29th exists in leap years.
        let c = CronSchedule::parse_line("0 0 29 2 *").unwrap();
        assert_eq!(
            c.next_after(&utc(2026, 1, 1, 0, 0)),
            Some(utc(2028, 2, 29, 0, 0))
        );
    }

    #[test]
    fn next_after_simple_cases() {
        let cases: &[(&str, DateTime<Utc>, DateTime<Utc>)] = &[
            ("30 2 * * *", utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 2, 30)),
            ("30 2 * * *", utc(2026, 1, 1, 2, 30), utc(2026, 1, 2, 2, 30)),
            (
                "*/15 * * * *",
                utc(2026, 1, 1, 0, 7),
                utc(2026, 1, 1, 0, 15),
            ),
            (
                "*/15 * * * *",
                utc(2026, 1, 1, 23, 50),
                utc(2026, 1, 2, 0, 0),
            ),
            ("0 0 1 * *", utc(2026, 1, 15, 0, 0), utc(2026, 2, 1, 0, 0)),
            ("0 0 1 jan *", utc(2026, 1, 1, 0, 0), utc(2027, 1, 1, 0, 0)),
            // 2026-01-01 is a Thursday.
            ("0 9 * * mon", utc(2026, 1, 1, 0, 0), utc(2026, 1, 5, 9, 0)),
            ("0 9 * * 7", utc(2026, 1, 1, 0, 0), utc(2026, 1, 4, 9, 0)),
            ("0 9 * * 0", utc(2026, 1, 1, 0, 0), utc(2026, 1, 4, 9, 0)),
            ("0 9 * * sun", utc(2026, 1, 1, 0, 0), utc(2026, 1, 4, 9, 0)),
            (
                "0 9 * * sat,sun",
                utc(2026, 1, 1, 0, 0),
                utc(2026, 1, 3, 9, 0),
            ),
            // OR: the 13th or any Friday; the first Friday comes first.
            ("0 0 13 * fri", utc(2026, 1, 1, 0, 0), utc(2026, 1, 2, 0, 0)),
            (
                "0 0 13 * fri",
                utc(2026, 1, 10, 0, 0),
                utc(2026, 1, 13, 0, 0),
            ),
            // AND (a day field begins with '*'): odd days that are also Tuesdays
            // (Tuesdays are the 6th, 13th, 20th, 27th); OR would give the 1st.
            (
                "0 0 */2 * tue",
                utc(2026, 1, 1, 0, 0),
                utc(2026, 1, 13, 0, 0),
            ),
            // 1st of a month that is Sun/Tue/Thu/Sat: 2026-02-01 is a Sunday (OR: Jan 3).
            ("0 0 1 * */2", utc(2026, 1, 2, 0, 0), utc(2026, 2, 1, 0, 0)),
        ];
        for (line, after, want) in cases {
            let c = CronSchedule::parse_line(line).unwrap();
            assert_eq!(
                c.next_after(after).as_ref(),
                Some(want),
                "{line} after {after}"
            );
        }
    }

    #[test]
    fn rare_dates_are_found_years_ahead() {
        // AND mode: February 29th that is also a Sunday.
        let c = CronSchedule::parse_line("0 0 29 2 */7").unwrap();
        let want = (2026..2100)
            .filter_map(|y| NaiveDate::from_ymd_opt(y, 2, 29))
            .find(|d| d.weekday() == chrono::Weekday::Sun)
            .unwrap();
        let got = c.next_after(&utc(2026, 1, 1, 0, 0)).unwrap();
        assert_eq!(got.date_naive(), want);
    }

    #[test]
    fn next_after_is_strictly_after_with_fractions() {
        let c = CronSchedule::parse_line("30 2 * * *").unwrap();
        let fire = utc(2026, 1, 1, 2, 30);
        assert_eq!(
            c.next_after(&(fire - Duration::milliseconds(1))),
            Some(fire)
        );
        assert_eq!(c.next_after(&fire), Some(utc(2026, 1, 2, 2, 30)));
        assert_eq!(
            c.next_after(&(fire + Duration::milliseconds(500))),
            Some(utc(2026, 1, 2, 2, 30))
        );
    }

    #[test]
    fn prev_before_is_strictly_before() {
        let c = CronSchedule::parse_line("30 2 * * *").unwrap();
        let fire = utc(2026, 1, 2, 2, 30);
        assert_eq!(c.prev_before(&fire), Some(utc(2026, 1, 1, 2, 30)));
        assert_eq!(
            c.prev_before(&(fire + Duration::milliseconds(1))),
            Some(fire)
        );
        assert_eq!(c.prev_before(&(fire + Duration::hours(5))), Some(fire));
    }

    #[test]
    fn upcoming_lists_in_order() {
        let c = CronSchedule::parse_line("0 */6 * * *").unwrap();
        let got = c.upcoming(&utc(2026, 1, 1, 5, 0), 4);
        assert_eq!(
            got,
            vec![
                utc(2026, 1, 1, 6, 0),
                utc(2026, 1, 1, 12, 0),
                utc(2026, 1, 1, 18, 0),
                utc(2026, 1, 2, 0, 0)
            ]
        );
    }

    /// Independent oracle: Vixie cron's matching rule on a wall-clock minute.
    fn oracle(fields: [&str; 5], b: &[u64], t: NaiveDateTime) -> bool {
        let has = |i: usize, v: u32| b[i] & (1u64 << v) != 0;
        let dom = has(2, t.day());
        let dow = has(4, t.weekday().num_days_from_sunday());
        let day = if fields[2].starts_with('*') || fields[4].starts_with('*') {
            dom && dow
        } else {
            dom || dow
        };
        has(0, chrono::Timelike::minute(&t))
            && has(1, chrono::Timelike::hour(&t))
            && has(3, t.month())
            && day
    }

    #[test]
    fn croner_agrees_with_vixie_oracle() {
        let patterns = [
            "* * * * *",
            "*/7 * * * *",
            "0 0 1,15 * 1",
            "0 0 13 * 5",
            "0 0 */2 * 1",
            "0 0 1-7 * */3",
            "0 0 *,3 * 1",
            "30 4 1-10 * mon-wed",
            "15 1 * * mon-fri",
            "0 12 * feb-apr sun",
            "5 */5 31 * *",
            "45 23 * * 7",
            "0 0 29 * 2",
            "1-30/5 3,9 * * *",
            "0 0 1 * */2",
            "0 0 *,3 * 1",
            "0 0 1,3 * *,1",
        ];
        let start = NaiveDate::from_ymd_opt(2026, 1, 30)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        let minutes = 75 * 24 * 60;
        for p in patterns {
            let c = CronSchedule::parse_line(p).unwrap();
            let fields = c.fields();
            let bits: Vec<u64> = CronField::ALL
                .iter()
                .zip(fields)
                .map(|(f, s)| parse_field(*f, s).unwrap().bits)
                .collect();
            let want: Vec<NaiveDateTime> = (0..minutes)
                .map(|m| start + Duration::minutes(m))
                .filter(|t| oracle(fields, &bits, *t))
                .skip_while(|t| *t == start)
                .collect();
            let end = start + Duration::minutes(minutes);
            let mut got = Vec::new();
            let mut cur = Utc.from_utc_datetime(&start);
            while let Some(n) = c.next_after(&cur) {
                if n.naive_utc() >= end {
                    break;
                }
                got.push(n.naive_utc());
                cur = n;
            }
            assert_eq!(got, want, "{p}");
        }
    }

    #[test]
    fn every_validated_field_is_accepted_by_croner() {
        let samples: [&[&str]; 5] = [
            &[
                "*",
                "0",
                "59",
                "*/1",
                "*/59",
                "0-59",
                "0-59/30",
                "1,2,3",
                "5,*/10,1-3",
            ],
            &["*", "0", "23", "*/23", "0-23/2", "1-6", "01-06"],
            &["*", "1", "31", "*/31", "1-31/2", "1,15,28"],
            &["*", "1", "12", "*/12", "jan-dec", "JAN-Feb/1", "dec"],
            &[
                "*", "0", "7", "*/7", "0-7", "sun-sat", "mon-sun", "fri-sun", "SAT", "1-5/2",
            ],
        ];
        for (i, list) in samples.iter().enumerate() {
            for s in *list {
                let mut f = ["0", "0", "1", "1", "*"];
                f[i] = s;
                CronSchedule::parse_fields(f[0], f[1], f[2], f[3], f[4])
                    .unwrap_or_else(|e| panic!("{f:?}: {e}"));
            }
        }
    }

    #[test]
    fn describe_in_words() {
        for (line, want) in [
            ("30 2 * * *", "At 02:30 every day."),
            ("*/15 * * * *", "Every 15 minutes."),
            ("* * * * *", "Every minute."),
            (
                "15 1 * * mon-fri",
                "At 01:15, on Monday, Tuesday, Wednesday, Thursday, and Friday.",
            ),
            ("0 0 1 * *", "At 00:00, on day 1."),
            ("0 0 1,15 * 1", "At 00:00, on day 1 and 15 or Monday."),
            (
                "0 3 * jan-mar *",
                "At 03:00, in January, February, and March.",
            ),
            ("0 0 * * 7", "At 00:00, on Sunday."),
        ] {
            assert_eq!(
                CronSchedule::parse_line(line).unwrap().describe(),
                want,
                "{line}"
            );
        }
        let and = CronSchedule::parse_line("0 0 */2 * 1").unwrap();
        assert!(and.days_must_match_both());
        assert!(
            and.describe().ends_with("(if it is also Monday)."),
            "{}",
            and.describe()
        );
        assert!(
            !CronSchedule::parse_line("0 0 1 * 1")
                .unwrap()
                .days_must_match_both()
        );
    }

    fn oslo_fires_on(c: &CronSchedule, y: i32, m: u32, d: u32) -> Vec<DateTime<chrono_tz::Tz>> {
        let day = NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let start = Oslo
            .from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap())
            .unwrap();
        let mut out = Vec::new();
        let mut cur = start - Duration::seconds(1);
        while let Some(n) = c.next_after(&cur) {
            if n.date_naive() != day {
                break;
            }
            out.push(n);
            cur = n;
        }
        out
    }

    #[test]
    fn dst_spring_forward_fixed_time_fires_once() {
        // 2026-03-29 in Oslo: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let c = CronSchedule::parse_line("30 2 * * *").unwrap();
        let fires = oslo_fires_on(&c, 2026, 3, 29);
        assert_eq!(fires.len(), 1, "{fires:?}");
        // croner runs a fixed-time job that falls into the gap at the first instant after it.
        assert_eq!(fires[0].with_timezone(&Utc), utc(2026, 3, 29, 1, 0));
        assert_eq!(fires[0].format("%H:%M %Z").to_string(), "03:00 CEST");
        // Day before and after: ordinary.
        assert_eq!(
            oslo_fires_on(&c, 2026, 3, 28)[0].with_timezone(&Utc),
            utc(2026, 3, 28, 1, 30)
        );
        assert_eq!(
            oslo_fires_on(&c, 2026, 3, 30)[0].with_timezone(&Utc),
            utc(2026, 3, 30, 0, 30)
        );
        // The whole sequence across the change, from the evening before.
        let from = Oslo.with_ymd_and_hms(2026, 3, 28, 20, 0, 0).unwrap();
        let seq: Vec<String> = c
            .upcoming(&from, 3)
            .iter()
            .map(|t| t.format("%m-%d %H:%M %Z").to_string())
            .collect();
        assert_eq!(
            seq,
            ["03-29 03:00 CEST", "03-30 02:30 CEST", "03-31 02:30 CEST"]
        );
    }

    #[test]
    fn dst_fall_back_fixed_time_fires_once() {
        // 2026-10-25 in Oslo: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
        let c = CronSchedule::parse_line("30 2 * * *").unwrap();
        let fires = oslo_fires_on(&c, 2026, 10, 25);
        assert_eq!(fires.len(), 1, "{fires:?}");
        assert_eq!(fires[0].with_timezone(&Utc), utc(2026, 10, 25, 0, 30));
        assert_eq!(fires[0].format("%H:%M %Z").to_string(), "02:30 CEST");
        // Starting between the two 02:30s does not fire the second one.
        let between = Utc
            .with_ymd_and_hms(2026, 10, 25, 0, 45, 0)
            .unwrap()
            .with_timezone(&Oslo);
        assert_eq!(
            c.next_after(&between).unwrap().with_timezone(&Utc),
            utc(2026, 10, 26, 1, 30)
        );
        let in_second_half = Utc
            .with_ymd_and_hms(2026, 10, 25, 1, 10, 0)
            .unwrap()
            .with_timezone(&Oslo);
        assert_eq!(
            c.next_after(&in_second_half).unwrap().with_timezone(&Utc),
            utc(2026, 10, 26, 1, 30)
        );
    }

    #[test]
    fn dst_interval_jobs_skip_the_gap_and_repeat_the_overlap() {
        let half_hourly = CronSchedule::parse_line("*/30 * * * *").unwrap();
        let spring = oslo_fires_on(&half_hourly, 2026, 3, 29);
        assert_eq!(spring.len(), 46);
        assert!(spring.iter().all(|t| t.format("%H").to_string() != "02"));
        let autumn = oslo_fires_on(&half_hourly, 2026, 10, 25);
        assert_eq!(autumn.len(), 50);
        let twos: Vec<String> = autumn
            .iter()
            .filter(|t| t.format("%H").to_string() == "02")
            .map(|t| t.format("%H:%M %Z").to_string())
            .collect();
        assert_eq!(twos, ["02:00 CEST", "02:30 CEST", "02:00 CET", "02:30 CET"]);
        // Strictly increasing instants.
        assert!(autumn.windows(2).all(|w| w[0] < w[1]));

        let hourly = CronSchedule::parse_line("0 * * * *").unwrap();
        assert_eq!(oslo_fires_on(&hourly, 2026, 3, 29).len(), 23);
        assert_eq!(oslo_fires_on(&hourly, 2026, 10, 25).len(), 25);
    }
}
