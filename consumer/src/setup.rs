//! Auto-configuration: what a server and a role need for wal2arrow streams, as SQL, planned
//! from what the server reports and applied over a superuser connection (`wal2arrow setup`).
//!
//! The plan covers what [`crate::Preflight`] checks and a superuser can change: `wal_level`,
//! free replication slots and WAL senders, `output_plugin_libraries` (only on servers that
//! have it), the role's `REPLICATION` attribute (the role is created when missing), and
//! `USAGE` and `SELECT` on the matched tables. Settings are compared with what the
//! configuration files already hold (`pg_file_settings`), so a second run after an
//! `ALTER SYSTEM` that awaits a restart plans nothing again; it says the restart is pending.
//! Installing the plugin's library is not part of it (see the README's installation section).

use std::fmt;

use wal2arrow_client::sql::{quote_ident, quote_literal};
use wal2arrow_client::{Config, sql_client};
use wal2arrow_schema::TableFilter;

use crate::error::{Error, Result};

/// One change of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupStep {
    /// Why it is needed.
    pub reason: String,
    /// The statement.
    pub sql: String,
    /// It takes effect only after PostgreSQL restarts (`ALTER SYSTEM` of a setting read at
    /// startup).
    pub restart: bool,
}

/// What [`plan`] found: the changes to make, and settings already changed in the
/// configuration files that wait for a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetupPlan {
    /// The changes, in the order to make them.
    pub steps: Vec<SetupStep>,
    /// Settings whose configured value is right but not yet in effect (a restart is due).
    pub pending_restart: Vec<String>,
    /// What `ALTER SYSTEM` cannot change (a setting given on the server's command line or in
    /// its environment), in words: change it where it is set.
    pub manual: Vec<String>,
}

impl SetupPlan {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.manual.is_empty()
    }

    /// Whether PostgreSQL must restart before streams can run (for these steps or for
    /// settings already changed).
    pub fn needs_restart(&self) -> bool {
        !self.pending_restart.is_empty() || self.steps.iter().any(|s| s.restart)
    }
}

impl fmt::Display for SetupPlan {
    /// The plan as an SQL script: each statement after a comment saying why.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            let when = if step.restart { " (takes effect after a restart)" } else { "" };
            // Names in the reason are the catalog's: a line break in one must not end the
            // comment.
            let reason = step.reason.replace(['\n', '\r'], " ");
            writeln!(f, "-- {reason}{when}")?;
            writeln!(f, "{};", step.sql)?;
        }
        if self.steps.iter().any(|s| s.sql.starts_with("ALTER SYSTEM")) {
            writeln!(f, "-- apply the settings that need no restart")?;
            writeln!(f, "SELECT pg_reload_conf();")?;
        }
        for m in &self.manual {
            writeln!(f, "-- by hand: {}", m.replace(['\n', '\r'], " "))?;
        }
        Ok(())
    }
}

/// A setting as the server runs it and as its configuration files set it.
struct Setting {
    /// In effect now.
    current: String,
    /// What the files set it to (the last entry, `postgresql.auto.conf` included), when they
    /// set it.
    configured: Option<String>,
    /// `pg_settings.context`: `postmaster` settings need a restart.
    context: String,
    /// `pg_settings.source`: set on the command line or in the environment, `ALTER SYSTEM`
    /// does not override it.
    source: String,
}

impl Setting {
    /// The value the server will run with after a restart.
    fn effective(&self) -> &str {
        self.configured.as_deref().unwrap_or(&self.current)
    }
}

async fn setting(sql: &tokio_postgres::Client, name: &str) -> Result<Option<Setting>> {
    let Some(row) = sql
        .query_opt("SELECT setting, context, source FROM pg_settings WHERE name = $1", &[&name])
        .await?
    else {
        return Ok(None);
    };
    let configured = sql
        .query_opt(
            // Entries waiting for a restart carry an error ("could not be applied"): they
            // count; an invalid value compares unequal anyway.
            "SELECT setting FROM pg_file_settings WHERE name = $1 ORDER BY seqno DESC LIMIT 1",
            &[&name],
        )
        .await?
        .map(|r| r.get::<_, String>(0));
    Ok(Some(Setting { current: row.get(0), configured, context: row.get(1), source: row.get(2) }))
}

