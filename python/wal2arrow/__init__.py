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
    "TruncateNext",
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


class TruncateNext(Wal2ArrowError):
    """A reader's next delivery is a truncate, which an Arrow stream of rows cannot carry."""


class _Pump:
    """Gets items from a native source for the sync and async iterators alike.

    The async side waits in a worker thread of its own; an item taken by a wait whose awaiting
    task was cancelled is kept for the next read, never lost, and so is an error it met.
    """

    def __init__(self, fetch, poll_seconds: float = 0.25):
        self._fetch = fetch  # fetch(timeout) -> list | None (ended)
        self._poll = poll_seconds
        self._items: collections.deque = collections.deque()
        self._ended = False
        self._error: Optional[BaseException] = None
        self._lock = threading.RLock()
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._inflight: Optional[concurrent.futures.Future] = None

    def _fill(self, timeout: Optional[float]) -> None:
        with self._lock:
            if self._items or self._ended or self._error is not None:
                return
            try:
                got = self._fetch(timeout)
            except Exception as e:  # kept for whoever reads next (KeyboardInterrupt is not)
                self._error = e
                return
            if got is None:
                self._ended = True
            else:
                self._items.extend(got)

    def _take(self, pop: bool):
        """The first item (removed if `pop`); None if there is none yet."""
        if self._items:
            return self._items.popleft() if pop else self._items[0]
        if self._error is not None:
            error, self._error = self._error, None
            self._ended = True
            raise error
        if self._ended:
            raise StopIteration
        return None

    def next(self, timeout: Optional[float] = None):
        """The next item; ``None`` after ``timeout`` seconds without one; StopIteration at the end."""
        with self._lock:
            if not self._items:
                self._fill(timeout)
            return self._take(pop=True)

    def peek(self, timeout: Optional[float] = None):
        """As ``next``, leaving the item in place."""
        with self._lock:
            if not self._items:
                self._fill(timeout)
            return self._take(pop=False)

    async def anext(self):
        loop = asyncio.get_running_loop()
        while True:
            if self._inflight is not None and not self._inflight.done():
                # Shielded: a cancelled read leaves the fill running, and what it gets queued.
                await asyncio.shield(asyncio.wrap_future(self._inflight, loop=loop))
                continue
            # No fill in flight: the lock is free (the loop never waits on a fill holding it).
            with self._lock:
                if self._items or self._ended or self._error is not None:
                    try:
                        return self._take(pop=True)
                    except StopIteration:
                        raise StopAsyncIteration from None
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wal2arrow-async")
            self._inflight = self._executor.submit(self._fill, self._poll)

    def shutdown(self) -> None:
        """Ends iteration: what was received and not read is dropped (it was not acknowledged:
        a new stream delivers it again)."""
        with self._lock:
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

    ``for batch in reader`` and ``async for batch in reader.read_batches()`` acknowledge each
    delivery when the loop comes back for the next one (its body has handled it; a ``break``
    or an exception leaves it unacknowledged); pass ``auto_ack=False`` to ``read_batches`` and
    call ``batch.ack()`` yourself instead.

    The reader is also an Arrow stream (``__arrow_c_stream__``, ``__arrow_c_schema__``): it
    hands over the batches that arrive until none has come for ``idle_timeout`` seconds, or
    until the table's schema changes or a truncate comes. What one Arrow stream handed over is
    acknowledged by the next ``__arrow_c_stream__`` call (the previous query is done with it)
    or by ``reader.ack()``. A truncate is never folded into an Arrow stream: when one is next,
    ``__arrow_c_stream__`` raises ``TruncateNext`` — read it with ``next_delivery()``, apply
    it, ``ack()`` it.
    """

    def __init__(self, native, table: str, idle_timeout: float = 1.0):
        self._native = native
        self.table = table
        self.idle_timeout = idle_timeout
        self._pump = _Pump(lambda timeout: native.next_deliveries(timeout))
        self._handed_over: List[ChangeBatch] = []

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                item = self._pump.next(None)
            except StopIteration:
                return
            yield item
            item.ack()

    def next_delivery(self, timeout: Optional[float] = None):
        """The next delivery (not acknowledged), or ``None`` after ``timeout`` seconds."""
        try:
            return self._pump.next(timeout)
        except StopIteration:
            raise StreamEnded("the stream has ended") from None

    async def read_batches(self, auto_ack: bool = True):
        """The deliveries, as an async iterator."""
        while True:
            try:
                item = await self._pump.anext()
            except StopAsyncIteration:
                return
            yield item
            if auto_ack:
                item.ack()

    def ack(self) -> None:
        """Acknowledges what the last Arrow stream handed over."""
        for b in self._handed_over:
            b.ack()
        self._handed_over = []

    def _head_batch(self) -> ChangeBatch:
        """The first delivery waiting, a batch (waits for one)."""
        try:
            head = self._pump.peek(None)
        except StopIteration:
            raise StreamEnded("the stream has ended") from None
        if not isinstance(head, ChangeBatch):
            raise TruncateNext(
                f"a TRUNCATE of {self.table} comes next, which an Arrow stream of rows cannot carry: "
                "read it with reader.next_delivery(), apply it, and ack() it")
        return head

    def _collect(self) -> List[ChangeBatch]:
        batches = [self._head_batch()]
        self._pump.next()
        while True:
            try:
                head = self._pump.peek(self.idle_timeout)
            except StopIteration:
                break
            if head is None or not isinstance(head, ChangeBatch) or not _native.same_schema(batches[0], head):
                break
            batches.append(self._pump.next())
        return batches

    def __arrow_c_schema__(self):
        """The schema of the batches the next ``__arrow_c_stream__`` hands over (waits for the
        first of them; takes nothing)."""
        return self._head_batch().__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema=None):
        self.ack()
        batches = self._collect()
        self._handed_over = batches
        return _native.batches_stream(batches)

    def __repr__(self) -> str:
        return f"<wal2arrow.TableReader {self.table}>"


class Readers:
    """One stream spread over per-table readers: ``readers["public.users"]``. Each table's
    reader can run in its own thread or task; memory is bounded per table (a reader that
    falls behind spills to disk). The slot advances past a transaction once its deliveries to
    every table are acknowledged — so take a reader for every table the patterns match: the
    deliveries of a table nobody reads are kept (in memory, then on disk) and hold the slot
    back."""

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
        with self._lock:
            if "\0messages" not in self._readers:
                self._readers["\0messages"] = TableReader(self._native.messages(), "messages")
            return self._readers["\0messages"]

    def stats(self) -> Dict[str, str]:
        """Each queue's counters, as text."""
        return self._native.stats()

    def close(self) -> None:
        """Stops the stream; readers end once they have read what was routed to them."""
        self._native.stop()

    def __enter__(self) -> "Readers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def readers(dsn: Optional[str] = None, *, tables, **options) -> Readers:
    """Opens a stream and routes it by table: ``readers(..., tables=[...])["public.users"]``.

    ``tables`` is required (the tables to read, each with its own reader: see ``Readers``).
    Takes the other options of ``stream()``, and ``memory_per_queue_mb`` (64) and
    ``router_spill_dir`` for each table's queue.
    """
    return Readers(_native.open_router(dsn, tables=tables, **options))
