//! Preflight: everything the server must allow before a wal2arrow stream can run, checked one
//! by one, each failure with the exact change that fixes it.
//!
//! | check | passes when |
//! |---|---|
//! | `wal_level` | it is `logical` |
//! | `replication privilege` | the role has `REPLICATION` (or is a superuser) |
//! | `max_replication_slots` | a slot is free, unless ours exists |
//! | `max_wal_senders` | a WAL sender is free |
//! | `output_plugin_libraries` | absent (older servers), or it lists `wal2arrow` (a warning when only `wal2json` is listed and the consumer may fall back to it) |
//! | `slot` | missing (it will be created) or a slot of this database with a plugin the consumer may use |
//! | `plugin loadable` | a temporary wal2arrow slot can be created, or (falling back) a wal2json one (only [`Preflight::full`]) |
//! | `tables` | the patterns match at least one table |
//! | `select privilege` | the role may `SELECT` every matched table |
//! | `replica identity` | (a warning) matched tables without a key send deletes without one |

use std::fmt;

use wal2arrow_schema::TableFilter;

use crate::config::Config;
use crate::consumer::{PluginChoice, SlotMode};
use crate::error::{Error, Result};
use crate::protocol::conn::{quote_ident, quote_literal};
use crate::stream::{OutputPlugin, PLUGIN_NAME, ReplicationClient, find_slot, sql_client};

/// How a check came out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Fine; the detail says what was found.
    Pass(String),
    /// Works, but something deserves attention.
    Warn {
        /// What was found.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// Streaming cannot work until this is fixed.
    Fail {
        /// What was found.
        problem: String,
        /// Exactly what to change.
        fix: String,
    },
    /// Not checked, because an earlier failure makes the check meaningless.
    Skipped(String),
}

/// One check of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The check's name (see the module docs).
    pub name: &'static str,
    /// Its outcome.
    pub outcome: Outcome,
}

/// The outcome of every check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreflightReport {
    /// The checks, in the order run.
    pub checks: Vec<Check>,
    /// The tables the patterns match now, as (schema, table).
    pub tables: Vec<(String, String)>,
}

impl PreflightReport {
    /// Whether no check failed.
    pub fn is_ok(&self) -> bool {
        !self.checks.iter().any(|c| matches!(c.outcome, Outcome::Fail { .. }))
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| matches!(c.outcome, Outcome::Fail { .. }))
    }

    /// The check named `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    fn push(&mut self, name: &'static str, outcome: Outcome) {
        self.checks.push(Check { name, outcome });
    }
}

impl fmt::Display for PreflightReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            match &c.outcome {
                Outcome::Pass(detail) => writeln!(f, "  ok    {:<24} {detail}", c.name)?,
                Outcome::Warn { problem, fix } => {
                    writeln!(f, "  warn  {:<24} {problem}\n        {:<24} fix: {fix}", c.name, "")?
                }
                Outcome::Fail { problem, fix } => {
                    writeln!(f, "  FAIL  {:<24} {problem}\n        {:<24} fix: {fix}", c.name, "")?
                }
                Outcome::Skipped(why) => writeln!(f, "  skip  {:<24} {why}", c.name)?,
            }
        }
        Ok(())
    }
}

fn fail(problem: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome::Fail { problem: problem.into(), fix: fix.into() }
}

/// Runs the checks.
#[derive(Debug)]
pub struct Preflight<'a> {
    config: &'a Config,
    slot: &'a SlotMode,
    tables: &'a TableFilter,
    try_plugin: bool,
    plugin: PluginChoice,
}

impl<'a> Preflight<'a> {
    /// The checks `Consumer::start` runs (all but `plugin loadable`: creating the slot tells).
    pub fn new(config: &'a Config, slot: &'a SlotMode, tables: &'a TableFilter) -> Preflight<'a> {
        Preflight { config, slot, tables, try_plugin: false, plugin: PluginChoice::Auto }
    }

    /// Checks for this plugin choice (default [`PluginChoice::Auto`]: wal2arrow, or the
    /// wal2json fallback with a warning).
    pub fn with_plugin(mut self, plugin: PluginChoice) -> Preflight<'a> {
        self.plugin = plugin;
        self
    }

