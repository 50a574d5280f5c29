//! The output plugins a stream can read: wal2arrow, and wal2json as the fallback.

/// The output plugin's name, as given to `CREATE_REPLICATION_SLOT … LOGICAL`.
pub const PLUGIN_NAME: &str = "wal2arrow";

/// The output plugins a stream can decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputPlugin {
    /// wal2arrow: Arrow IPC encoded in the server, decoded here without copying.
    Wal2Arrow,
    /// wal2json (format version 2), for servers where wal2arrow cannot be installed: parsed
    /// here into the same Arrow batches (see the README's "The wal2json fallback").
    Wal2Json,
}

impl OutputPlugin {
    /// The plugin's name, as in `CREATE_REPLICATION_SLOT … LOGICAL name`.
    pub fn name(self) -> &'static str {
        match self {
            OutputPlugin::Wal2Arrow => PLUGIN_NAME,
            OutputPlugin::Wal2Json => "wal2json",
        }
    }

    /// The plugin of that name, if it is one of these.
    pub fn from_name(name: &str) -> Option<OutputPlugin> {
        match name {
            PLUGIN_NAME => Some(OutputPlugin::Wal2Arrow),
            "wal2json" => Some(OutputPlugin::Wal2Json),
            _ => None,
        }
    }
}

impl std::fmt::Display for OutputPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Session settings for a wal2json stream: they fix the text forms wal2json writes values in
/// (its output functions run in the walsender, under the session's settings), so that the
/// fallback parses them exactly.
pub(crate) const WAL2JSON_SESSION: &str = "SET DateStyle = 'ISO'; SET TimeZone = 'UTC'; \
     SET IntervalStyle = 'iso_8601'; SET bytea_output = 'hex'; SET lc_monetary = 'C'; \
     SET extra_float_digits = 3";
