//! The relation cache: what the plugin knows about each table it has seen in this session.
//!
//! As in pgoutput, an entry is built the first time a table's change is decoded and rebuilt
//! after a relcache invalidation for it (ALTER TABLE, and anything else that changes the
//! table's definition). Building it queues a Schema message, so the consumer always holds the
//! schema a batch was encoded with.
//!
//! Invalidation callbacks can arrive whenever PostgreSQL processes invalidation messages,
//! including in the middle of our own catalog lookups, so they never touch the cache itself:
//! they record relation OIDs in a separate queue that the next change callback applies.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;
use wal2arrow_schema::types::{ColumnDesc, TypeClass};
use wal2arrow_schema::{BatchEncoder, PgKind, PluginOptions, RelationDesc, ReplicaIdentity};

use crate::datum::ColumnReader;

/// How one live column is read.
pub(crate) struct ColumnPlan {
    /// Its index in the tuple descriptor (dropped columns count).
    pub(crate) att: usize,
    pub(crate) reader: ColumnReader,
    /// A varlena (`attlen = -1`): may be an unchanged TOAST pointer in a new tuple.
    pub(crate) varlena: bool,
    /// Part of what old images carry (the replica identity key, or every column with FULL).
    pub(crate) in_identity: bool,
}

/// Where a partition's rows go with `publish-via-root`.
pub(crate) struct PartitionRoute {
    /// The partition root (the top of the partition tree).
    pub(crate) root: pg_sys::Oid,
    /// Every ancestor up to the root, nearest first.
    pub(crate) ancestors: Vec<pg_sys::Oid>,
    /// Turns the partition's tuples into the root's layout (column order, dropped columns);
    /// NULL when both have the same. Built over copies of both tuple descriptors (`descs`),
    /// in the session's memory context, so a relcache rebuild cannot pull them away.
    pub(crate) map: *mut pg_sys::TupleConversionMap,
    descs: [pg_sys::TupleDesc; 2],
    /// Per column of the root's batches: whether the partition's old images carry it (the
    /// partition's own replica identity, which `ALTER TABLE … REPLICA IDENTITY` on the root
    /// does not change).
    pub(crate) identity: Vec<bool>,
}

impl PartitionRoute {
    /// Frees the map and the descriptor copies (they live as long as the session otherwise).
    ///
    /// # Safety
    ///
    /// Inside the session, once nothing uses the route any more.
    pub(crate) unsafe fn free(self) {
        // SAFETY: the map and the copies were made by partition_route in the session's
        // context and nothing else refers to them (the caller's contract).
        unsafe {
            if !self.map.is_null() {
                pg_sys::free_conversion_map(self.map);
            }
            for desc in self.descs {
                pg_sys::FreeTupleDesc(desc);
            }
        }
    }
}

/// One table's cached description, readers and batch in progress.
pub(crate) struct RelEntry {
    pub(crate) desc: RelationDesc,
    pub(crate) qualified_name: String,
    /// The `tables` option includes this table (for a partition reported as its root: the
    /// root is included).
    pub(crate) included: bool,
    /// A partition whose rows are reported as its root's (`publish-via-root`).
    pub(crate) route: Option<PartitionRoute>,
    pub(crate) encoder: BatchEncoder,
    pub(crate) columns: Vec<ColumnPlan>,
    /// Deform buffers, one slot per attribute of the tuple descriptor (dropped ones included).
    pub(crate) values: Vec<pg_sys::Datum>,
    pub(crate) nulls: Vec<bool>,
    /// The Schema message for this description has been written in this session.
    pub(crate) schema_sent: bool,
    /// A relcache invalidation arrived for the table: check the description on next use.
    pub(crate) stale: bool,
}

