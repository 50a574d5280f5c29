//! Keyword arguments → the consumer's settings. Connection settings follow libpq: a
//! connection string (keyword/value or URI) over the `PG*` environment variables, then the
//! keyword arguments over both. Every unknown name or ill-typed value is a `ConfigError`
//! saying what is accepted.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use wal2arrow_consumer::{
    Config, ConsumerBuilder, InProgress, Lsn, PluginChoice, PluginOptions, SnapshotMode,
};

use crate::errors::config as config_error;

/// Connection keywords (libpq's names; `database` is `dbname`).
const CONNECTION: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "database",
    "user",
    "password",
    "sslmode",
    "sslrootcert",
    "connect_timeout",
    "application_name",
];

/// Stream settings (besides the connection's).
const STREAM: &[&str] = &[
    "slot",
    "create_slot",
    "temporary_slot",
    "tables",
    "batch_rows",
    "snapshot",
    "snapshot_workers",
    "plugin",
    "streaming",
    "stream_memory_mb",
    "spill_dir",
    "max_poll_interval",
    "heartbeat_interval",
    "start_lsn",
    "preflight",
    "publication",
    "buffer_events",
    "numeric_as_string",
];

/// A libpq keyword/value pair, quoted.
fn pair(key: &str, value: &str) -> String {
    format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn type_error(py: Python<'_>, name: &str, wanted: &str, value: &Bound<'_, PyAny>) -> PyErr {
    let shown = value.repr().map(|r| r.to_string()).unwrap_or_else(|_| "?".into());
    let ty = value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
    config_error(py, format!("`{name}` must be {wanted}, not {ty} ({shown})"))
}

fn string(py: Python<'_>, name: &str, v: &Bound<'_, PyAny>) -> PyResult<String> {
    v.extract::<String>().map_err(|_| type_error(py, name, "a string", v))
}

fn boolean(py: Python<'_>, name: &str, v: &Bound<'_, PyAny>) -> PyResult<bool> {
    if !v.is_instance_of::<pyo3::types::PyBool>() {
        return Err(type_error(py, name, "True or False", v));
    }
    v.extract::<bool>()
}

fn count(py: Python<'_>, name: &str, v: &Bound<'_, PyAny>, min: u64, max: u64) -> PyResult<u64> {
    let wanted = format!("an integer from {min} to {max}");
    if v.is_instance_of::<pyo3::types::PyBool>() {
        return Err(type_error(py, name, &wanted, v));
    }
    match v.extract::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(type_error(py, name, &wanted, v)),
    }
}

fn seconds(py: Python<'_>, name: &str, v: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let wanted = "a positive number of seconds";
    if v.is_instance_of::<pyo3::types::PyBool>() {
        return Err(type_error(py, name, wanted, v));
    }
    match v.extract::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => Err(type_error(py, name, wanted, v)),
    }
}

/// An LSN: an integer, or PostgreSQL's `X/Y` text.
pub(crate) fn lsn(py: Python<'_>, name: &str, v: &Bound<'_, PyAny>) -> PyResult<Lsn> {
    let wanted = "an LSN: an integer or PostgreSQL's 'X/Y' form";
    if v.is_instance_of::<PyString>() {
        let s: String = v.extract()?;
        return s.trim().parse::<Lsn>().map_err(|_| type_error(py, name, wanted, v));
    }
    if v.is_instance_of::<pyo3::types::PyBool>() {
        return Err(type_error(py, name, wanted, v));
    }
    v.extract::<u64>().map(Lsn).map_err(|_| type_error(py, name, wanted, v))
}

/// The connection settings: `PG*` variables, then `dsn`, then the connection keywords of
/// `kwargs` (which are removed from it).
pub(crate) fn connection(
    py: Python<'_>,
    dsn: Option<&str>,
    kwargs: &Bound<'_, PyDict>,
) -> PyResult<Config> {
    let consumer_err = |e: wal2arrow_consumer::client::Error| {
        crate::errors::convert(py, &wal2arrow_consumer::Error::from(e))
    };
    let mut config = Config::from_env().map_err(consumer_err)?;
    if let Some(dsn) = dsn {
        config.apply_dsn(dsn).map_err(consumer_err)?;
    }
    let mut pairs = Vec::new();
    for key in CONNECTION {
        let Some(v) = kwargs.get_item(key)? else { continue };
        kwargs.del_item(key)?;
        if v.is_none() {
            continue;
        }
        let value = match *key {
            "port" => count(py, key, &v, 1, 65535)?.to_string(),
            "connect_timeout" => count(py, key, &v, 0, 86_400)?.to_string(),
            _ => string(py, key, &v)?,
        };
        let key = if *key == "database" { "dbname" } else { key };
        pairs.push(pair(key, &value));
    }
    if !pairs.is_empty() {
        config.apply_dsn(&pairs.join(" ")).map_err(consumer_err)?;
    }
    config.validate().map_err(consumer_err)?;
    Ok(config)
}

