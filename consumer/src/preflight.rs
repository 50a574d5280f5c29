//! Preflight: everything the server must allow before a wal2arrow stream can run, checked one
//! by one, each failure with the exact change that fixes it.
//!
//! | check | passes when |
//! |---|---|
//! | `server version` | PostgreSQL 14 to 18 (older: fails; newer: a warning); names what the major offers |
//! | `wal_level` | it is `logical` |
//! | `replication privilege` | the role has `REPLICATION` (or is a superuser) |
//! | `max_replication_slots` | a slot is free, unless ours exists |
//! | `max_wal_senders` | a WAL sender is free |
//! | `output_plugin_libraries` | absent (older servers), or it lists `wal2arrow` (a warning when only `wal2json` is listed and the consumer may fall back to it); a role that may not read the setting learns it from `plugin loadable` |
//! | `failover` | (only when asked for) the server is PostgreSQL 17 or later |
//! | `slot` | missing (it will be created) or an idle slot of this database with a plugin the consumer may use; a slot another session streams from fails, naming that session |
//! | `plugin loadable` | a temporary wal2arrow slot can be created, or (falling back) a wal2json one (only [`Preflight::full`]) |
//! | `tables` | the patterns match at least one table |
//! | `schema usage` | the role has `USAGE` on the schemas of the matched tables |
//! | `select privilege` | the role may `SELECT` every matched table |
//! | `replica identity` | (a warning) matched tables without a key send deletes without one |
//!
//! `output_plugin_libraries` (PostgreSQL 15.19, 16.15, 17.11, 18.6 and later) is readable
//! only by superusers and members of `pg_read_all_settings`: for other roles `SHOW` fails with
//! SQLSTATE 42501, where a server without the setting answers 42704 — so whether the server
//! has it is always known, and a refusal to load a plugin (42501 when creating the slot) is
//! then known to be the allow-list.

use wal2arrow_client::sql::{quote_ident, quote_literal};
use wal2arrow_client::{
    Config, Error as ClientError, OutputPlugin, ReplicationClient, SlotProblem, SlotResolution,
    find_slot, resolve_slot, sql_client,
};
use wal2arrow_schema::TableFilter;

use crate::error::{Error, Result};
use crate::report::{Outcome, PreflightReport, fail};
use crate::settings::{PluginChoice, SlotMode};

/// Runs the checks.
#[derive(Debug)]
pub struct Preflight<'a> {
    config: &'a Config,
    slot: &'a SlotMode,
    tables: &'a TableFilter,
    try_plugin: bool,
    plugin: PluginChoice,
    failover: bool,
}

impl<'a> Preflight<'a> {
    /// The checks `Consumer::start` runs (all but `plugin loadable`: creating the slot tells).
    pub fn new(config: &'a Config, slot: &'a SlotMode, tables: &'a TableFilter) -> Preflight<'a> {
        Preflight {
            config,
            slot,
            tables,
            try_plugin: false,
            plugin: PluginChoice::Auto,
            failover: false,
        }
    }

    /// Checks for this plugin choice (default [`PluginChoice::Auto`]: wal2arrow, or the
    /// wal2json fallback with a warning).
    pub fn with_plugin(mut self, plugin: PluginChoice) -> Preflight<'a> {
        self.plugin = plugin;
        self
    }