impl RelEntry {
    /// Describes `relation` from its relcache entry.
    ///
    /// # Safety
    ///
    /// `relation` must be an open relation passed to a change or truncate callback (valid for
    /// the call, under the historic snapshot of the change). `mcxt` must outlive the entry.
    pub(crate) unsafe fn build(
        relation: pg_sys::Relation,
        mcxt: pg_sys::MemoryContext,
        options: &PluginOptions,
    ) -> RelEntry {
        // SAFETY: the caller passes an open relation, whose rd_rel and rd_att are valid for
        // the callback.
        let (rel, class, tupdesc) =
            unsafe { (&*relation, &*(*relation).rd_rel, &*(*relation).rd_att) };
        // SAFETY: a catalog lookup of a valid namespace OID, returning a palloc'd C string
        // (NULL only if the namespace vanished, which the historic snapshot rules out).
        let namespace = unsafe { cstr_or(pg_sys::get_namespace_name(class.relnamespace), "?") };
        let name = name_str(&class.relname);
        let natts = usize::try_from(tupdesc.natts).unwrap_or(0);
        // SAFETY: the open relation's tuple descriptor, which outlives this call.
        let attrs = unsafe { crate::compat::attributes(tupdesc) };
        let identity = ReplicaIdentity::from_char(class.relreplident as u8);
        // SAFETY: relcache lookups on the open relation.
        let (identity_attnums, pk_attnums) =
            unsafe { (identity_attnums(relation, identity), primary_key(relation)) };

        let mut columns = Vec::with_capacity(natts);
        let mut descs = Vec::with_capacity(natts);
        for (i, att) in attrs.iter().enumerate() {
            // A virtual generated column (18) is computed when read: no change carries it.
            if att.attisdropped || att.attgenerated as u8 == b'v' {
                continue;
            }
            // SAFETY: catalog lookups of the column's type, inside the decoding transaction;
            // `mcxt` outlives the entry (caller's contract).
            let (kind, reader) = unsafe { column_kind(att, options.numeric_as_string, mcxt) };
            columns.push(ColumnPlan {
                att: i,
                reader,
                varlena: att.attlen == -1,
                in_identity: identity == ReplicaIdentity::Full
                    || identity_attnums.contains(&att.attnum),
            });
            descs.push(ColumnDesc {
                name: name_str(&att.attname),
                type_oid: att.atttypid.to_u32(),
                typmod: att.atttypmod,
                // SAFETY: catalog lookup, as above.
                type_name: unsafe { type_name(att.atttypid) },
                not_null: att.attnotnull,
                generated: att.attgenerated as u8 == b's',
                kind,
            });
        }
        let names_of = |attnums: &[i16]| -> Vec<String> {
            attnums
                .iter()
                .filter_map(|n| attrs.iter().find(|a| a.attnum == *n && !a.attisdropped))
                .map(|a| name_str(&a.attname))
                .collect()
        };
        let identity_key = match identity {
            ReplicaIdentity::Full => descs.iter().map(|c| c.name.clone()).collect(),
            _ => names_of(&identity_attnums),
        };
        let desc = RelationDesc {
            relid: rel.rd_id.to_u32(),
            namespace,
            name,
            columns: descs,
            primary_key: names_of(&pk_attnums),
            replica_identity: identity,
            identity_key,
            with_lsn: options.include_lsn,
        };
        let route = if options.publish_via_root && class.relispartition {
            // SAFETY: the open relation of the change, in the decoding transaction; `mcxt`
            // outlives the entry (caller's contract).
            unsafe { partition_route(relation, mcxt) }
        } else {
            None
        };
        let included = match &route {
            Some((_, root_namespace, root_name)) => {
                options.tables.includes(root_namespace, root_name)
            }
            None => options.tables.includes(&desc.namespace, &desc.name),
        };
        RelEntry {
            qualified_name: format!("{}.{}", desc.namespace, desc.name),
            included,
            route: route.map(|(r, _, _)| r),
            encoder: BatchEncoder::new(&desc),
            desc,
            columns,
            values: vec![pg_sys::Datum::from(0usize); natts],
            nulls: vec![true; natts],
            schema_sent: false,
            stale: false,
        }
    }