    /// Every check, including creating (and dropping) a temporary slot to see that the plugin
    /// loads: what `wal2arrow check` runs.
    pub fn full(config: &'a Config, slot: &'a SlotMode, tables: &'a TableFilter) -> Preflight<'a> {
        Preflight { config, slot, tables, try_plugin: true, plugin: PluginChoice::Auto }
    }

    /// Runs the checks.
    ///
    /// # Errors
    ///
    /// Only when the server cannot be reached or queried at all; failed checks are in the
    /// report.
    pub async fn run(&self) -> Result<PreflightReport> {
        let sql = sql_client(self.config).await?;
        let mut r = PreflightReport::default();
        let user = self.config.user.as_str();
        let setting = |name: &str| {
            let sql = &sql;
            let name = name.to_owned();
            async move {
                let row = sql
                    .query_opt("SELECT setting FROM pg_settings WHERE name = $1", &[&name])
                    .await?;
                Ok::<_, Error>(row.map(|r| r.get::<_, String>(0)))
            }
        };

        let wal_level = setting("wal_level").await?.unwrap_or_default();
        let logical = wal_level == "logical";
        r.push(
            "wal_level",
            if logical {
                Outcome::Pass("logical".into())
            } else {
                fail(
                    format!("wal_level is {wal_level}; logical decoding needs logical"),
                    "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL (wal_level is read at startup)",
                )
            },
        );

        let role = sql
            .query_one(
                "SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?;
        let (replication, superuser): (bool, bool) = (role.get(0), role.get(1));
        r.push(
            "replication privilege",
            if replication || superuser {
                Outcome::Pass(if superuser { "superuser".into() } else { "REPLICATION".into() })
            } else {
                fail(
                    format!("role {user:?} may not start replication"),
                    format!("as a superuser: ALTER ROLE {} WITH REPLICATION;", quote_ident(user)),
                )
            },
        );

        let slot_name = self.slot.name();
        let existing = find_slot(&sql, slot_name).await?;
        let max_slots: i64 =
            setting("max_replication_slots").await?.and_then(|s| s.parse().ok()).unwrap_or(0);
        let used_slots: i64 =
            sql.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await?.get(0);
        let need_slot =
            i64::from(existing.is_none()) + i64::from(self.try_plugin && existing.is_none());
        r.push(
            "max_replication_slots",
            if max_slots - used_slots >= need_slot {
                Outcome::Pass(format!("{used_slots} of {max_slots} in use"))
            } else {
                fail(
                    format!("{used_slots} of {max_slots} replication slots are in use and a new one is needed"),
                    format!(
                        "drop unused slots (SELECT pg_drop_replication_slot(name)), or ALTER SYSTEM SET \
                         max_replication_slots = {}; then restart PostgreSQL",
                        used_slots + need_slot.max(1) + 4
                    ),
                )
            },
        );

        let max_senders: i64 =
            setting("max_wal_senders").await?.and_then(|s| s.parse().ok()).unwrap_or(0);
        let used_senders: i64 =
            sql.query_one("SELECT count(*) FROM pg_stat_replication", &[]).await?.get(0);
        r.push(
            "max_wal_senders",
            if max_senders > used_senders {
                Outcome::Pass(format!("{used_senders} of {max_senders} in use"))
            } else {
                fail(
                    format!("{used_senders} of {max_senders} WAL senders are in use"),
                    format!(
                        "stop an idle replication client, or ALTER SYSTEM SET max_wal_senders = {}; then restart \
                         PostgreSQL",
                        used_senders + 5
                    ),
                )
            },
        );

        let allowed = setting("output_plugin_libraries").await?;
        let plugin_listed = match &allowed {
            None => {
                r.push(
                    "output_plugin_libraries",
                    Outcome::Pass(
                        "this server has no output_plugin_libraries: every plugin may load".into(),
                    ),
                );
                true
            }
            Some(list) => {
                let libs: Vec<&str> = list.split(',').map(|l| l.trim().trim_matches('"')).collect();
                let listed = |p: OutputPlugin| libs.contains(&p.name());
                let fix = |p: OutputPlugin| {
                    let mut wanted: Vec<String> =
                        libs.iter().filter(|l| !l.is_empty()).map(|l| quote_literal(l)).collect();
                    wanted.push(quote_literal(p.name()));
                    format!(
                        "as a superuser: ALTER SYSTEM SET output_plugin_libraries = {}; SELECT pg_reload_conf();",
                        wanted.join(", ")
                    )
                };
                let refused = |p: OutputPlugin| {
                    format!(
                        "output_plugin_libraries ({list}) does not list {p}, so the server refuses it"
                    )
                };
                let (arrow, json) = (OutputPlugin::Wal2Arrow, OutputPlugin::Wal2Json);
                let (outcome, usable) = match self.plugin {
                    PluginChoice::Wal2Json if listed(json) => (Outcome::Pass(list.clone()), true),
                    PluginChoice::Wal2Json => (fail(refused(json), fix(json)), false),
                    _ if listed(arrow) => (Outcome::Pass(list.clone()), true),
                    PluginChoice::Auto if listed(json) => (
                        Outcome::Warn {
                            problem: format!(
                                "{}: streams fall back to wal2json (same batches, parsed from JSON; \
                                 slower, see the README)",
                                refused(arrow)
                            ),
                            fix: fix(arrow),
                        },
                        true,
                    ),
                    _ => (fail(refused(arrow), fix(arrow)), false),
                };
                r.push("output_plugin_libraries", outcome);
                usable
            }
        };

        let dbname = self.config.dbname();
        r.push(
            "slot",
            match (&existing, self.slot) {
                (None, SlotMode::Persistent { create_if_missing: false, .. }) => fail(
                    format!("slot {slot_name:?} does not exist"),
                    format!(
                        "SELECT pg_create_logical_replication_slot({}, '{}'); or let the consumer create it",
                        quote_literal(slot_name),
                        match self.plugin {
                            PluginChoice::Wal2Json => "wal2json",
                            _ => PLUGIN_NAME,
                        }
                    ),
                ),
                (None, _) => Outcome::Pass(format!("{slot_name:?} will be created")),
                (Some(s), _) if !self.plugin.accepts(s.plugin.as_deref()) => fail(
                    format!(
                        "slot {slot_name:?} exists with plugin {}, which this consumer may not use ({})",
                        s.plugin.as_deref().unwrap_or("(physical)"),
                        self.plugin.describe()
                    ),
                    format!(
                        "use another slot name, or SELECT pg_drop_replication_slot({}); if nothing else needs it",
                        quote_literal(slot_name)
                    ),
                ),
                (Some(s), _) if s.database.as_deref() != Some(dbname) => fail(
                    format!(
                        "slot {slot_name:?} belongs to database {:?}, not {dbname:?}",
                        s.database.clone().unwrap_or_default()
                    ),
                    "connect to that database, or use another slot name",
                ),
                (Some(s), _) if s.active => Outcome::Warn {
                    problem: format!("slot {slot_name:?} is in use by another session"),
                    fix: "stop the other consumer; this one retries until the slot is free".into(),
                },
                (Some(s), _) => Outcome::Pass(format!(
                    "exists ({}), resumes at {}",
                    s.plugin.as_deref().unwrap_or("?"),
                    s.confirmed_flush_lsn.map(|l| l.to_string()).unwrap_or_else(|| "?".into())
                )),
            },
        );

        if self.try_plugin {
            let possible = logical && plugin_listed && (replication || superuser);
            r.push("plugin loadable", self.plugin_loadable(possible).await);
        }

        let tables = self.resolve_tables(&sql, &mut r).await?;
        let denied: Vec<&(String, String)> = {
            let mut denied = Vec::new();
            for t in &tables {
                let qualified = format!("{}.{}", quote_ident(&t.0), quote_ident(&t.1));
                let ok: bool = sql
                    .query_one(
                        "SELECT has_table_privilege(current_user, $1::text::regclass, 'SELECT')",
                        &[&qualified],
                    )
                    .await?
                    .get(0);
                if !ok {
                    denied.push(t);
                }
            }
            denied
        };
        r.push(
            "select privilege",
            if denied.is_empty() {
                Outcome::Pass(format!("{} tables", tables.len()))
            } else {
                let names: Vec<String> = denied
                    .iter()
                    .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
                    .collect();
                fail(
                    format!("role {user:?} may not SELECT {}", names.join(", ")),
                    format!("GRANT SELECT ON {} TO {};", names.join(", "), quote_ident(user)),
                )
            },
        );

        let keyless: Vec<String> = sql
            .query(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p') AND (c.relreplident = 'n' OR (c.relreplident = 'd'
                   AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))",
                &[],
            )
            .await?
            .iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
            .filter(|t| tables.contains(t))
            .map(|(s, t)| format!("{}.{}", quote_ident(&s), quote_ident(&t)))
            .collect();
        r.push(
            "replica identity",
            if keyless.is_empty() {
                Outcome::Pass("every matched table has a key or REPLICA IDENTITY FULL".into())
            } else {
                Outcome::Warn {
                    problem: format!(
                        "deletes and key changes of {} carry no key (wal2json, the fallback, \
                         drops their UPDATEs and DELETEs altogether)",
                        keyless.join(", ")
                    ),
                    fix: format!(
                        "add a primary key, or ALTER TABLE {} REPLICA IDENTITY FULL;",
                        keyless[0]
                    ),
                }
            },
        );
        r.tables = tables;
        Ok(r)
    }

