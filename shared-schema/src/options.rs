//! The options a consumer passes in `START_REPLICATION … (options)` and how the plugin parses
//! them.
//!
//! Parsing is a pure function over `(name, value)` pairs, so the plugin's strictness is unit
//! tested here, without PostgreSQL: unknown, repeated, valueless and out-of-range options are
//! errors that name the option and say what is accepted. Boolean options take PostgreSQL's
//! spellings (`true`/`false`, `on`/`off`, `yes`/`no`, `1`/`0`) and mean `true` when given
//! without a value, as wal2json's do. List options are comma-separated; `\,` is a literal comma.

use std::fmt;

use crate::patterns::{TableFilter, escape_list_item, split_list};

/// The oldest wire protocol version this build writes: version 3 changed the Schema and Batch
/// layouts (see [`crate::wire`]), and this build writes only those. Version 4 added the
/// stream kinds, written only with `streaming`.
pub const PROTO_VERSION_MIN: u32 = 3;
/// The wire version that carries streamed transactions.
pub const PROTO_VERSION_STREAMING: u32 = 4;
/// The newest wire protocol version this build writes.
pub const PROTO_VERSION_MAX: u32 = crate::wire::WIRE_VERSION as u32;

/// Default for [`PluginOptions::batch_rows`].
pub const DEFAULT_BATCH_ROWS: u32 = 8192;
/// Largest accepted `batch-rows`.
pub const MAX_BATCH_ROWS: u32 = 1_000_000;

/// Every option the plugin accepts, in the order the error hint lists them.
pub const OPTION_NAMES: &[&str] = &[
    "add-msg-prefixes",
    "batch-rows",
    "filter-msg-prefixes",
    "filter-origins",
    "include-lsn",
    "include-origin",
    "include-timestamps",
    "include-xids",
    "numeric-as-string",
    "proto-version",
    "publish-via-root",
    "skip-empty-xacts",
    "streaming",
    "tables",
];

/// The plugin's parsed options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginOptions {
    /// `proto-version`: the wire format version the consumer reads (default: the newest).
    pub proto_version: u32,
    /// `batch-rows`: most rows of one table per batch message (1 to 1,000,000; default 8192).
    pub batch_rows: u32,
    /// `include-xids`: transaction IDs in Begin messages (default true; 0 when off).
    pub include_xids: bool,
    /// `include-timestamps`: commit times in Begin and Commit (default true; 0 when off).
    pub include_timestamps: bool,
    /// `include-lsn`: the per-row `_lsn` column (default true).
    pub include_lsn: bool,
    /// `include-origin`: an Origin message after Begin for transactions replayed from a
    /// replication origin (default true).
    pub include_origin: bool,
    /// `tables`: capture only tables matching these patterns (default: all).
    pub tables: TableFilter,
    /// `add-msg-prefixes`: deliver only logical messages with these prefixes (default: all).
    pub add_msg_prefixes: Vec<String>,
    /// `filter-msg-prefixes`: drop logical messages with these prefixes.
    pub filter_msg_prefixes: Vec<String>,
    /// `filter-origins`: drop transactions replayed from these replication origins; `*` drops
    /// every transaction that has an origin.
    pub filter_origins: Vec<String>,
    /// `numeric-as-string`: every `numeric` as its exact text instead of `Decimal128`.
    pub numeric_as_string: bool,
    /// `skip-empty-xacts`: no Begin/Commit for transactions with nothing to send.
    pub skip_empty_xacts: bool,
    /// `publish-via-root`: a partition's rows are reported as its partition root's (the root's
    /// schema, name and OID; `tables` patterns match the root), like pgoutput's
    /// `publish_via_partition_root` (default true).
    pub publish_via_root: bool,
    /// `streaming`: send transactions larger than `logical_decoding_work_mem` in blocks while
    /// they are in progress (Stream Start … Stream Commit / Abort, see [`crate::wire`]) rather
    /// than whole at commit; needs `proto-version` 4 (default false: a consumer must ask).
    pub streaming: bool,
}

