//! The options a consumer passes in `START_REPLICATION … (options)` and how the plugin parses
//! them.
//!
//! Parsing is a pure function over `(name, value)` pairs, so the plugin's strictness is unit
//! tested here, without PostgreSQL: unknown, repeated, valueless and out-of-range options are
//! errors that name the option and list what is accepted.

use std::fmt;

/// The wire protocol versions this build reads and writes.
pub const PROTO_VERSION_MIN: u32 = 1;
/// The newest wire protocol version this build writes.
pub const PROTO_VERSION_MAX: u32 = crate::wire::WIRE_VERSION as u32;

/// Default for [`PluginOptions::batch_rows`].
pub const DEFAULT_BATCH_ROWS: u32 = 8192;
/// Largest accepted `batch-rows`.
pub const MAX_BATCH_ROWS: u32 = 1_000_000;

/// Every option the plugin accepts, in the order the error hint lists them.
pub const OPTION_NAMES: &[&str] = &["batch-rows", "proto-version"];

/// The plugin's parsed options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginOptions {
    /// `proto-version`: the wire format version the consumer reads (default: the newest).
    pub proto_version: u32,
    /// `batch-rows`: most rows of one table per batch message (1 to 1,000,000; default 8192).
    pub batch_rows: u32,
}

impl Default for PluginOptions {
    fn default() -> Self {
        PluginOptions { proto_version: PROTO_VERSION_MAX, batch_rows: DEFAULT_BATCH_ROWS }
    }
}

/// Why an option was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionErrorKind {
    /// No such option.
    Unknown,
    /// Given more than once.
    Repeated,
    /// Given without a value.
    MissingValue,
    /// The value is not of the expected form.
    Invalid {
        /// The value given.
        value: String,
        /// What was expected, in words.
        expected: &'static str,
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
            OptionErrorKind::MissingValue | OptionErrorKind::Invalid { .. } => {
                format!("Give \"{}\" a value, as {}.", self.option, example(&self.option))
            }
            OptionErrorKind::OutOfRange { min, max, .. } => {
                format!("\"{}\" accepts {min} to {max}.", self.option)
            }
        }
    }
}

fn example(option: &str) -> &'static str {
    match option {
        "batch-rows" => "'batch-rows' '8192'",
        "proto-version" => "'proto-version' '1'",
        _ => "'name' 'value'",
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
            let value = value.ok_or_else(|| err(OptionErrorKind::MissingValue))?;
            match known {
                "batch-rows" => {
                    out.batch_rows = parse_u32(value, 1, MAX_BATCH_ROWS).map_err(err)?;
                }
                "proto-version" => {
                    out.proto_version =
                        parse_u32(value, PROTO_VERSION_MIN, PROTO_VERSION_MAX).map_err(err)?;
                }
                _ => unreachable!("every name in OPTION_NAMES has an arm"),
            }
        }
        Ok(out)
    }

    /// The options as `(name, value)` pairs, ready for `START_REPLICATION`.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("proto-version", self.proto_version.to_string()),
            ("batch-rows", self.batch_rows.to_string()),
        ]
    }
}

fn parse_u32(value: &str, min: u32, max: u32) -> Result<u32, OptionErrorKind> {
    let n: u64 = value.trim().parse().map_err(|_| OptionErrorKind::Invalid {
        value: value.to_owned(),
        expected: "a whole number",
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
    fn round_trips_through_pairs() {
        let opts = PluginOptions { proto_version: 1, batch_rows: 17 };
        let pairs = opts.to_pairs();
        let parsed =
            PluginOptions::parse(pairs.iter().map(|(k, v)| (*k, Some(v.as_str())))).unwrap();
        assert_eq!(parsed, opts);
    }

    #[test]
    fn unknown_option_names_itself_and_the_valid_ones() {
        let e =
            parse(&[("batch-rows", Some("10")), ("include-everything", Some("1"))]).unwrap_err();
        assert_eq!(e.kind, OptionErrorKind::Unknown);
        assert_eq!(e.to_string(), "unrecognized wal2arrow option \"include-everything\"");
        assert_eq!(e.hint(), "Valid wal2arrow options are: batch-rows, proto-version.");
    }

    #[test]
    fn repeated_missing_invalid_and_out_of_range_are_errors() {
        let e = parse(&[("batch-rows", Some("1")), ("batch-rows", Some("2"))]).unwrap_err();
        assert_eq!(e.kind, OptionErrorKind::Repeated);
        let e = parse(&[("batch-rows", None)]).unwrap_err();
        assert_eq!(e.kind, OptionErrorKind::MissingValue);
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
        let e = parse(&[("proto-version", Some("2"))]).unwrap_err();
        assert_eq!(e.kind, OptionErrorKind::OutOfRange { value: "2".into(), min: 1, max: 1 });
        assert_eq!(e.hint(), "\"proto-version\" accepts 1 to 1.");
    }
}