    /// Creates and drops a temporary slot with the plugin (with the fallback too, when
    /// wal2arrow fails and the consumer may fall back).
    async fn plugin_loadable(&self, possible: bool) -> Outcome {
        if !possible {
            return Outcome::Skipped("fix the failures above first".into());
        }
        let first = match self.plugin {
            PluginChoice::Wal2Json => OutputPlugin::Wal2Json,
            _ => OutputPlugin::Wal2Arrow,
        };
        let install = "install it into the server: cd wal2arrow && cargo pgrx install --release (or \
                       copy libwal2arrow.so to $(pg_config --pkglibdir)/wal2arrow.so)";
        match self.try_slot(first).await {
            Ok(Ok(())) => {
                Outcome::Pass(format!("a temporary {first} slot was created and dropped"))
            }
            Ok(Err(e)) => {
                let why = e.db_error().map_or(e.to_string(), |d| d.message.clone());
                if self.plugin == PluginChoice::Auto
                    && matches!(self.try_slot(OutputPlugin::Wal2Json).await, Ok(Ok(())))
                {
                    return Outcome::Warn {
                        problem: format!(
                            "the server cannot load the wal2arrow plugin ({why}): streams fall \
                             back to wal2json"
                        ),
                        fix: install.into(),
                    };
                }
                fail(
                    format!("the server cannot load the {first} plugin: {why}"),
                    match first {
                        OutputPlugin::Wal2Arrow => install.to_owned(),
                        OutputPlugin::Wal2Json => {
                            "install wal2json (Debian: apt-get install postgresql-15-wal2json)"
                                .to_owned()
                        }
                    },
                )
            }
            Err(_) => Outcome::Warn {
                problem: "creating a slot took too long (a long-running transaction delays it)"
                    .into(),
                fix: "retry once long transactions finish (see pg_stat_activity)".into(),
            },
        }
    }

