"""wal2arrow: PostgreSQL row changes as Apache Arrow record batches.

Stream every change of a database, in commit order::

    import wal2arrow

    with wal2arrow.stream("host=localhost dbname=app user=cdc", slot="app_cdc",
                          tables=["public.*"]) as stream:
        for event in stream:
            if isinstance(event, wal2arrow.ChangeBatch):
                print(event.table, event.num_rows)      # pyarrow.record_batch(event), …
            elif isinstance(event, wal2arrow.Commit):
                stream.ack(event.end_lsn)               # once the transaction is handled

or read each table on its own (``readers(...)["public.users"]``). Batches implement the Arrow
PyCapsule interface: ``pyarrow.record_batch(b)``, ``polars.DataFrame(b)`` and DuckDB's
``SELECT * FROM b`` read them without copying, and this package imports none of them.

Connection settings follow libpq: a connection string (``"host=… dbname=…"`` or
``"postgresql://…"``), the ``PG*`` environment variables, and keyword arguments (``host``,
``port``, ``dbname``/``database``, ``user``, ``password``, ``sslmode``, ``sslrootcert``,
``connect_timeout``, ``application_name``), later ones winning.

Delivery is at least once: the slot only advances to what you acknowledged, and a restarted
stream delivers again everything after it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from typing import Any, Dict, Iterator, List, Optional

from wal2arrow._native import (
    PLUGIN_NAME,
    AuthError,
    Begin,
    ChangeBatch,
    Check,
    Commit,
    ConfigError,
    ConnectError,
    Message,
    PreflightError,
    ProtocolError,
    Relation,
    Report,
    Restarted,
    ServerError,
    SlotError,
    SnapshotProgress,
    SpillError,
    StreamEnded,
    TlsError,
    Truncate,
    Wal2ArrowError,
    check,
    create_slot,
    drop_slot,
    list_slots,
)
from wal2arrow import _native

__all__ = [
    "PLUGIN_NAME",
    "AuthError",
    "Begin",
    "ChangeBatch",
    "Check",
    "Commit",
    "ConfigError",
    "ConnectError",
    "Message",
    "PreflightError",
    "ProtocolError",
    "Readers",
    "Relation",
    "Report",
    "Restarted",
    "ServerError",
    "SlotError",
    "SnapshotProgress",
    "SpillError",
    "Stream",
    "StreamEnded",
    "TableReader",
    "TlsError",
    "Truncate",
    "Wal2ArrowError",
    "check",
    "create_slot",
    "drop_slot",
    "format_lsn",
    "list_slots",
    "parse_lsn",
    "readers",
    "stream",
]


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL writes it: ``'0/15D6B88'``."""
    if not isinstance(lsn, int) or isinstance(lsn, bool) or not 0 <= lsn < 1 << 64:
        raise ConfigError(f"an LSN is an integer from 0 to 2**64 - 1, not {lsn!r}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """PostgreSQL's ``'X/Y'`` form of an LSN, as an integer."""
    try:
        hi, lo = text.strip().split("/")
        high, low = int(hi, 16), int(lo, 16)
    except (AttributeError, ValueError):
        raise ConfigError(f"an LSN is written 'X/Y' in hexadecimal (like '0/15D6B88'), not {text!r}") from None
    if not (0 <= high < 1 << 32 and 0 <= low < 1 << 32):
        raise ConfigError(f"an LSN's halves are 32-bit hexadecimal numbers: {text!r}")
    return high << 32 | low


class _Pump:
    """Gets items from a native source for the sync and async iterators alike.

    The async side waits in a worker thread of its own; an item taken by a wait whose awaiting
    task was cancelled is kept for the next read, never lost.
    """

    def __init__(self, fetch, poll_seconds: float = 0.25):
        self._fetch = fetch  # fetch(timeout) -> list | None (ended)
        self._poll = poll_seconds
        self._items: collections.deque = collections.deque()
        self._ended = False
        self._lock = threading.Lock()
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._inflight: Optional[concurrent.futures.Future] = None

    def _fill(self, timeout: Optional[float]) -> None:
        with self._lock:
            if self._items or self._ended:
                return
            got = self._fetch(timeout)
            if got is None:
                self._ended = True
            else:
                self._items.extend(got)

    def next(self, timeout: Optional[float] = None):
        """The next item; ``None`` after ``timeout`` seconds without one; StopIteration at the end."""
        if not self._items:
            self._fill(timeout)
        if self._items:
            return self._items.popleft()
        if self._ended:
            raise StopIteration
        return None

    def peek(self, timeout: Optional[float] = None):
        """As ``next``, leaving the item in place."""
        if not self._items:
            self._fill(timeout)
        if self._items:
            return self._items[0]
        if self._ended:
            raise StopIteration
        return None

    async def anext(self):
        loop = asyncio.get_running_loop()
        while not self._items and not self._ended:
            if self._inflight is None or self._inflight.done():
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wal2arrow-async")
                self._inflight = self._executor.submit(self._fill, self._poll)
            # Shielded: a cancelled read leaves the fill running, and its items queued.
            await asyncio.shield(asyncio.wrap_future(self._inflight, loop=loop))
        if self._items:
            return self._items.popleft()
        raise StopAsyncIteration

    def shutdown(self) -> None:
        """Ends iteration: what was received and not read is dropped (it was not acknowledged:
        a new stream delivers it again)."""
        self._items.clear()
        self._ended = True
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


class Stream:
    """A change stream: iterate it (``for`` or ``async for``) for its events in commit order —
    ``Begin``, ``Relation``, ``ChangeBatch``, ``Truncate``, ``Message``, ``Commit``,
    ``SnapshotProgress``, ``Restarted`` — and ``ack(commit.end_lsn)`` once a transaction is
    handled. A blocking wait releases the GIL and is interrupted by Ctrl-C.

    Use it as a context manager (``with`` / ``async with``), or call ``close()``.
    """

    def __init__(self, native: "_native.NativeStream"):
        self._native = native
        self._pump = _Pump(lambda timeout: native.next_events(timeout))

    # Iteration ---------------------------------------------------------------------------
    def __iter__(self) -> "Stream":
        return self

    def __next__(self):
        item = self._pump.next(None)
        return item

    def next_event(self, timeout: Optional[float] = None):
        """The next event, or ``None`` if none came within ``timeout`` seconds; raises
        ``StreamEnded`` once the stream has ended."""
        try:
            return self._pump.next(timeout)
        except StopIteration:
            raise StreamEnded("the stream has ended") from None

    def __aiter__(self) -> "Stream":
        return self

    async def __anext__(self):
        return await self._pump.anext()

    # Acknowledgement and state -----------------------------------------------------------
    def ack(self, lsn) -> None:
        """Acknowledges everything up to ``lsn`` (a ``Commit.end_lsn``, or a non-transactional
        ``Message.ack_lsn``; an integer or ``'X/Y'``): the slot may pass it, and a restarted
        stream resumes after it. Positions never move back."""
        self._native.ack(lsn)

    @property
    def acknowledged(self) -> int:
        """The highest position acknowledged."""
        return self._native.acknowledged

    def sync_acks(self) -> int:
        """Sends the acknowledged position to the server now; returns it once written."""
        return self._native.sync_acks()

    @property
    def output_plugin(self) -> str:
        """``'wal2arrow'``, or ``'wal2json'`` where the server cannot load wal2arrow."""
        return self._native.output_plugin

    @property
    def fallback_reason(self) -> Optional[str]:
        """Why the stream reads wal2json rather than wal2arrow, if it does."""
        return self._native.fallback_reason

    def stats(self) -> Dict[str, Any]:
        """Counters: events, batches, rows, bytes, transactions, reconnects, heartbeats, …"""
        return self._native.stats()

    @property
    def closed(self) -> bool:
        return self._native.closed

    def close(self) -> None:
        """Sends the acknowledged position to the server and closes the connection."""
        self._native.close()
        self._pump.shutdown()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def __aenter__(self) -> "Stream":
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._native.close)
        self._pump.shutdown()

    def __repr__(self) -> str:
        return f"<wal2arrow.Stream plugin={self.output_plugin} {'closed' if self.closed else 'open'}>"