    /// Whether `other` (built after an invalidation) describes the table exactly as this entry
    /// does: same columns, types, keys and identity, same tuple layout. Relcache
    /// invalidations also come from changes that leave all of that alone (TRUNCATE, ANALYZE,
    /// an index), and those need no new Schema message.
    pub(crate) fn same_shape(&self, other: &RelEntry) -> bool {
        self.desc == other.desc
            && self.included == other.included
            && self.route.as_ref().map(|r| r.root) == other.route.as_ref().map(|r| r.root)
            && self.values.len() == other.values.len()
            && self.columns.iter().map(|c| c.att).eq(other.columns.iter().map(|c| c.att))
    }
}

/// The route of a partition's rows to its partition root, with the root's schema and name.
/// `None` if the root cannot be opened (it always can under the change's historic snapshot).
///
/// # Safety
///
/// `relation` is an open partition, inside the decoding transaction; `mcxt` outlives the
/// route.
unsafe fn partition_route(
    relation: pg_sys::Relation,
    mcxt: pg_sys::MemoryContext,
) -> Option<(PartitionRoute, String, String)> {
    // SAFETY: catalog lookups inside the decoding transaction (caller's contract). The root
    // is opened and closed here; the tuple descriptors the map refers to are copies made in
    // `mcxt`, which outlives the route.
    unsafe {
        let ancestors_list = crate::compat::get_partition_ancestors((*relation).rd_id);
        let n = pg_sys::list_length(ancestors_list);
        let ancestors: Vec<pg_sys::Oid> =
            (0..n).map(|i| pg_sys::list_nth_oid(ancestors_list, i)).collect();
        let root = *ancestors.last()?;
        let root_rel = pg_sys::RelationIdGetRelation(root);
        if root_rel.is_null() {
            return None;
        }
        let root_class = &*(*root_rel).rd_rel;
        let name = name_str(&root_class.relname);
        let namespace = cstr_or(pg_sys::get_namespace_name(root_class.relnamespace), "?");
        let old_cx = pg_sys::MemoryContextSwitchTo(mcxt);
        // With constraints: a partition tuple written before a column with a default was
        // added reads that default from the descriptor's "missing" values.
        let indesc = pg_sys::CreateTupleDescCopyConstr((*relation).rd_att);
        let outdesc = pg_sys::CreateTupleDescCopy((*root_rel).rd_att);
        let map = pg_sys::convert_tuples_by_name(indesc, outdesc);
        pg_sys::MemoryContextSwitchTo(old_cx);
        // The partition's identity columns, by name, over the root's live columns.
        let class = &*(*relation).rd_rel;
        let replident = ReplicaIdentity::from_char(class.relreplident as u8);
        let part_attrs = crate::compat::attributes(&*(*relation).rd_att);
        let identity_names: Vec<String> = identity_attnums(relation, replident)
            .iter()
            .filter_map(|n| part_attrs.iter().find(|a| a.attnum == *n && !a.attisdropped))
            .map(|a| name_str(&a.attname))
            .collect();
        let identity = crate::compat::attributes(&*(*root_rel).rd_att)
            .iter()
            .filter(|a| !a.attisdropped && a.attgenerated as u8 != b'v')
            .map(|a| {
                replident == ReplicaIdentity::Full || identity_names.contains(&name_str(&a.attname))
            })
            .collect();
        pg_sys::RelationClose(root_rel);
        let route = PartitionRoute { root, ancestors, map, descs: [indesc, outdesc], identity };
        Some((route, namespace, name))
    }
}

