//! Table patterns: which tables to capture, written `schema.table`.
//!
//! Each side of the dot is one of:
//!
//! - a name, matched exactly (`public.users`); double quotes keep dots and special characters
//!   literal (`"my.schema"."Orders"`);
//! - a glob: `*` any run of characters, `?` one character, `[…]` a character class
//!   (`public.*`, `*.orders`, `public.user_*`);
//! - a regular expression, recognised by any of `+ ( ) | ^ $ { } \` (`public.user_[0-9]+`),
//!   matched against the whole name.
//!
//! A list is comma-separated (`public.users, analytics.*`); `\,` is a literal comma. Names
//! are compared as stored in the catalog: unquoted identifiers are lower case there. Patterns
//! must name a schema — `*.users` for any schema — so a list never captures more than meant.

use std::fmt;

use regex::Regex;

/// One `schema.table` pattern.
#[derive(Clone, Debug)]
pub struct TablePattern {
    source: String,
    schema: Part,
    table: Part,
}

#[derive(Clone, Debug)]
enum Part {
    Exact(String),
    /// `*`: every name.
    Any,
    Matcher(Regex),
}

impl Part {
    fn matches(&self, name: &str) -> bool {
        match self {
            Part::Exact(s) => s == name,
            Part::Any => true,
            Part::Matcher(r) => r.is_match(name),
        }
    }

    fn exact_or_any(&self) -> Option<Option<&str>> {
        match self {
            Part::Exact(s) => Some(Some(s)),
            Part::Any => Some(None),
            Part::Matcher(_) => None,
        }
    }
}

impl PartialEq for TablePattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for TablePattern {}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A pattern that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid table pattern {:?}: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for PatternError {}

const REGEX_CHARS: &[char] = &['+', '(', ')', '|', '^', '$', '{', '}', '\\'];

impl TablePattern {
    /// Parses one pattern.
    ///
    /// # Errors
    ///
    /// A [`PatternError`] for a pattern without a schema part, an empty side, an unclosed
    /// quote or class, or an invalid regular expression.
    pub fn parse(pattern: &str) -> Result<TablePattern, PatternError> {
        let err =
            |reason: &str| PatternError { pattern: pattern.to_owned(), reason: reason.to_owned() };
        let trimmed = pattern.trim();
        let (schema, table) = split_qualified(trimmed).map_err(err)?;
        let (schema, table) = match (schema, table) {
            (Some(s), t) => (s, t),
            (None, _) => {
                return Err(err("name the schema too, as public.NAME, or *.NAME for every schema"));
            }
        };
        Ok(TablePattern {
            source: trimmed.to_owned(),
            schema: part(&schema).map_err(|r| err(&r))?,
            table: part(&table).map_err(|r| err(&r))?,
        })
    }

    /// Whether the table `schema.table` matches.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        self.schema.matches(schema) && self.table.matches(table)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The exact `(schema, table)` this pattern names, when it has no wildcards.
    pub fn exact(&self) -> Option<(&str, &str)> {
        match (&self.schema, &self.table) {
            (Part::Exact(s), Part::Exact(t)) => Some((s, t)),
            _ => None,
        }
    }

    /// When each side is a name or a lone `*` (`public.users`, `public.*`, `*.orders`): the
    /// two sides, `None` standing for `*`. The form other tools' table filters understand
    /// (wal2json's `add-tables`).
    pub fn names_or_any(&self) -> Option<(Option<&str>, Option<&str>)> {
        Some((self.schema.exact_or_any()?, self.table.exact_or_any()?))
    }
}

/// A side of the pattern as written: quoted (literal) or not.
struct Side {
    text: String,
    quoted: bool,
}

/// Splits at the first dot outside quotes, brackets and parentheses.
fn split_qualified(s: &str) -> Result<(Option<Side>, Side), &'static str> {
    let mut sides = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let (mut in_quotes, mut brackets, mut parens) = (false, 0u32, 0u32);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => {
                in_quotes = !in_quotes;
                quoted = true;
            }
            '\\' if !in_quotes => {
                cur.push('\\');
                cur.extend(chars.next());
            }
            '[' if !in_quotes => {
                brackets += 1;
                cur.push(c);
            }
            ']' if !in_quotes => {
                brackets = brackets.saturating_sub(1);
                cur.push(c);
            }
            '(' if !in_quotes => {
                parens += 1;
                cur.push(c);
            }
            ')' if !in_quotes => {
                parens = parens.saturating_sub(1);
                cur.push(c);
            }
            '.' if !in_quotes && brackets == 0 && parens == 0 && sides.is_empty() => {
                sides.push(Side { text: std::mem::take(&mut cur), quoted });
                quoted = false;
            }
            c => cur.push(c),
        }
    }
    if in_quotes {
        return Err("unclosed double quote");
    }
    if brackets > 0 {
        return Err("unclosed [");
    }
    let last = Side { text: cur, quoted };
    Ok(match sides.pop() {
        Some(first) => (Some(first), last),
        None => (None, last),
    })
}

