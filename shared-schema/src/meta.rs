//! Metadata keys carried in the Arrow schemas of the wire format and of the batches handed to
//! users.
//!
//! Field metadata follows the Apache Arrow ADBC PostgreSQL driver where it has a convention:
//! the PostgreSQL type name sits under [`PG_TYPNAME`] (`ADBC:postgresql:typname`), and types
//! with no Arrow mapping are tagged with the canonical `arrow.opaque` extension type
//! ([`EXTENSION_NAME`], [`EXTENSION_METADATA`]). What ADBC has no key for (type OID, typmod,
//! NOT NULL, the table's identity) lives under the `wal2arrow:` prefix.

/// Field metadata: the PostgreSQL type name (`int4`, `varchar`, `my_enum`), as the ADBC
/// PostgreSQL driver names it. Unlike ADBC, wal2arrow sets it on every column.
pub const PG_TYPNAME: &str = "ADBC:postgresql:typname";
/// Field metadata: the PostgreSQL type OID, in decimal.
pub const PG_TYPOID: &str = "wal2arrow:typoid";
/// Field metadata: the column's type modifier (`atttypmod`), in decimal; `-1` when none.
pub const PG_TYPMOD: &str = "wal2arrow:typmod";
/// Field metadata: `"true"` when the column is declared `NOT NULL`.
pub const PG_NOT_NULL: &str = "wal2arrow:not_null";
/// Field metadata: `"stored"` on a stored generated column (`GENERATED ALWAYS AS (…) STORED`),
/// whose value the server computes: capture it, but do not write it when applying changes.
pub const PG_GENERATED: &str = "wal2arrow:generated";
/// Field metadata: `"true"` on the system columns wal2arrow adds after the table's columns.
pub const SYSTEM_COLUMN: &str = "wal2arrow:system";

/// Field metadata: Arrow's extension type name key.
pub const EXTENSION_NAME: &str = "ARROW:extension:name";
/// Field metadata: Arrow's extension type metadata key.
pub const EXTENSION_METADATA: &str = "ARROW:extension:metadata";
/// The canonical extension type for values with no Arrow mapping.
pub const OPAQUE_EXTENSION: &str = "arrow.opaque";

/// Schema metadata: the table's schema (namespace) name.
pub const SCHEMA_NAME: &str = "wal2arrow:schema";
/// Schema metadata: the table's name.
pub const TABLE_NAME: &str = "wal2arrow:table";
/// Schema metadata: the table's OID (`pg_class.oid`), in decimal.
pub const RELATION_OID: &str = "wal2arrow:relid";
/// Schema metadata: the wire format version the schema was written with.
pub const WIRE_VERSION: &str = "wal2arrow:version";
/// Schema metadata: the primary key's columns, as a JSON array of names (`[]` without one).
pub const PRIMARY_KEY: &str = "wal2arrow:primary_key";
/// Schema metadata: the replica identity: `default`, `nothing`, `full` or `index`.
pub const REPLICA_IDENTITY: &str = "wal2arrow:replica_identity";
/// Schema metadata: the columns old images (`update_before`, `delete`) carry, as a JSON array.
pub const IDENTITY_KEY: &str = "wal2arrow:identity_key";

/// Name of the change-kind column (`insert`, `update`, `delete`) in user-facing batches.
pub const OP_COLUMN: &str = "_op";
/// Name of the per-row change LSN column in user-facing batches.
pub const LSN_COLUMN: &str = "_lsn";
/// Name of the wire-format column holding each row's LSN as an offset from the batch's base
/// LSN (the consumer turns it into [`LSN_COLUMN`]).
pub const LSN_DELTA_COLUMN: &str = "_lsn_delta";
/// Name of the column listing, per row, the columns whose value the change does not carry:
/// unchanged TOAST values in new images, columns outside the key in old images. A reader that
/// rebuilds rows keeps the value it already has for them.
pub const MISSING_COLUMN: &str = "_missing";
/// Name of the column listing, per row, the columns whose value was sent but cannot be held by
/// the column's Arrow type (a `numeric` NaN in a `Decimal128` column; with the wal2json
/// fallback, what JSON cannot carry). Their slots are NULL; the value is neither NULL nor
/// unchanged.
pub const UNREPRESENTABLE_COLUMN: &str = "_unrepresentable";
