"""Type stubs of the wal2arrow package (see __init__.py and the README's Python section)."""

import datetime
from typing import Any, AsyncIterator, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

PLUGIN_NAME: str

Lsn = Union[int, str]

# Errors ------------------------------------------------------------------------------------

class Wal2ArrowError(Exception):
    """Base class of every wal2arrow error."""

    transient: bool
    """Whether retrying (reconnecting with backoff) can help."""
    kind: Literal["transient", "definite", "configuration"]
    sqlstate: Optional[str]
    """The server's SQLSTATE code, when it sent one."""

class ConfigError(Wal2ArrowError): ...
class PreflightError(Wal2ArrowError):
    report: Report
class ConnectError(Wal2ArrowError): ...
class AuthError(Wal2ArrowError): ...
class TlsError(Wal2ArrowError): ...
class ServerError(Wal2ArrowError): ...
class SlotError(Wal2ArrowError): ...
class ProtocolError(Wal2ArrowError): ...
class SpillError(Wal2ArrowError): ...
class StreamEnded(Wal2ArrowError): ...
class TruncateNext(Wal2ArrowError):
    """A reader's next delivery is a truncate, which an Arrow stream of rows cannot carry."""

# Events ------------------------------------------------------------------------------------

class Begin:
    xid: int
    commit_lsn: int
    commit_time_us: int
    origin: Optional[str]
    @property
    def commit_time(self) -> datetime.datetime: ...

class Relation:
    @property
    def table(self) -> str: ...
    @property
    def relid(self) -> int: ...
    @property
    def primary_key(self) -> List[str]: ...
    @property
    def column_names(self) -> List[str]: ...
    def __arrow_c_schema__(self) -> object: ...

class ChangeBatch:
    """Changed rows of one table from one transaction (Arrow PyCapsule interface)."""

    xid: int
    commit_lsn: int
    commit_time_us: int
    ordinal: int
    origin: Optional[str]
    @property
    def table(self) -> str: ...
    @property
    def commit_time(self) -> datetime.datetime: ...
    @property
    def num_rows(self) -> int: ...
    @property
    def column_names(self) -> List[str]: ...
    def __len__(self) -> int: ...
    def __arrow_c_schema__(self) -> object: ...
    def __arrow_c_array__(self, requested_schema: Optional[object] = None) -> Tuple[object, object]: ...
    def __arrow_c_stream__(self, requested_schema: Optional[object] = None) -> object: ...
    def to_pyarrow(self) -> Any:
        """A pyarrow.RecordBatch (imports pyarrow)."""
    def ack(self) -> None:
        """Acknowledges a reader's batch (a stream's: stream.ack(commit.end_lsn))."""

class Truncate:
    tables: List[str]
    cascade: Optional[bool]
    restart_identity: Optional[bool]
    xid: Optional[int]
    commit_lsn: int
    ordinal: int
    def ack(self) -> None: ...

class Message:
    transactional: bool
    lsn: int
    prefix: str
    xid: Optional[int]
    commit_lsn: Optional[int]
    ack_lsn: int
    @property
    def content(self) -> bytes: ...
    def ack(self) -> None: ...

class Commit:
    xid: int
    commit_lsn: int
    end_lsn: int
    commit_time_us: int
    batches: int
    @property
    def commit_time(self) -> datetime.datetime: ...

class SnapshotProgress:
    kind: str
    table: Optional[str]
    detail: str

class Restarted:
    from_lsn: int
    reason: str

Event = Union[Begin, Relation, ChangeBatch, Truncate, Message, Commit, SnapshotProgress, Restarted]
Delivery = Union[ChangeBatch, Truncate, Message]

# Preflight and slots -----------------------------------------------------------------------

class Check:
    name: str
    status: Literal["pass", "warn", "fail", "skipped"]
    detail: str
    fix: Optional[str]

class Report:
    checks: List[Check]
    tables: List[str]
    @property
    def ok(self) -> bool: ...
    @property
    def failures(self) -> List[Check]: ...
    def __bool__(self) -> bool: ...