    async fn try_slot(
        &self,
        plugin: OutputPlugin,
    ) -> std::result::Result<Result<()>, tokio::time::error::Elapsed> {
        let attempt = async {
            let mut client = ReplicationClient::connect(self.config).await?;
            let name = format!("wal2arrow_check_{}", std::process::id());
            client.create_slot(&name, plugin.name(), true).await?;
            client.drop_slot(&name).await
        };
        tokio::time::timeout(self.config.connect_timeout, attempt).await
    }

    /// The tables the patterns match, and the `tables` check.
    async fn resolve_tables(
        &self,
        sql: &tokio_postgres::Client,
        r: &mut PreflightReport,
    ) -> Result<Vec<(String, String)>> {
        let all: Vec<(String, String)> = sql
            .query(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
                 ORDER BY 1, 2",
                &[],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let matched: Vec<(String, String)> =
            all.iter().filter(|(s, t)| self.tables.includes(s, t)).cloned().collect();
        let unmatched: Vec<&str> = self
            .tables
            .patterns()
            .iter()
            .filter(|p| !all.iter().any(|(s, t)| p.matches(s, t)))
            .map(|p| p.as_str())
            .collect();
        let outcome = if matched.is_empty() && !self.tables.is_all() {
            fail(
                format!(
                    "no table matches {} (tables here: {})",
                    self.tables
                        .patterns()
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if all.is_empty() {
                        "none".to_owned()
                    } else {
                        all.iter()
                            .take(10)
                            .map(|(s, t)| format!("{s}.{t}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
                "check the patterns (schema.table; names are lower case unless quoted); tables created \
                 later that match are captured, but at least one must exist",
            )
        } else if !unmatched.is_empty() {
            Outcome::Warn {
                problem: format!("no table matches {} yet", unmatched.join(", ")),
                fix: "tables created later that match are captured; check the pattern if none will be".into(),
            }
        } else if self.tables.is_all() {
            Outcome::Pass(format!("every table ({} now)", matched.len()))
        } else {
            Outcome::Pass(format!("{} tables match", matched.len()))
        };
        r.push("tables", outcome);
        Ok(matched)
    }
}