impl Default for PluginOptions {
    fn default() -> Self {
        PluginOptions {
            proto_version: PROTO_VERSION_MAX,
            batch_rows: DEFAULT_BATCH_ROWS,
            include_xids: true,
            include_timestamps: true,
            include_lsn: true,
            include_origin: true,
            tables: TableFilter::default(),
            add_msg_prefixes: Vec::new(),
            filter_msg_prefixes: Vec::new(),
            filter_origins: Vec::new(),
            numeric_as_string: false,
            skip_empty_xacts: false,
            publish_via_root: true,
            streaming: false,
        }
    }
}

/// Why an option was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionErrorKind {
    /// No such option.
    Unknown,
    /// Given more than once.
    Repeated,
    /// Given without a value, which this option needs.
    MissingValue,
    /// The value is not of the expected form.
    Invalid {
        /// The value given.
        value: String,
        /// What was expected, in words.
        expected: String,
    },
    /// The value is outside the accepted range.
    OutOfRange {
        /// The value given.
        value: String,
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
}

/// An option the plugin refuses. Its [`Display`](fmt::Display) is the error message; [`hint`]
/// tells what to do.
///
/// [`hint`]: OptionError::hint
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError {
    /// The option's name as given.
    pub option: String,
    /// What is wrong with it.
    pub kind: OptionErrorKind,
}

impl OptionError {
    /// The fix, for an error report's HINT.
    pub fn hint(&self) -> String {
        match &self.kind {
            OptionErrorKind::Unknown => {
                format!("Valid wal2arrow options are: {}.", OPTION_NAMES.join(", "))
            }
            OptionErrorKind::Repeated => format!("Give \"{}\" once.", self.option),
            OptionErrorKind::Invalid { expected, .. }
                if self.option == "streaming" && expected.contains("proto-version") =>
            {
                format!(
                    "Ask for 'proto-version' '{PROTO_VERSION_STREAMING}' with 'streaming', or leave \
                 'streaming' off."
                )
            }
            OptionErrorKind::MissingValue | OptionErrorKind::Invalid { .. } => {
                format!("Give \"{}\" a value, as {}.", self.option, example(&self.option))
            }
            OptionErrorKind::OutOfRange { .. } if self.option == "proto-version" => format!(
                "This wal2arrow plugin writes wire format versions {PROTO_VERSION_MIN} to \
                 {PROTO_VERSION_MAX}: use a consumer that reads one of them, or install the plugin \
                 version your consumer was built with."
            ),
            OptionErrorKind::OutOfRange { min, max, .. } => {
                format!("\"{}\" accepts {min} to {max}.", self.option)
            }
        }
    }
}

fn example(option: &str) -> &'static str {
    match option {
        "batch-rows" => "'batch-rows' '8192'",
        "proto-version" => "'proto-version' '3'",
        "tables" => "'tables' 'public.users,analytics.*'",
        "add-msg-prefixes" | "filter-msg-prefixes" => "'add-msg-prefixes' 'audit,heartbeat'",
        "filter-origins" => "'filter-origins' 'replica_a,replica_b'",
        _ => "'include-xids' 'true' (true/false, on/off, yes/no, 1/0)",
    }
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.option;
        match &self.kind {
            OptionErrorKind::Unknown => write!(f, "unrecognized wal2arrow option \"{o}\""),
            OptionErrorKind::Repeated => write!(f, "wal2arrow option \"{o}\" given more than once"),
            OptionErrorKind::MissingValue => write!(f, "wal2arrow option \"{o}\" needs a value"),
            OptionErrorKind::Invalid { value, expected } => {
                write!(
                    f,
                    "invalid value {value:?} for wal2arrow option \"{o}\": expected {expected}"
                )
            }
            OptionErrorKind::OutOfRange { value, min, max } => write!(
                f,
                "value {value} for wal2arrow option \"{o}\" is out of range ({min} to {max})"
            ),
        }
    }
}