    /// Also check that the slot can be a failover slot (PostgreSQL 17 and later).
    pub fn with_failover(mut self, failover: bool) -> Preflight<'a> {
        self.failover = failover;
        self
    }

    /// Every check, including creating (and dropping) a temporary slot to see that the plugin
    /// loads: what `wal2arrow check` runs.
    pub fn full(config: &'a Config, slot: &'a SlotMode, tables: &'a TableFilter) -> Preflight<'a> {
        Preflight {
            config,
            slot,
            tables,
            try_plugin: true,
            plugin: PluginChoice::Auto,
            failover: false,
        }
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

        let version_num: i64 =
            setting("server_version_num").await?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let version = setting("server_version").await?.unwrap_or_default();
        let major = version_num / 10000;
        r.push("server version", version_outcome(major, &version));

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
        let existing = wait_while_active(&sql, self.config, slot_name).await?;
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

        if self.failover {
            r.push(
                "failover",
                if major >= 17 {
                    Outcome::Pass("PostgreSQL 17 or later: the slot can be a failover slot".into())
                } else {
                    fail(
                        format!(
                            "failover slots need PostgreSQL 17 or later, and this server is \
                             {version}"
                        ),
                        "stream without a failover slot (see the README's \"Failover and \
                         standbys\" for what this major offers), or upgrade to 17",
                    )
                },
            );
        }

        let allow_list = AllowList::read(&sql).await?;
        let plugin_listed = match &allow_list {
            AllowList::Absent => {
                r.push(
                    "output_plugin_libraries",
                    Outcome::Pass(format!(
                        "this server ({version}) has no output_plugin_libraries (it came with \
                         15.19, 16.15, 17.11 and 18.6): every plugin may load"
                    )),
                );
                true
            }
            AllowList::Hidden => {
                r.push(
                    "output_plugin_libraries",
                    Outcome::Pass(format!(
                        "set on this server, but role {user:?} may not read it (superusers and \
                         pg_read_all_settings may); loading the plugin tells whether it lists {}",
                        self.first_plugin()
                    )),
                );
                true
            }
            AllowList::Listed(libs) => {
                let (outcome, usable) = self.allow_list_outcome(libs);
                r.push("output_plugin_libraries", outcome);
                usable
            }
        };

        let dbname = self.config.dbname();
        let resolution = resolve_slot(&sql, slot_name, dbname, self.plugin.allowed()).await?;
        let create = !matches!(self.slot, SlotMode::Persistent { create_if_missing: false, .. });
        r.push(
            "slot",
            match resolution {
                SlotResolution::Missing if !create => {
                    let p = SlotProblem::Missing {
                        name: slot_name.to_owned(),
                        plugin: self.plugin.first(),
                    };
                    fail(p.problem(), p.fix())
                }
                SlotResolution::Missing => Outcome::Pass(format!("{slot_name:?} will be created")),
                SlotResolution::Unusable(p) => fail(p.problem(), p.fix()),
                SlotResolution::Usable(s, _) if s.active => {
                    let holder = slot_holder(&sql, slot_name).await?;
                    fail(
                        format!("slot {slot_name:?} is in use by {holder}"),
                        format!(
                            "stop that consumer first (a slot streams to one session at a time), or use \
                             another slot name; to end it: SELECT pg_terminate_backend(active_pid) FROM \
                             pg_replication_slots WHERE slot_name = {};",
                            quote_literal(slot_name)
                        ),
                    )
                }
                SlotResolution::Usable(s, _) => Outcome::Pass(format!(
                    "exists ({}), resumes at {}",
                    s.plugin.as_deref().unwrap_or("?"),
                    s.confirmed_flush_lsn.map(|l| l.to_string()).unwrap_or_else(|| "?".into())
                )),
            },
        );

        if self.try_plugin {
            let possible = logical && plugin_listed && (replication || superuser);
            r.push("plugin loadable", self.plugin_loadable(possible, &allow_list).await);
        }

        let tables = self.resolve_tables(&sql, &mut r).await?;
        let names = |list: &[&TableAccess]| -> Vec<String> {
            list.iter()
                .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table)))
                .collect()
        };
        let mut no_usage: Vec<&str> =
            tables.iter().filter(|t| !t.usage).map(|t| t.schema.as_str()).collect();
        no_usage.dedup();
        r.push(
            "schema usage",
            if no_usage.is_empty() {
                Outcome::Pass(format!("{} schemas", {
                    let mut s: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
                    s.dedup();
                    s.len()
                }))
            } else {
                let schemas: Vec<String> = no_usage.iter().map(|s| quote_ident(s)).collect();
                fail(
                    format!("role {user:?} may not use schema {}", schemas.join(", ")),
                    format!(
                        "GRANT USAGE ON SCHEMA {} TO {};",
                        schemas.join(", "),
                        quote_ident(user)
                    ),
                )
            },
        );
        let denied: Vec<&TableAccess> = tables.iter().filter(|t| !t.select).collect();
        r.push(
            "select privilege",
            if denied.is_empty() {
                Outcome::Pass(format!("{} tables", tables.len()))
            } else {
                let names = names(&denied);
                fail(
                    format!("role {user:?} may not SELECT {}", names.join(", ")),
                    format!("GRANT SELECT ON {} TO {};", names.join(", "), quote_ident(user)),
                )
            },
        );

        let keyless: Vec<String> = names(&tables.iter().filter(|t| !t.has_key).collect::<Vec<_>>());
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
        r.tables = tables.into_iter().map(|t| (t.schema, t.table)).collect();
        Ok(r)
    }

    /// The plugin a new slot is created with first.
    fn first_plugin(&self) -> OutputPlugin {
        self.plugin.first()
    }

    /// The `output_plugin_libraries` check for a list the role can read, and whether the
    /// plugin may load.
    fn allow_list_outcome(&self, libs: &[String]) -> (Outcome, bool) {
        let list = libs.join(", ");
        let listed = |p: OutputPlugin| libs.iter().any(|l| l == p.name());
        let refused = |p: OutputPlugin| {
            format!("output_plugin_libraries ({list}) does not list {p}, so the server refuses it")
        };
        let (arrow, json) = (OutputPlugin::Wal2Arrow, OutputPlugin::Wal2Json);
        match self.plugin {
            PluginChoice::Wal2Json if listed(json) => (Outcome::Pass(list.clone()), true),
            PluginChoice::Wal2Json => {
                (fail(refused(json), allow_list_fix(Some(libs), json)), false)
            }
            _ if listed(arrow) => (Outcome::Pass(list.clone()), true),
            PluginChoice::Auto if listed(json) => (
                Outcome::Warn {
                    problem: format!(
                        "{}: streams fall back to wal2json (same batches, parsed from JSON; \
                         slower, see the README)",
                        refused(arrow)
                    ),
                    fix: allow_list_fix(Some(libs), arrow),
                },
                true,
            ),
            _ => (fail(refused(arrow), allow_list_fix(Some(libs), arrow)), false),
        }
    }

    /// Creates and drops a temporary slot with the plugin (with the fallback too, when
    /// wal2arrow fails and the consumer may fall back).
    async fn plugin_loadable(&self, possible: bool, allow_list: &AllowList) -> Outcome {
        if !possible {
            return Outcome::Skipped("fix the failures above first".into());
        }
        let first = self.first_plugin();
        match self.try_slot(first).await {
            Ok(Ok(())) => {
                Outcome::Pass(format!("a temporary {first} slot was created and dropped"))
            }
            Ok(Err(e)) => {
                let (problem, fix) = refusal(first, &e, allow_list);
                if self.plugin == PluginChoice::Auto
                    && matches!(self.try_slot(OutputPlugin::Wal2Json).await, Ok(Ok(())))
                {
                    return Outcome::Warn {
                        problem: format!("{problem}: streams fall back to wal2json"),
                        fix,
                    };
                }
                fail(problem, fix)
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
    ) -> std::result::Result<wal2arrow_client::Result<()>, tokio::time::error::Elapsed> {
        let attempt = async {
            let mut client = ReplicationClient::connect(self.config).await?;
            let name = format!("wal2arrow_check_{}", std::process::id());
            client.create_slot(&name, plugin.name(), true).await?;
            client.drop_slot(&name).await
        };
        tokio::time::timeout(self.config.connect_timeout, attempt).await
    }

    /// The tables the patterns match, with the role's access to them, and the `tables` check.
    async fn resolve_tables(
        &self,
        sql: &tokio_postgres::Client,
        r: &mut PreflightReport,
    ) -> Result<Vec<TableAccess>> {
        // By OID, so that a schema the role may not use (a name lookup would fail) is still
        // reported rather than an error.
        let all: Vec<TableAccess> = sql
            .query(
                "SELECT n.nspname, c.relname, has_schema_privilege(n.oid, 'USAGE'),
                        has_table_privilege(c.oid, 'SELECT'),
                        c.relreplident = 'f' OR c.relreplident = 'i' OR (c.relreplident = 'd' AND
                          EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
                 ORDER BY 1, 2",
                &[],
            )
            .await?
            .iter()
            .map(|row| TableAccess {
                schema: row.get(0),
                table: row.get(1),
                usage: row.get(2),
                select: row.get(3),
                has_key: row.get(4),
            })
            .collect();
        let unmatched: Vec<&str> = self
            .tables
            .patterns()
            .iter()
            .filter(|p| !all.iter().any(|t| p.matches(&t.schema, &t.table)))
            .map(|p| p.as_str())
            .collect();
        let outcome_for = |matched: usize| {
            if matched == 0 && !self.tables.is_all() {
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
                                .map(|t| format!("{}.{}", t.schema, t.table))
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
                Outcome::Pass(format!("every table ({matched} now)"))
            } else {
                Outcome::Pass(format!("{matched} tables match"))
            }
        };
        let matched: Vec<TableAccess> =
            all.iter().filter(|t| self.tables.includes(&t.schema, &t.table)).cloned().collect();
        r.push("tables", outcome_for(matched.len()));
        Ok(matched)
    }
}

/// The `server version` check: the supported majors, and what this one offers.
fn version_outcome(major: i64, version: &str) -> Outcome {
    let offers = match major {
        ..=15 => "no failover slots, no decoding on standbys",
        16 => "decoding on standbys; no failover slots",
        _ => "failover slots, decoding on standbys",
    };
    match major {
        ..=13 => fail(
            format!("PostgreSQL {version}: wal2arrow supports 14 to 18"),
            "upgrade the server to PostgreSQL 14 or later (or stream through another tool)",
        ),
        14..=18 => Outcome::Pass(format!("PostgreSQL {version} ({offers})")),
        _ => Outcome::Warn {
            problem: format!("PostgreSQL {version} is newer than wal2arrow knows (14 to 18)"),
            fix: "build the plugin for this major (cargo pgrx install) and run the test suite \
                  against it (scripts/test.sh --pg N) before relying on it"
                .into(),
        },
    }
}

/// A matched table and what the role may do with it.
#[derive(Clone, Debug)]
struct TableAccess {
    schema: String,
    table: String,
    /// `USAGE` on its schema.
    usage: bool,
    /// `SELECT` on the table.
    select: bool,
    /// Deletes carry a key: a primary key, a replica identity index, or `FULL`.
    has_key: bool,
}

/// What the server's `output_plugin_libraries` is, as far as this role can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AllowList {
    /// The server has no such setting (before the August 2026 minor releases): any plugin
    /// may load.
    Absent,
    /// The server has it, but this role may not read it.
    Hidden,
    /// The libraries it lists.
    Listed(Vec<String>),
}

impl AllowList {
    /// Reads the setting with `SHOW`, which tells the three cases apart by SQLSTATE.
    pub(crate) async fn read(sql: &tokio_postgres::Client) -> Result<AllowList> {
        match sql.simple_query("SHOW output_plugin_libraries").await {
            Ok(messages) => {
                let value = messages
                    .iter()
                    .find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => {
                            row.get(0).map(str::to_owned)
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                Ok(AllowList::Listed(
                    value
                        .split(',')
                        .map(|l| l.trim().trim_matches('"').to_owned())
                        .filter(|l| !l.is_empty())
                        .collect(),
                ))
            }
            // undefined_object: no such setting.
            Err(e) if e.code().is_some_and(|c| c.code() == "42704") => Ok(AllowList::Absent),
            // insufficient_privilege: it exists, superuser-only.
            Err(e) if e.code().is_some_and(|c| c.code() == "42501") => Ok(AllowList::Hidden),
            Err(e) => Err(e.into()),
        }
    }
}

/// The statement that lets `plugin` load: the list with it added (when the list is known), or
/// how to add it.
pub(crate) fn allow_list_fix(libs: Option<&[String]>, plugin: OutputPlugin) -> String {
    match libs {
        Some(libs) => {
            let mut wanted: Vec<String> = libs.iter().map(|l| quote_literal(l)).collect();
            wanted.push(quote_literal(plugin.name()));
            format!(
                "as a superuser: ALTER SYSTEM SET output_plugin_libraries = {}; SELECT pg_reload_conf();",
                wanted.join(", ")
            )
        }
        None => format!(
            "as a superuser, add {plugin} to output_plugin_libraries (SHOW output_plugin_libraries \
             shows the list; list each library as its own quoted string): ALTER SYSTEM SET \
             output_plugin_libraries = <the current list>, '{plugin}'; SELECT pg_reload_conf();"
        ),
    }
}

/// Why the server would not create a slot with `plugin`, and the fix — by SQLSTATE: 42501 on
/// a replication connection (which already has REPLICATION) is the allow-list, 58P01 a
/// library that is not installed.
pub(crate) fn refusal(
    plugin: OutputPlugin,
    e: &ClientError,
    allow_list: &AllowList,
) -> (String, String) {
    let why = e.db_error().map_or(e.to_string(), |d| d.message.clone());
    let install = match plugin {
        OutputPlugin::Wal2Arrow => {
            "install it into the server: cd wal2arrow && cargo pgrx install \
             --release (or copy libwal2arrow.so to $(pg_config --pkglibdir)/wal2arrow.so)"
                .to_owned()
        }
        OutputPlugin::Wal2Json => {
            "install wal2json (Debian: apt-get install postgresql-15-wal2json)".to_owned()
        }
    };
    match e.code() {
        Some("42501") => (
            format!(
                "the server refuses the {plugin} plugin: output_plugin_libraries does not list it ({why})"
            ),
            allow_list_fix(
                match allow_list {
                    AllowList::Listed(libs) => Some(libs),
                    _ => None,
                },
                plugin,
            ),
        ),
        Some("58P01") => (format!("the server cannot load the {plugin} plugin: {why}"), install),
        _ => (format!("the server cannot load the {plugin} plugin: {why}"), install),
    }
}

/// A report with one failed check: what `start` returns when the server refuses the plugin
/// after the checks passed (a role that may not read the allow-list), so the refusal is a
/// preflight failure with its fix.
pub(crate) fn refused_report(
    plugin: OutputPlugin,
    e: &ClientError,
    allow_list: &AllowList,
) -> PreflightReport {
    let (problem, fix) = refusal(plugin, e, allow_list);
    let mut r = PreflightReport::default();
    let name =
        if e.code() == Some("42501") { "output_plugin_libraries" } else { "plugin loadable" };
    r.push(name, fail(problem, fix));
    r
}

/// The slot, after waiting for a session that holds it to let go: a few seconds for anyone,
/// and — when the holder has our `application_name`, as a consumer that just died on another
/// host would — up to `wal_sender_timeout` (plus a margin, at most 5 minutes), the time the
/// server takes to notice a peer that is gone.
async fn wait_while_active(
    sql: &tokio_postgres::Client,
    config: &Config,
    slot: &str,
) -> Result<Option<wal2arrow_client::SlotState>> {
    let started = tokio::time::Instant::now();
    let mut patience = std::time::Duration::from_secs(3);
    let mut checked_holder = false;
    loop {
        let found = find_slot(sql, slot).await?;
        if !found.as_ref().is_some_and(|s| s.active) {
            return Ok(found);
        }
        if !checked_holder {
            checked_holder = true;
            let ours: bool = sql
                .query_one(
                    "SELECT coalesce(bool_or(a.application_name = $2), false)
                     FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
                     WHERE s.slot_name = $1",
                    &[&slot, &config.application_name],
                )
                .await?
                .get(0);
            if ours {
                let timeout_ms: i64 = sql
                    .query_one(
                        "SELECT setting::int8 FROM pg_settings WHERE name = 'wal_sender_timeout'",
                        &[],
                    )
                    .await?
                    .get(0);
                patience = std::time::Duration::from_millis(timeout_ms.max(0) as u64 + 5_000)
                    .min(std::time::Duration::from_secs(300));
                tracing::warn!(
                    slot,
                    wait = ?patience,
                    "the slot is held by a session named like this consumer (perhaps one that \
                     just died): waiting for the server to let it go"
                );
            }
        }
        if started.elapsed() >= patience {
            return Ok(found);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Who streams from `slot`: the process, its application name, client address and start.
async fn slot_holder(sql: &tokio_postgres::Client, slot: &str) -> Result<String> {
    let row = sql
        .query_opt(
            "SELECT s.active_pid, a.application_name, a.client_addr::text, a.usename::text,
                    to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ')
             FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(match row {
        Some(r) => {
            let pid: Option<i32> = r.get(0);
            let app: Option<String> = r.get(1);
            let addr: Option<String> = r.get(2);
            let user: Option<String> = r.get(3);
            let since: Option<String> = r.get(4);
            let mut s =
                format!("process {}", pid.map_or_else(|| "?".to_owned(), |p| p.to_string()));
            if let Some(app) = app.filter(|a| !a.is_empty()) {
                s.push_str(&format!(" (application_name {app:?}"));
                if let Some(user) = user {
                    s.push_str(&format!(", user {user:?}"));
                }
                s.push_str(&format!(
                    ", from {}",
                    addr.unwrap_or_else(|| "a local socket".to_owned())
                ));
                if let Some(since) = since {
                    s.push_str(&format!(", since {since}"));
                }
                s.push(')');
            }
            s
        }
        None => "another session".to_owned(),
    })
}