/// The kind of a column and the reader for its values.
///
/// # Safety
///
/// Inside a transaction; `mcxt` outlives the reader.
unsafe fn column_kind(
    att: &pg_sys::FormData_pg_attribute,
    numeric_as_string: bool,
    mcxt: pg_sys::MemoryContext,
) -> (PgKind, ColumnReader) {
    // SAFETY: catalog lookups of valid type OIDs (caller's contract).
    unsafe {
        let mut typmod = att.atttypmod;
        let base = pg_sys::getBaseTypeAndTypmod(att.atttypid, &mut typmod);
        let elem = pg_sys::get_element_type(base);
        if elem != pg_sys::Oid::INVALID {
            let mut elem_typmod = typmod;
            let elem_base = pg_sys::getBaseTypeAndTypmod(elem, &mut elem_typmod);
            let elem_kind = PgKind::resolve(
                elem_base.to_u32(),
                elem_typmod,
                type_class(elem_base),
                numeric_as_string,
            );
            let kind = PgKind::array(elem_kind, type_name(elem), crate::compat::attndims(att));
            let reader = ColumnReader::new(&kind, base, elem_base, mcxt);
            (kind, reader)
        } else {
            let kind = PgKind::resolve(base.to_u32(), typmod, type_class(base), numeric_as_string);
            let reader = ColumnReader::new(&kind, base, pg_sys::Oid::INVALID, mcxt);
            (kind, reader)
        }
    }
}

/// Whether a (domain-resolved) type is a base type, an enum, or something else.
///
/// # Safety
///
/// Inside a transaction.
unsafe fn type_class(typid: pg_sys::Oid) -> TypeClass {
    // SAFETY: a catalog lookup of a valid type OID.
    match unsafe { pg_sys::get_typtype(typid) } as u8 {
        b'b' => TypeClass::Base,
        b'e' => TypeClass::Enum,
        _ => TypeClass::Other,
    }
}

/// The attribute numbers of the columns old images carry, for DEFAULT and USING INDEX.
///
/// # Safety
///
/// `relation` is open.
unsafe fn identity_attnums(relation: pg_sys::Relation, identity: ReplicaIdentity) -> Vec<i16> {
    if !matches!(identity, ReplicaIdentity::Default | ReplicaIdentity::Index) {
        return Vec::new();
    }
    // SAFETY: RelationGetIdentityKeyBitmap reads the open relation's identity index (none:
    // NULL) and returns a palloc'd bitmap of attribute numbers offset by
    // FirstLowInvalidHeapAttributeNumber.
    unsafe {
        let bms = pg_sys::RelationGetIdentityKeyBitmap(relation);
        let mut out = Vec::new();
        let mut member = -1;
        loop {
            member = pg_sys::bms_next_member(bms, member);
            if member < 0 {
                break;
            }
            out.push((member + pg_sys::FirstLowInvalidHeapAttributeNumber) as i16);
        }
        out
    }
}

/// The attribute numbers of the primary key, in key order.
///
/// # Safety
///
/// `relation` is open.
unsafe fn primary_key(relation: pg_sys::Relation) -> Vec<i16> {
    // SAFETY: relcache lookups; the index relation is opened and closed here, and its
    // pg_index row holds `indnkeyatts` key attribute numbers.
    unsafe {
        let index = crate::compat::primary_key_index(relation);
        if index == pg_sys::Oid::INVALID {
            return Vec::new();
        }
        let index_rel = pg_sys::RelationIdGetRelation(index);
        if index_rel.is_null() {
            return Vec::new();
        }
        let form = &*(*index_rel).rd_index;
        let n = usize::try_from(form.indnkeyatts).unwrap_or(0);
        let keys = form.indkey.values.as_slice(n).to_vec();
        pg_sys::RelationClose(index_rel);
        keys
    }
}

fn name_str(name: &pg_sys::NameData) -> String {
    // SAFETY: NameData is a NUL-terminated fixed-size char array.
    let c = unsafe { CStr::from_ptr(name.data.as_ptr()) };
    String::from_utf8_lossy(c.to_bytes()).into_owned()
}

/// # Safety
///
/// `p` is NULL or a valid NUL-terminated string.
pub(crate) unsafe fn cstr_or(p: *const std::ffi::c_char, default: &str) -> String {
    if p.is_null() {
        return default.to_owned();
    }
    // SAFETY: non-NULL and NUL-terminated (caller's contract).
    String::from_utf8_lossy(unsafe { CStr::from_ptr(p) }.to_bytes()).into_owned()
}