impl std::error::Error for OptionError {}

impl PluginOptions {
    /// Parses the options of a `START_REPLICATION` (or `pg_logical_slot_*_changes`) call.
    ///
    /// # Errors
    ///
    /// An [`OptionError`] for the first option that is unknown, repeated, missing its value,
    /// malformed or out of range.
    pub fn parse<'a, I>(pairs: I) -> Result<PluginOptions, OptionError>
    where
        I: IntoIterator<Item = (&'a str, Option<&'a str>)>,
    {
        let mut out = PluginOptions::default();
        let mut seen: Vec<&'static str> = Vec::new();
        for (name, value) in pairs {
            let err = |kind| OptionError { option: name.to_owned(), kind };
            let Some(&known) = OPTION_NAMES.iter().find(|n| **n == name) else {
                return Err(err(OptionErrorKind::Unknown));
            };
            if seen.contains(&known) {
                return Err(err(OptionErrorKind::Repeated));
            }
            seen.push(known);
            let need = || value.ok_or_else(|| err(OptionErrorKind::MissingValue));
            let flag = || parse_bool(value).map_err(err);
            match known {
                "batch-rows" => {
                    out.batch_rows = parse_u32(need()?, 1, MAX_BATCH_ROWS).map_err(err)?
                }
                "proto-version" => {
                    out.proto_version =
                        parse_u32(need()?, PROTO_VERSION_MIN, PROTO_VERSION_MAX).map_err(err)?
                }
                "include-xids" => out.include_xids = flag()?,
                "include-timestamps" => out.include_timestamps = flag()?,
                "include-lsn" => out.include_lsn = flag()?,
                "include-origin" => out.include_origin = flag()?,
                "numeric-as-string" => out.numeric_as_string = flag()?,
                "skip-empty-xacts" => out.skip_empty_xacts = flag()?,
                "publish-via-root" => out.publish_via_root = flag()?,
                "streaming" => out.streaming = flag()?,
                "tables" => {
                    let v = need()?;
                    out.tables = TableFilter::parse_list(v).map_err(|e| {
                        err(OptionErrorKind::Invalid {
                            value: v.to_owned(),
                            expected: format!("schema.table patterns ({e})"),
                        })
                    })?;
                }
                "add-msg-prefixes" => out.add_msg_prefixes = split_list(need()?),
                "filter-msg-prefixes" => out.filter_msg_prefixes = split_list(need()?),
                "filter-origins" => out.filter_origins = split_list(need()?),
                _ => unreachable!("every name in OPTION_NAMES has an arm"),
            }
        }
        if out.streaming && out.proto_version < PROTO_VERSION_STREAMING {
            return Err(OptionError {
                option: "streaming".into(),
                kind: OptionErrorKind::Invalid {
                    value: "on".into(),
                    expected: format!(
                        "'proto-version' {PROTO_VERSION_STREAMING} or later (given {})",
                        out.proto_version
                    ),
                },
            });
        }
        Ok(out)
    }