fn part(side: &Side) -> Result<Part, String> {
    let text = side.text.trim();
    if text.is_empty() && !side.quoted {
        return Err("empty schema or table name".into());
    }
    if side.quoted {
        return Ok(Part::Exact(side.text.clone()));
    }
    if text == "*" {
        return Ok(Part::Any);
    }
    let regex = if text.contains(REGEX_CHARS) {
        format!("^(?:{text})$")
    } else if text.contains(['*', '?', '[']) {
        glob_to_regex(text)
    } else {
        return Ok(Part::Exact(text.to_owned()));
    };
    Regex::new(&regex).map(Part::Matcher).map_err(|e| format!("{e}"))
}

fn glob_to_regex(glob: &str) -> String {
    let mut out = String::from("^");
    let mut in_class = false;
    for c in glob.chars() {
        match c {
            '*' if !in_class => out.push_str(".*"),
            '?' if !in_class => out.push('.'),
            '[' if !in_class => {
                in_class = true;
                out.push('[');
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            c if in_class => out.push(c),
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out.push('$');
    out
}

/// Splits a comma-separated list, honouring `\,` and double quotes.
pub fn split_list(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                cur.push(',');
                chars.next();
            }
            '"' => {
                in_quotes = !in_quotes;
                cur.push(c);
            }
            ',' if !in_quotes => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect()
}

/// Escapes a list item so [`split_list`] gives it back.
pub fn escape_list_item(item: &str) -> String {
    item.replace(',', "\\,")
}

/// A set of patterns; a table is included if any matches. The empty set includes all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableFilter {
    patterns: Vec<TablePattern>,
}

impl TableFilter {
    /// Parses a comma-separated list.
    ///
    /// # Errors
    ///
    /// The first pattern that does not parse.
    pub fn parse_list(s: &str) -> Result<TableFilter, PatternError> {
        let patterns =
            split_list(s).iter().map(|p| TablePattern::parse(p)).collect::<Result<_, _>>()?;
        Ok(TableFilter { patterns })
    }

    /// A filter of these patterns.
    pub fn new(patterns: Vec<TablePattern>) -> TableFilter {
        TableFilter { patterns }
    }

    /// Whether `schema.table` is included.
    pub fn includes(&self, schema: &str, table: &str) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(schema, table))
    }

    /// Whether every table is included.
    pub fn is_all(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns.
    pub fn patterns(&self) -> &[TablePattern] {
        &self.patterns
    }

    /// The list as text, ready for [`TableFilter::parse_list`].
    pub fn to_list(&self) -> String {
        self.patterns.iter().map(|p| escape_list_item(p.as_str())).collect::<Vec<_>>().join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, schema: &str, table: &str) -> bool {
        TablePattern::parse(pattern).unwrap().matches(schema, table)
    }

    #[test]
    fn every_pattern_form_of_the_seeds() {
        assert!(m("public.users", "public", "users"));
        assert!(!m("public.users", "public", "users2"));
        assert!(!m("public.users", "other", "users"));
        assert!(m("public.*", "public", "anything"));
        assert!(!m("public.*", "publicx", "anything"));
        assert!(m("*.orders", "sales", "orders"));
        assert!(!m("*.orders", "sales", "orders_old"));
        assert!(m("public.user_*", "public", "user_001"));
        assert!(!m("public.user_*", "public", "users"));
        assert!(m("public.user_[0-9]+", "public", "user_999"));
        assert!(!m("public.user_[0-9]+", "public", "user_x"));
        assert!(!m("public.user_[0-9]+", "public", "user_1x"), "regexes match whole names");
        assert!(m("public.user_?", "public", "user_7"));
        assert!(m("public.(users|orders)", "public", "orders"));
        assert!(m("analytics.*", "analytics", "events"));
    }

    #[test]
    fn quotes_keep_names_literal() {
        assert!(m("\"my.schema\".\"Orders\"", "my.schema", "Orders"));
        assert!(!m("\"my.schema\".\"Orders\"", "my.schema", "orders"));
        assert!(m("public.\"a$b\"", "public", "a$b"));
        assert!(m("public.\"we\"\"ird\"", "public", "we\"ird"));
        let p = TablePattern::parse("public.users").unwrap();
        assert_eq!(p.exact(), Some(("public", "users")));
        assert_eq!(TablePattern::parse("public.*").unwrap().exact(), None);
    }

    #[test]
    fn lists_and_their_escapes() {
        let f = TableFilter::parse_list("public.users, analytics.*,  \"a,b\".t").unwrap();
        assert_eq!(f.patterns().len(), 3);
        assert!(f.includes("analytics", "x"));
        assert!(f.includes("a,b", "t"));
        assert!(!f.includes("public", "orders"));
        assert!(TableFilter::default().includes("any", "thing"));
        let again = TableFilter::parse_list(&f.to_list()).unwrap();
        assert_eq!(again, f);
        assert_eq!(split_list(r"a\,b,c"), ["a,b", "c"]);
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("users", "name the schema"),
            ("public.", "empty"),
            (".users", "empty"),
            ("\"open.users", "unclosed"),
            ("public.user_[0-9", "unclosed ["),
            ("public.(users", "regex"),
        ] {
            let e = TablePattern::parse(bad).unwrap_err();
            assert!(e.to_string().contains(why) || why == "regex", "{bad}: {e}");
        }
    }
}
