//! The catalog questions of the wal2json fallback, asked over an ordinary SQL connection.
//!
//! Every answer describes the catalog *now*, which may be later than the change being
//! decoded; the decoder prefers what the JSON itself says (column names, types and type
//! modifiers, NOT NULL, primary key) and uses these for what it does not say.

use wal2arrow_schema::ReplicaIdentity;

use crate::config::Config;
use crate::error::Result;
use crate::sql::sql_client;
use wal2arrow_wal2json::{CatalogCache, CatalogColumn, Lookup, TableInfo, TypeInfo};

/// Answers a decoder's catalog questions, connecting on first use and again after a failure.
#[derive(Debug)]
pub(crate) struct Catalog {
    config: Config,
    client: Option<tokio_postgres::Client>,
}

impl Catalog {
    pub(crate) fn new(config: Config) -> Catalog {
        Catalog { config, client: None }
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client> {
        if self.client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            self.client = Some(sql_client(&self.config).await?);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }
}

impl wal2arrow_wal2json::Catalog for Catalog {
    type Error = crate::error::Error;

    /// Answers `lookup` into `cache`, over SQL.
    ///
    /// # Errors
    ///
    /// Connection and SQL errors.
    async fn answer(&mut self, lookup: &Lookup, cache: &mut CatalogCache) -> Result<()> {
        let result = self.answer_once(lookup, cache).await;
        if result.is_err() {
            // A broken connection is reopened on the next question.
            self.client = None;
        }
        result
    }
}

impl Catalog {
    async fn answer_once(&mut self, lookup: &Lookup, cache: &mut CatalogCache) -> Result<()> {
        let client = self.client().await?;
        match lookup {
            Lookup::Table { schema, table } => {
                let info = table_info(client, schema, table).await?;
                cache.put_table(schema.clone(), table.clone(), info);
            }
            Lookup::Types(oids) => {
                for (oid, info) in types(client, oids).await? {
                    cache.put_type(oid, info);
                }
            }
            Lookup::Origin(id) => {
                let name = client
                    .query_opt(
                        "SELECT roname::text FROM pg_replication_origin WHERE roident = $1::int8::oid",
                        &[&i64::from(*id)],
                    )
                    .await?
                    .map(|r| r.get::<_, String>(0));
                cache.put_origin(*id, name);
            }
        }
        Ok(())
    }
}

pub(crate) async fn table_info(
    client: &tokio_postgres::Client,
    schema: &str,
    table: &str,
) -> Result<Option<TableInfo>> {
    // Key columns of an index, in key order (INCLUDE columns left out).
    const KEY_COLUMNS: &str = "SELECT a.attname::text, a.attnum, k.ord \
         FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE k.ord <= i.indnkeyatts";
    let sql = format!(
        "SELECT c.oid::int8, c.relreplident::text, \
           coalesce((SELECT array_agg(k.attname ORDER BY k.ord) FROM pg_index i, \
             LATERAL ({KEY_COLUMNS}) k WHERE i.indrelid = c.oid AND i.indisprimary), '{{}}'), \
           coalesce((SELECT array_agg(k.attname ORDER BY k.attnum) FROM pg_index i, \
             LATERAL ({KEY_COLUMNS}) k WHERE i.indrelid = c.oid AND CASE c.relreplident \
               WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END), '{{}}') \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2"
    );
    let Some(row) = client.query_opt(&sql, &[&schema, &table]).await? else {
        return Ok(None);
    };
    let relid: i64 = row.get(0);
    let replident: String = row.get(1);
    let columns = client
        .query(
            // Virtual generated columns (18) are not stored, so no change carries them.
            "SELECT attname::text, atttypid::int8, atttypmod, attndims::int4, attnotnull, \
               format_type(atttypid, atttypmod), attgenerated = 's' \
             FROM pg_attribute WHERE attrelid = $1::int8::oid AND attnum > 0 AND NOT attisdropped \
               AND attgenerated <> 'v' \
             ORDER BY attnum",
            &[&relid],
        )
        .await?
        .iter()
        .map(|r| CatalogColumn {
            name: r.get(0),
            type_oid: u32::try_from(r.get::<_, i64>(1)).unwrap_or(0),
            typmod: r.get(2),
            ndims: r.get(3),
            not_null: r.get(4),
            format: r.get(5),
            generated: r.get(6),
        })
        .collect();
    Ok(Some(TableInfo {
        relid: u32::try_from(relid).unwrap_or(0),
        replica_identity: ReplicaIdentity::from_char(replident.bytes().next().unwrap_or(b'd')),
        primary_key: row.get(2),
        identity_key: row.get(3),
        columns,
    }))
}

/// `oids` and every type they lead to (domain bases, array elements); `None` for those that
/// no longer exist.
pub(crate) async fn types(
    client: &tokio_postgres::Client,
    oids: &[u32],
) -> Result<Vec<(u32, Option<TypeInfo>)>> {
    let wanted: Vec<i64> = oids.iter().map(|o| i64::from(*o)).collect();
    let rows = client
        .query(
            "WITH RECURSIVE t(oid) AS ( \
               SELECT unnest($1::int8[])::oid \
               UNION \
               SELECT x FROM pg_type p JOIN t ON p.oid = t.oid, \
                 LATERAL (VALUES (p.typbasetype), (p.typelem)) AS v(x) WHERE x <> 0) \
             SELECT p.oid::int8, p.typname::text, p.typtype::text, p.typbasetype::int8, \
               p.typtypmod, \
               CASE WHEN p.typsubscript::text = 'array_subscript_handler' \
                 THEN p.typelem ELSE 0 END::int8, \
               p.typlen, p.typdelim::text \
             FROM pg_type p JOIN t ON p.oid = t.oid",
            &[&wanted],
        )
        .await?;
    let mut out: Vec<(u32, Option<TypeInfo>)> = rows
        .iter()
        .map(|r| {
            let oid = u32::try_from(r.get::<_, i64>(0)).unwrap_or(0);
            let info = TypeInfo {
                name: r.get(1),
                typtype: r.get::<_, String>(2).bytes().next().unwrap_or(b'b'),
                base: u32::try_from(r.get::<_, i64>(3)).unwrap_or(0),
                typtypmod: r.get(4),
                elem: u32::try_from(r.get::<_, i64>(5)).unwrap_or(0),
                typlen: r.get(6),
                delim: r.get::<_, String>(7).bytes().next().unwrap_or(b','),
            };
            (oid, Some(info))
        })
        .collect();
    for oid in oids {
        if !out.iter().any(|(o, _)| o == oid) {
            out.push((*oid, None));
        }
    }
    Ok(out)
}