    /// The options as `(name, value)` pairs, ready for `START_REPLICATION`: the ones that
    /// differ from the defaults, plus `proto-version`.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let d = PluginOptions::default();
        let mut out = vec![("proto-version", self.proto_version.to_string())];
        if self.batch_rows != d.batch_rows {
            out.push(("batch-rows", self.batch_rows.to_string()));
        }
        for (name, value, default) in [
            ("include-xids", self.include_xids, d.include_xids),
            ("include-timestamps", self.include_timestamps, d.include_timestamps),
            ("include-lsn", self.include_lsn, d.include_lsn),
            ("include-origin", self.include_origin, d.include_origin),
            ("numeric-as-string", self.numeric_as_string, d.numeric_as_string),
            ("skip-empty-xacts", self.skip_empty_xacts, d.skip_empty_xacts),
            ("publish-via-root", self.publish_via_root, d.publish_via_root),
            ("streaming", self.streaming, d.streaming),
        ] {
            if value != default {
                out.push((name, value.to_string()));
            }
        }
        if !self.tables.is_all() {
            out.push(("tables", self.tables.to_list()));
        }
        for (name, list) in [
            ("add-msg-prefixes", &self.add_msg_prefixes),
            ("filter-msg-prefixes", &self.filter_msg_prefixes),
            ("filter-origins", &self.filter_origins),
        ] {
            if !list.is_empty() {
                out.push((
                    name,
                    list.iter().map(|s| escape_list_item(s)).collect::<Vec<_>>().join(","),
                ));
            }
        }
        out
    }

    /// Whether a logical message with this prefix passes the prefix options.
    pub fn message_wanted(&self, prefix: &str) -> bool {
        (self.add_msg_prefixes.is_empty() || self.add_msg_prefixes.iter().any(|p| p == prefix))
            && !self.filter_msg_prefixes.iter().any(|p| p == prefix)
    }

    /// Whether transactions from the replication origin named `origin` are dropped.
    pub fn origin_filtered(&self, origin: &str) -> bool {
        self.filter_origins.iter().any(|o| o == "*" || o == origin)
    }
}

fn parse_u32(value: &str, min: u32, max: u32) -> Result<u32, OptionErrorKind> {
    let n: u64 = value.trim().parse().map_err(|_| OptionErrorKind::Invalid {
        value: value.to_owned(),
        expected: "a whole number".into(),
    })?;
    if n < u64::from(min) || n > u64::from(max) {
        return Err(OptionErrorKind::OutOfRange {
            value: value.to_owned(),
            min: min.into(),
            max: max.into(),
        });
    }
    Ok(n as u32)
}