def stream(dsn: Optional[str] = None, **options) -> Stream:
    """Opens a change stream.

    ``dsn``: a libpq connection string or URI; connection keywords and ``PG*`` variables
    apply as libpq applies them. Options:

    - ``slot`` (``"wal2arrow"``): the replication slot; ``create_slot`` (True) creates it if
      missing; ``temporary_slot`` (False) uses a slot dropped when the stream ends.
    - ``tables``: patterns (``"public.users"``, ``"public.*"``, ``"*.orders"``,
      ``"public.user_[0-9]+"``), a string or a list; every table when omitted.
    - ``batch_rows``: rows per batch (the plugin's default when omitted).
    - ``snapshot``: ``"auto"`` (a new slot first delivers every existing row, as ``read``
      rows), ``"initial"``, ``"never"`` or ``"only"``; ``snapshot_workers``.
    - ``plugin``: ``"auto"`` (wal2arrow, else wal2json), ``"wal2arrow"`` or ``"wal2json"``.
    - ``streaming`` (True), ``stream_memory_mb``, ``spill_dir``: large transactions arrive
      while in progress and are kept (memory, then disk) until they commit.
    - ``max_poll_interval``, ``heartbeat_interval`` (seconds), ``start_lsn``, ``preflight``
      (True), ``publication``, ``buffer_events``, ``numeric_as_string``.

    Raises ``ConfigError`` for a bad option, ``PreflightError`` when the server is not ready
    (its ``report`` says what to fix), ``ConnectError``/``AuthError``/… when connecting fails.
    """
    return Stream(_native.open_stream(dsn, **options))