def check(dsn: Optional[str] = None, **options: Any) -> Report: ...
def list_slots(dsn: Optional[str] = None, **connection: Any) -> List[Dict[str, Any]]: ...
def create_slot(name: str, dsn: Optional[str] = None, plugin: Literal["wal2arrow", "wal2json"] = "wal2arrow",
                **connection: Any) -> int: ...
def drop_slot(name: str, dsn: Optional[str] = None, force: bool = False, **connection: Any) -> None: ...
def format_lsn(lsn: int) -> str: ...
def parse_lsn(text: str) -> int: ...

# Streams -----------------------------------------------------------------------------------

class Stream(Iterator[Event], AsyncIterator[Event]):
    def __iter__(self) -> Stream: ...
    def __next__(self) -> Event: ...
    def __aiter__(self) -> Stream: ...
    async def __anext__(self) -> Event: ...
    def next_event(self, timeout: Optional[float] = None) -> Optional[Event]: ...
    def ack(self, lsn: Lsn) -> None: ...
    @property
    def acknowledged(self) -> int: ...
    def sync_acks(self) -> int: ...
    @property
    def output_plugin(self) -> Literal["wal2arrow", "wal2json"]: ...
    @property
    def fallback_reason(self) -> Optional[str]: ...
    def stats(self) -> Dict[str, Any]: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Stream: ...
    def __exit__(self, *exc: object) -> None: ...
    async def __aenter__(self) -> Stream: ...
    async def __aexit__(self, *exc: object) -> None: ...

class TableReader:
    table: str
    idle_timeout: float
    def __iter__(self) -> Iterator[Delivery]: ...
    def ack(self) -> None:
        """Acknowledges what the last Arrow stream handed over."""
    def next_delivery(self, timeout: Optional[float] = None) -> Optional[Delivery]: ...
    def read_batches(self, auto_ack: bool = True) -> AsyncIterator[Delivery]: ...
    def __arrow_c_schema__(self) -> object: ...
    def __arrow_c_stream__(self, requested_schema: Optional[object] = None) -> object: ...

class Readers:
    def __getitem__(self, table: str) -> TableReader: ...
    def messages(self) -> TableReader: ...
    def stats(self) -> Dict[str, str]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Readers: ...
    def __exit__(self, *exc: object) -> None: ...

def stream(
    dsn: Optional[str] = None,
    *,
    host: Optional[str] = None,
    hostaddr: Optional[str] = None,
    port: Optional[int] = None,
    dbname: Optional[str] = None,
    database: Optional[str] = None,
    user: Optional[str] = None,
    password: Optional[str] = None,
    sslmode: Optional[str] = None,
    sslrootcert: Optional[str] = None,
    connect_timeout: Optional[int] = None,
    application_name: Optional[str] = None,
    slot: str = "wal2arrow",
    create_slot: bool = True,
    temporary_slot: bool = False,
    tables: Union[str, Sequence[str], None] = None,
    batch_rows: Optional[int] = None,
    snapshot: Literal["auto", "initial", "never", "only"] = "auto",
    snapshot_workers: Optional[int] = None,
    plugin: Literal["auto", "wal2arrow", "wal2json"] = "auto",
    streaming: bool = True,
    stream_memory_mb: Optional[int] = None,
    spill_dir: Optional[str] = None,
    max_poll_interval: Optional[float] = None,
    heartbeat_interval: Optional[float] = 10.0,
    start_lsn: Optional[Lsn] = None,
    preflight: bool = True,
    publication: Optional[str] = None,
    buffer_events: Optional[int] = None,
    numeric_as_string: bool = False,
) -> Stream: ...

def readers(
    dsn: Optional[str] = None,
    *,
    tables: Union[str, Sequence[str]],
    memory_per_queue_mb: Optional[int] = None,
    router_spill_dir: Optional[str] = None,
    **options: Any,
) -> Readers: ...