/// `pg_type.typname` of `typid`.
///
/// # Safety
///
/// Inside a transaction, on the backend's thread.
unsafe fn type_name(typid: pg_sys::Oid) -> String {
    // SAFETY: syscache lookup by OID; the tuple is released below before anything else runs.
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::TYPEOID as i32,
            typid.into_datum().unwrap(),
        );
        if tup.is_null() {
            return format!("unknown<oid:{}>", typid.to_u32());
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_type>(tup);
        let name = name_str(&(*form).typname);
        pg_sys::ReleaseSysCache(tup);
        name
    }
}

/// Relation OIDs whose cache entries went stale; `None` in the set means "all".
#[derive(Default)]
struct Invalidations {
    /// A decoding session is running in this backend.
    active: bool,
    all: bool,
    relids: Vec<pg_sys::Oid>,
}

thread_local! {
    static INVALIDATIONS: RefCell<Invalidations> = RefCell::new(Invalidations::default());
    static CALLBACK_REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// An invalidation was recorded since the last `mark_stale`: most changes find none, and
    /// skip the rest of it.
    static PENDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The per-session relation cache.
#[derive(Default)]
pub(crate) struct RelationCache {
    /// By OID, with a fast hash: looked up several times per change.
    entries: HashMap<pg_sys::Oid, RelEntry, ahash::RandomState>,
}

impl RelationCache {
    /// Starts recording invalidations for a new session. The relcache callback is registered
    /// once per backend: PostgreSQL has no way to unregister it, and a backend running
    /// `pg_logical_slot_get_changes` repeatedly would otherwise run out of callback slots.
    pub(crate) fn start_session() {
        INVALIDATIONS
            .with_borrow_mut(|inv| *inv = Invalidations { active: true, ..Default::default() });
        PENDING.set(false);
        if !CALLBACK_REGISTERED.get() {
            // SAFETY: registering a guarded callback with a dummy argument; it stays valid for
            // the life of the process (it is a plain function).
            unsafe {
                pg_sys::CacheRegisterRelcacheCallback(
                    Some(on_relcache_invalidation),
                    pg_sys::Datum::from(0usize),
                )
            };
            CALLBACK_REGISTERED.set(true);
        }
    }

    /// Stops recording invalidations (the session's state is being freed).
    pub(crate) fn end_session() {
        INVALIDATIONS.with_borrow_mut(|inv| *inv = Invalidations::default());
        PENDING.set(false);
    }

    /// Marks the entries of relations invalidated since the last call as stale; they are
    /// checked against the catalog on their next use.
    pub(crate) fn mark_stale(&mut self) {
        if !PENDING.get() {
            return;
        }
        PENDING.set(false);
        let relids = INVALIDATIONS.with_borrow_mut(|inv| {
            if std::mem::take(&mut inv.all) {
                inv.relids.clear();
                None
            } else {
                Some(std::mem::take(&mut inv.relids))
            }
        });
        match relids {
            None => self.entries.values_mut().for_each(|e| e.stale = true),
            Some(relids) => {
                for relid in relids {
                    if let Some(e) = self.entries.get_mut(&relid) {
                        e.stale = true;
                    }
                }
            }
        }
    }

    pub(crate) fn get_mut(&mut self, relid: pg_sys::Oid) -> Option<&mut RelEntry> {
        self.entries.get_mut(&relid)
    }

    /// Caches `entry`, returning the one it replaces.
    pub(crate) fn insert(&mut self, relid: pg_sys::Oid, entry: RelEntry) -> Option<RelEntry> {
        self.entries.insert(relid, entry)
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    INVALIDATIONS.with_borrow_mut(|inv| {
        if !inv.active {
            return;
        }
        if relid == pg_sys::Oid::INVALID {
            inv.all = true;
        } else if !inv.all && !inv.relids.contains(&relid) {
            inv.relids.push(relid);
        }
        PENDING.set(true);
    });
}