class TableReader:
    """The deliveries of one table — ``ChangeBatch`` and ``Truncate`` — in commit order.

    ``for batch in reader`` / ``async for batch in reader.read_batches()`` acknowledge each
    delivery when the loop asks for the next one (its body has handled it); pass
    ``auto_ack=False`` to ``read_batches`` and call ``batch.ack()`` yourself instead.

    The reader is also an Arrow stream (``__arrow_c_stream__``): it hands over the batches
    that arrive until none has come for ``idle_timeout`` seconds, until the table's schema
    changes, or at a truncate, and acknowledges them as it hands them over.
    """

    def __init__(self, native, table: str, idle_timeout: float = 1.0):
        self._native = native
        self.table = table
        self.idle_timeout = idle_timeout
        self._pump = _Pump(lambda timeout: native.next_deliveries(timeout))
        self._last = None

    def _ack_last(self) -> None:
        if self._last is not None:
            self._last.ack()
            self._last = None

    def __iter__(self) -> "TableReader":
        return self

    def __next__(self):
        self._ack_last()
        self._last = self._pump.next(None)
        return self._last

    def next_delivery(self, timeout: Optional[float] = None):
        """The next delivery (not acknowledged), or ``None`` after ``timeout`` seconds."""
        try:
            return self._pump.next(timeout)
        except StopIteration:
            raise StreamEnded("the stream has ended") from None

    async def read_batches(self, auto_ack: bool = True):
        """The deliveries, as an async iterator."""
        last = None
        while True:
            if auto_ack and last is not None:
                last.ack()
            try:
                last = await self._pump.anext()
            except StopAsyncIteration:
                return
            yield last

    def _collect(self) -> List[ChangeBatch]:
        batches: List[ChangeBatch] = []
        while True:
            try:
                head = self._pump.peek(self.idle_timeout if batches else None)
            except StopIteration:
                break
            if head is None:
                break
            if not isinstance(head, ChangeBatch):
                if batches:
                    break
                # A truncate cannot be part of an Arrow stream of rows: acknowledged, skipped.
                self._pump.next().ack()
                continue
            if batches and not _native.same_schema(batches[0], head):
                break
            batches.append(self._pump.next())
        if not batches:
            raise StreamEnded("the stream has ended")
        return batches

    def _head_batch(self) -> ChangeBatch:
        """The first batch waiting (waits for one; truncates before it are acknowledged)."""
        while True:
            try:
                head = self._pump.peek(None)
            except StopIteration:
                raise StreamEnded("the stream has ended") from None
            if isinstance(head, ChangeBatch):
                return head
            self._pump.next().ack()

    def __arrow_c_schema__(self):
        """The schema of the batches the next ``__arrow_c_stream__`` hands over (waits for the
        first of them; takes nothing)."""
        return self._head_batch().__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema=None):
        batches = self._collect()
        capsule = _native.batches_stream(batches)
        for b in batches:
            b.ack()
        return capsule

    def __repr__(self) -> str:
        return f"<wal2arrow.TableReader {self.table}>"


class Readers:
    """One stream spread over per-table readers: ``readers["public.users"]``. Each table's
    reader can run in its own thread or task; memory is bounded per table (a reader that
    falls behind spills to disk). The slot advances past a transaction once every reader has
    acknowledged its deliveries of it."""

    def __init__(self, native):
        self._native = native
        self._readers: Dict[str, TableReader] = {}
        self._lock = threading.Lock()

    def __getitem__(self, table: str) -> TableReader:
        with self._lock:
            if table not in self._readers:
                self._readers[table] = TableReader(self._native.reader(table), table)
            return self._readers[table]

    def messages(self) -> TableReader:
        """The reader of logical messages (``pg_logical_emit_message``)."""
        return TableReader(self._native.messages(), "messages")

    def stats(self) -> Dict[str, str]:
        return self._native.stats()

    def close(self) -> None:
        """Stops the stream; readers end once they have read what was routed to them."""
        self._native.stop()

    def __enter__(self) -> "Readers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def readers(dsn: Optional[str] = None, **options) -> Readers:
    """Opens a stream and routes it by table: ``readers(...)["public.users"]``.

    Takes the options of ``stream()``, and ``memory_per_queue_mb`` (64) and
    ``router_spill_dir`` for each table's queue.
    """
    return Readers(_native.open_router(dsn, **options))