fn parse_bool(value: Option<&str>) -> Result<bool, OptionErrorKind> {
    let Some(v) = value else { return Ok(true) };
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "on" | "yes" | "y" | "1" => Ok(true),
        "false" | "f" | "off" | "no" | "n" | "0" => Ok(false),
        _ => Err(OptionErrorKind::Invalid {
            value: v.to_owned(),
            expected: "a boolean (true/false, on/off, yes/no, 1/0)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&'static str, Option<&'static str>)]) -> Result<PluginOptions, OptionError> {
        PluginOptions::parse(pairs.iter().copied())
    }

    #[test]
    fn defaults_when_nothing_given() {
        assert_eq!(parse(&[]).unwrap(), PluginOptions::default());
    }

    #[test]
    fn every_option_parses_and_round_trips_through_pairs() {
        let opts = parse(&[
            ("proto-version", Some("4")),
            ("batch-rows", Some("17")),
            ("streaming", Some("on")),
            ("include-xids", Some("off")),
            ("include-timestamps", Some("no")),
            ("include-lsn", Some("0")),
            ("include-origin", Some("false")),
            ("numeric-as-string", None),
            ("skip-empty-xacts", Some("yes")),
            ("publish-via-root", Some("off")),
            ("tables", Some("public.users, *.orders,public.user_[0-9]+")),
            ("add-msg-prefixes", Some("audit,heart\\,beat")),
            ("filter-msg-prefixes", Some("noise")),
            ("filter-origins", Some("replica_a, replica_b")),
        ])
        .unwrap();
        assert_eq!(opts.batch_rows, 17);
        assert!(
            !opts.include_xids
                && !opts.include_timestamps
                && !opts.include_lsn
                && !opts.include_origin
        );
        assert!(opts.numeric_as_string && opts.skip_empty_xacts && !opts.publish_via_root);
        assert!(opts.streaming);
        assert_eq!(opts.tables.patterns().len(), 3);
        assert_eq!(opts.add_msg_prefixes, ["audit", "heart,beat"]);
        assert_eq!(opts.filter_origins, ["replica_a", "replica_b"]);
        let pairs = opts.to_pairs();
        let again =
            PluginOptions::parse(pairs.iter().map(|(k, v)| (*k, Some(v.as_str())))).unwrap();
        assert_eq!(again, opts);
        assert_eq!(PluginOptions::default().to_pairs(), [("proto-version", "4".to_owned())]);
    }

    #[test]
    fn message_and_origin_filters() {
        let o = parse(&[("add-msg-prefixes", Some("a,b")), ("filter-msg-prefixes", Some("b"))])
            .unwrap();
        assert!(o.message_wanted("a"));
        assert!(!o.message_wanted("b"), "filter wins over add");
        assert!(!o.message_wanted("c"), "add restricts");
        assert!(PluginOptions::default().message_wanted("anything"));
        let o = parse(&[("filter-origins", Some("r1"))]).unwrap();
        assert!(o.origin_filtered("r1") && !o.origin_filtered("r2"));
        assert!(parse(&[("filter-origins", Some("*"))]).unwrap().origin_filtered("any"));
    }

    #[test]
    fn unknown_option_names_itself_and_the_valid_ones() {
        let e =
            parse(&[("batch-rows", Some("10")), ("include-everything", Some("1"))]).unwrap_err();
        assert_eq!(e.kind, OptionErrorKind::Unknown);
        assert_eq!(e.to_string(), "unrecognized wal2arrow option \"include-everything\"");
        assert_eq!(
            e.hint(),
            "Valid wal2arrow options are: add-msg-prefixes, batch-rows, filter-msg-prefixes, \
             filter-origins, include-lsn, include-origin, include-timestamps, include-xids, \
             numeric-as-string, proto-version, publish-via-root, skip-empty-xacts, streaming, \
             tables."
        );
    }

    #[test]
    fn repeated_missing_invalid_and_out_of_range_are_errors() {
        let e = parse(&[("batch-rows", Some("1")), ("batch-rows", Some("2"))]).unwrap_err();
        assert_eq!(e.kind, OptionErrorKind::Repeated);
        for needs_value in
            ["batch-rows", "proto-version", "tables", "add-msg-prefixes", "filter-origins"]
        {
            let e = PluginOptions::parse([(needs_value, None)]).unwrap_err();
            assert_eq!(e.kind, OptionErrorKind::MissingValue, "{needs_value}");
        }
        let e = parse(&[("batch-rows", Some("ten"))]).unwrap_err();
        assert!(matches!(e.kind, OptionErrorKind::Invalid { .. }), "{e}");
        for bad in ["0", "1000001", "-1", "99999999999999999999"] {
            let e = parse(&[("batch-rows", Some(bad))]).unwrap_err();
            assert!(
                matches!(
                    e.kind,
                    OptionErrorKind::OutOfRange { .. } | OptionErrorKind::Invalid { .. }
                ),
                "{bad}: {e}"
            );
        }
        for old in ["1", "2", "5"] {
            let e = parse(&[("proto-version", Some(old))]).unwrap_err();
            assert_eq!(e.kind, OptionErrorKind::OutOfRange { value: old.into(), min: 3, max: 4 });
            assert!(e.hint().contains("writes wire format versions 3 to 4"), "{}", e.hint());
        }
        assert_eq!(parse(&[("proto-version", Some("3"))]).unwrap().proto_version, 3);
        let e = parse(&[("proto-version", Some("3")), ("streaming", None)]).unwrap_err();
        assert_eq!(e.option, "streaming");
        assert!(e.to_string().contains("'proto-version' 4 or later (given 3)"), "{e}");
        assert!(e.hint().contains("'proto-version' '4'"), "{}", e.hint());
        assert!(parse(&[("streaming", Some("on"))]).unwrap().streaming);
        let e = parse(&[("include-xids", Some("maybe"))]).unwrap_err();
        assert!(e.to_string().contains("expected a boolean"), "{e}");
        let e = parse(&[("tables", Some("users"))]).unwrap_err();
        assert!(e.to_string().contains("name the schema"), "{e}");
        assert!(e.hint().contains("public.users"), "{}", e.hint());
    }
}