/// The items of a list setting (`a, "b", 'c'` → `a`, `b`, `c`).
fn list_items(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|l| l.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Plans `ALTER SYSTEM SET name = value_sql` unless the value the server will run with is
/// right (`ok`); notes a right value that waits for a restart.
fn settle(
    plan: &mut SetupPlan,
    s: &Setting,
    name: &str,
    ok: impl Fn(&str) -> bool,
    value_sql: String,
    why: String,
) {
    if matches!(s.source.as_str(), "command line" | "environment variable") && !ok(&s.current) {
        plan.manual.push(format!(
            "{why}; it is set on the server's {} ({name} = {}), which ALTER SYSTEM does not \
             override: change it there",
            s.source, s.current
        ));
    } else if !ok(s.effective()) {
        plan.steps.push(SetupStep {
            reason: why,
            sql: format!("ALTER SYSTEM SET {name} = {value_sql}"),
            restart: s.context == "postmaster",
        });
    } else if !ok(&s.current) {
        plan.pending_restart.push(name.to_owned());
    }
}

/// Plans what `admin`'s server and `role` need for streams of the tables `tables` matches.
///
/// # Errors
///
/// [`Error::Config`] when `admin` is not a superuser (nothing else may change these
/// settings); connection and SQL errors.
pub async fn plan(admin: &Config, role: &str, tables: &TableFilter) -> Result<SetupPlan> {
    let sql = sql_client(admin).await?;
    let superuser: bool = sql
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await?
        .get(0);
    if !superuser {
        return Err(Error::Config(format!(
            "setup needs a superuser connection (role {:?} is not one): connect as one with \
             --user or --dsn, or run the SQL of `wal2arrow setup --dry-run` through your \
             provider's console",
            admin.user
        )));
    }
    let mut plan = SetupPlan::default();
    if let Some(s) = setting(&sql, "wal_level").await? {
        let why = format!("wal_level is {}: logical decoding needs logical", s.effective());
        let ok = |v: &str| v == "logical";
        settle(&mut plan, &s, "wal_level", ok, "'logical'".into(), why);
    }
    // Room for a stream's slot and sender plus a snapshot's or a check's temporary one, with
    // some to spare.
    for (name, used_sql) in [
        ("max_replication_slots", "SELECT count(*) FROM pg_replication_slots"),
        ("max_wal_senders", "SELECT count(*) FROM pg_stat_replication"),
    ] {
        let Some(s) = setting(&sql, name).await? else { continue };
        let used: i64 = sql.query_one(used_sql, &[]).await?.get(0);
        let ok = |v: &str| v.parse::<i64>().is_ok_and(|max| max >= used + 2);
        let why = format!("{name} is {} with {used} in use: a stream needs 2 free", s.effective());
        settle(&mut plan, &s, name, ok, (used + 4).max(10).to_string(), why);
    }
    // The allow-list exists only on servers from the August 2026 minor releases on.
    if let Some(s) = setting(&sql, "output_plugin_libraries").await? {
        let libs = list_items(s.effective());
        let mut wanted: Vec<String> = libs.iter().map(|l| quote_literal(l)).collect();
        wanted.push(quote_literal("wal2arrow"));
        let why = format!(
            "output_plugin_libraries ({}) does not list wal2arrow: the server refuses to load it",
            if libs.is_empty() { "empty".to_owned() } else { libs.join(", ") }
        );
        let ok = |v: &str| list_items(v).iter().any(|l| l == "wal2arrow");
        settle(&mut plan, &s, "output_plugin_libraries", ok, wanted.join(", "), why);
    }

    let r = quote_ident(role);
    let attrs = sql
        .query_opt("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .await?;
    let exists = attrs.is_some();
    match attrs {
        None => plan.steps.push(SetupStep {
            reason: format!("role {role:?} does not exist (give it a password afterwards)"),
            sql: format!("CREATE ROLE {r} WITH LOGIN REPLICATION"),
            restart: false,
        }),
        Some(row) if !row.get::<_, bool>(0) => plan.steps.push(SetupStep {
            reason: format!("role {role:?} may not start replication"),
            sql: format!("ALTER ROLE {r} WITH REPLICATION"),
            restart: false,
        }),
        Some(_) => {}
    }

    // The matched tables the role cannot read yet (every one, for a role still to create),
    // with the partitions of matched partitioned tables: a snapshot reads each partition, and
    // a GRANT on the partitioned table does not reach them.
    let rows = sql
        .query(
            "SELECT n.nspname::text, c.relname::text, \
               CASE WHEN $2 THEN has_schema_privilege($1, n.oid, 'USAGE') ELSE false END, \
               CASE WHEN $2 THEN has_table_privilege($1, c.oid, 'SELECT') ELSE false END, \
               coalesce(rn.nspname, n.nspname)::text, coalesce(r.relname, c.relname)::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               LEFT JOIN pg_class r ON c.relispartition AND r.oid = pg_partition_root(c.oid) \
               LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
             ORDER BY 1, 2",
            &[&role, &exists],
        )
        .await?;
    let mut schemas: Vec<String> = Vec::new();
    let mut selects: Vec<String> = Vec::new();
    for row in &rows {
        let (schema, table): (String, String) = (row.get(0), row.get(1));
        let (root_schema, root): (String, String) = (row.get(4), row.get(5));
        if !tables.includes(&schema, &table) && !tables.includes(&root_schema, &root) {
            continue;
        }
        if !row.get::<_, bool>(2) && !schemas.contains(&schema) {
            schemas.push(schema.clone());
        }
        if !row.get::<_, bool>(3) {
            selects.push(format!("{}.{}", quote_ident(&schema), quote_ident(&table)));
        }
    }
    if !schemas.is_empty() {
        let list: Vec<String> = schemas.iter().map(|s| quote_ident(s)).collect();
        plan.steps.push(SetupStep {
            reason: format!("role {role:?} may not look up tables in {}", schemas.join(", ")),
            sql: format!("GRANT USAGE ON SCHEMA {} TO {r}", list.join(", ")),
            restart: false,
        });
    }
    if !selects.is_empty() {
        plan.steps.push(SetupStep {
            reason: format!(
                "role {role:?} may not read {} of the matched tables (snapshots and the wal2json \
                 fallback's catalog lookups read them)",
                selects.len()
            ),
            sql: format!("GRANT SELECT ON {} TO {r}", selects.join(", ")),
            restart: false,
        });
    }
    Ok(plan)
}

/// Makes the plan's changes, in order, then reloads the configuration when a setting was
/// changed.
///
/// # Errors
///
/// The first statement that fails (those before it stay done; planning again picks up from
/// there).
pub async fn apply(admin: &Config, plan: &SetupPlan) -> Result<()> {
    let sql = sql_client(admin).await?;
    for step in &plan.steps {
        sql.batch_execute(&step.sql).await?;
    }
    if plan.steps.iter().any(|s| s.sql.starts_with("ALTER SYSTEM")) {
        sql.batch_execute("SELECT pg_reload_conf()").await?;
    }
    Ok(())
}
