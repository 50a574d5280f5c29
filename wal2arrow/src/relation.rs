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
use wal2arrow_schema::types::ColumnDesc;
use wal2arrow_schema::{BatchEncoder, PgKind, RelationDesc};

use crate::datum::ColumnReader;

/// One table's cached description, readers and batch in progress.
pub(crate) struct RelEntry {
    pub(crate) desc: RelationDesc,
    pub(crate) qualified_name: String,
    pub(crate) encoder: BatchEncoder,
    /// Per live column: its index in the tuple descriptor and how to read it.
    pub(crate) columns: Vec<(usize, ColumnReader)>,
    /// Deform buffers, one slot per attribute of the tuple descriptor (dropped ones included).
    pub(crate) values: Vec<pg_sys::Datum>,
    pub(crate) nulls: Vec<bool>,
    /// The Schema message for this description has been written in this session.
    pub(crate) schema_sent: bool,
}

impl RelEntry {
    /// Describes `relation` from its relcache entry.
    ///
    /// # Safety
    ///
    /// `relation` must be the open relation passed to a change callback (valid for the call,
    /// under the historic snapshot of the change). `mcxt` must outlive the entry.
    pub(crate) unsafe fn build(
        relation: pg_sys::Relation,
        mcxt: pg_sys::MemoryContext,
    ) -> RelEntry {
        // SAFETY: the caller passes the change callback's open relation, whose rd_rel and
        // rd_att are valid for the callback.
        let (rel, class, tupdesc) =
            unsafe { (&*relation, &*(*relation).rd_rel, &*(*relation).rd_att) };
        // SAFETY: a catalog lookup of a valid namespace OID, returning a palloc'd C string
        // (NULL only if the namespace vanished, which the historic snapshot rules out).
        let namespace = unsafe { cstr_or(pg_sys::get_namespace_name(class.relnamespace), "?") };
        let name = name_str(&class.relname);
        let natts = usize::try_from(tupdesc.natts).unwrap_or(0);
        // SAFETY: a TupleDesc holds `natts` attributes inline.
        let attrs = unsafe { tupdesc.attrs.as_slice(natts) };
        let mut columns = Vec::with_capacity(natts);
        let mut descs = Vec::with_capacity(natts);
        for (i, att) in attrs.iter().enumerate() {
            if att.attisdropped {
                continue;
            }
            // SAFETY: catalog lookup of a column's type, inside the decoding transaction.
            let base = unsafe { pg_sys::getBaseType(att.atttypid) };
            let kind = PgKind::from_type_oid(base.to_u32());
            // SAFETY: as above; `mcxt` outlives the entry (caller's contract).
            let reader = unsafe { ColumnReader::new(kind, att.atttypid, mcxt) };
            columns.push((i, reader));
            descs.push(ColumnDesc {
                name: name_str(&att.attname),
                type_oid: att.atttypid.to_u32(),
                typmod: att.atttypmod,
                // SAFETY: catalog lookup, as above.
                type_name: unsafe { type_name(att.atttypid) },
                not_null: att.attnotnull,
                kind,
            });
        }
        let desc = RelationDesc { relid: rel.rd_id.to_u32(), namespace, name, columns: descs };
        RelEntry {
            qualified_name: format!("{}.{}", desc.namespace, desc.name),
            encoder: BatchEncoder::new(&desc),
            desc,
            columns,
            values: vec![pg_sys::Datum::from(0usize); natts],
            nulls: vec![true; natts],
            schema_sent: false,
        }
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
unsafe fn cstr_or(p: *const std::ffi::c_char, default: &str) -> String {
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
}

/// The per-session relation cache.
#[derive(Default)]
pub(crate) struct RelationCache {
    entries: HashMap<pg_sys::Oid, RelEntry>,
}

impl RelationCache {
    /// Starts recording invalidations for a new session. The relcache callback is registered
    /// once per backend: PostgreSQL has no way to unregister it, and a backend running
    /// `pg_logical_slot_get_changes` repeatedly would otherwise run out of callback slots.
    pub(crate) fn start_session() {
        INVALIDATIONS
            .with_borrow_mut(|inv| *inv = Invalidations { active: true, ..Default::default() });
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
    }

    /// Takes the invalidations recorded since the last call: entries for those relations are
    /// marked stale (their pending rows are kept; see [`RelationCache::get`]).
    pub(crate) fn stale_relids(&mut self) -> Vec<pg_sys::Oid> {
        INVALIDATIONS.with_borrow_mut(|inv| {
            if std::mem::take(&mut inv.all) {
                inv.relids.clear();
                self.entries.keys().copied().collect()
            } else {
                std::mem::take(&mut inv.relids)
            }
        })
    }

    pub(crate) fn get_mut(&mut self, relid: pg_sys::Oid) -> Option<&mut RelEntry> {
        self.entries.get_mut(&relid)
    }

    pub(crate) fn insert(&mut self, relid: pg_sys::Oid, entry: RelEntry) {
        self.entries.insert(relid, entry);
    }

    pub(crate) fn remove(&mut self, relid: pg_sys::Oid) -> Option<RelEntry> {
        self.entries.remove(&relid)
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
    });
}