/// Fails for the first key left in `kwargs`, listing the accepted ones.
pub(crate) fn no_others(
    py: Python<'_>,
    kwargs: &Bound<'_, PyDict>,
    accepted: &[&str],
) -> PyResult<()> {
    match kwargs.iter().next() {
        Some((k, _)) => Err(unknown(py, &k.to_string(), accepted)),
        None => Ok(()),
    }
}

fn unknown(py: Python<'_>, key: &str, accepted: &[&str]) -> PyErr {
    let mut names: Vec<&str> = CONNECTION.to_vec();
    names.extend_from_slice(accepted);
    config_error(py, format!("unknown option `{key}`; the options are: dsn, {}", names.join(", ")))
}

/// A consumer's settings from `dsn` and the keyword arguments of `wal2arrow.stream()`.
pub(crate) fn consumer(
    py: Python<'_>,
    dsn: Option<&str>,
    kwargs: &Bound<'_, PyDict>,
) -> PyResult<ConsumerBuilder> {
    let config = connection(py, dsn, kwargs)?;
    let mut b = ConsumerBuilder::default().config(config);
    let mut plugin = PluginOptions { streaming: true, ..PluginOptions::default() };
    let mut slot = "wal2arrow".to_owned();
    let (mut create, mut temporary) = (true, false);
    let (mut stream_memory, mut spill_dir) = (None, None);
    for (k, v) in kwargs.iter() {
        let key: String = k.extract()?;
        let key = key.as_str();
        if !STREAM.contains(&key) {
            return Err(unknown(py, key, STREAM));
        }
        if v.is_none() && key != "heartbeat_interval" {
            continue;
        }
        match key {
            "slot" => slot = string(py, key, &v)?,
            "create_slot" => create = boolean(py, key, &v)?,
            "temporary_slot" => temporary = boolean(py, key, &v)?,
            "tables" => {
                let tables: Vec<String> = if v.is_instance_of::<PyString>() {
                    vec![v.extract()?]
                } else {
                    v.extract().map_err(|_| {
                        type_error(py, key, "a pattern or a list of patterns ('public.*')", &v)
                    })?
                };
                b = b.tables(tables);
            }
            "batch_rows" => plugin.batch_rows = count(py, key, &v, 1, 1 << 24)? as u32,
            "snapshot" => {
                let mode = match string(py, key, &v)?.as_str() {
                    "auto" => SnapshotMode::Auto,
                    "initial" => SnapshotMode::Initial,
                    "never" => SnapshotMode::Never,
                    "only" => SnapshotMode::Only,
                    _ => {
                        return Err(type_error(
                            py,
                            key,
                            "'auto', 'initial', 'never' or 'only'",
                            &v,
                        ));
                    }
                };
                b = b.snapshot(mode);
            }
            "snapshot_workers" => b = b.snapshot_workers(count(py, key, &v, 1, 64)? as usize),
            "plugin" => {
                let choice = match string(py, key, &v)?.as_str() {
                    "auto" => PluginChoice::Auto,
                    "wal2arrow" => PluginChoice::Wal2Arrow,
                    "wal2json" => PluginChoice::Wal2Json,
                    _ => return Err(type_error(py, key, "'auto', 'wal2arrow' or 'wal2json'", &v)),
                };
                b = b.output_plugin(choice);
            }
            "streaming" => plugin.streaming = boolean(py, key, &v)?,
            "stream_memory_mb" => stream_memory = Some(count(py, key, &v, 1, 1 << 20)? as usize),
            "spill_dir" => spill_dir = Some(std::path::PathBuf::from(string(py, key, &v)?)),
            "max_poll_interval" => b = b.max_poll_interval(seconds(py, key, &v)?),
            "heartbeat_interval" => {
                let every = if v.is_none() { None } else { Some(seconds(py, key, &v)?) };
                b = b.heartbeat_interval(every);
            }
            "start_lsn" => b = b.start_lsn(lsn(py, key, &v)?),
            "preflight" => b = b.preflight(boolean(py, key, &v)?),
            "publication" => b = b.create_publication(string(py, key, &v)?),
            "buffer_events" => b = b.buffer_events(count(py, key, &v, 1, 1 << 20)? as usize),
            "numeric_as_string" => plugin.numeric_as_string = boolean(py, key, &v)?,
            _ => unreachable!("checked against STREAM"),
        }
    }
    if stream_memory.is_some() || spill_dir.is_some() {
        let InProgress::Buffer { memory, spill_dir: dir } = InProgress::default() else {
            unreachable!("buffering is the default")
        };
        b = b.in_progress(InProgress::Buffer {
            memory: stream_memory.map_or(memory, |mb| mb << 20),
            spill_dir: spill_dir.unwrap_or(dir),
        });
    }
    b = b.plugin_options(plugin);
    b = match (temporary, create) {
        (true, _) => b.temporary_slot(slot),
        (false, true) => b.slot(slot),
        (false, false) => b.existing_slot(slot),
    };
    Ok(b)
}
