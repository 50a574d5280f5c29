//! The Kafka sink: one topic per table, in Debezium's PostgreSQL change-event format (the
//! default) or as Arrow IPC.
//!
//! **Topics and keys.** Each table's changes go to `<prefix>.<schema>.<table>` (created when
//! missing, with the broker's default partitions, if the broker allows it; otherwise the error
//! names the topic). With the `debezium` format each row is one message keyed by the row's
//! primary key (or replica identity key) as a JSON object, so each key's changes stay in order
//! in one partition; with `arrow` each batch (rows of one table in one transaction) is one
//! message keyed by the table's name, so a table's batches stay in order.
//!
//! **Debezium format** (`schemas.enable=false` style unless [`KafkaOptions::schemas`]):
//!
//! ```text
//! key:   {"id":1}
//! value: {"before":null,"after":{"id":1,"name":"Alice"},"source":{"version":"wal2arrow-0.1.0",
//!         "connector":"postgresql","name":"<prefix>","ts_ms":1700000000123,"snapshot":"false",
//!         "db":"app","sequence":"[null,\"0/16B3E00\"]","schema":"public","table":"users",
//!         "txId":731,"lsn":23805440,"xmin":null},"op":"c","ts_ms":1700000000456,
//!         "transaction":null}
//! ```
//!
//! `op` is `c` (insert), `u` (update), `d` (delete), `r` (a snapshot or backfill row) or `t`
//! (truncate, with a null key and `before`/`after` null). As Debezium does, an update that
//! changes the key is a `d` of the old key (with its tombstone) then a `c` of the new one, and a
//! delete is followed by a tombstone (the key with a null value; [`KafkaOptions::tombstones`]).
//! `before` is the old row with `REPLICA IDENTITY FULL`, the old key for deletes, else null.
//! Values follow Debezium's encodings for the connector settings `decimal.handling.mode=string`,
//! `time.precision.mode=adaptive_time_microseconds` and `binary.handling.mode=base64`
//! (Kafka Connect type and, where there is one, Debezium's logical name, as
//! [`KafkaOptions::schemas`] sends them):
//!
//! | PostgreSQL | JSON value | Connect schema |
//! |---|---|---|
//! | `int2`, `int4`, `int8`, `oid` | number | `int16`, `int32`, `int64`, `int64` |
//! | `float4`, `float8` | number; NaN and infinities as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` | `float`, `double` |
//! | `bool` | `true`/`false` | `boolean` |
//! | `numeric`, `money` | exact text (`"12.50"`, `"-92233720368547758.08"`) | `string` |
//! | `date` | days since 1970-01-01 | `int32` `io.debezium.time.Date` |
//! | `time` | microseconds since midnight | `int64` `io.debezium.time.MicroTime` |
//! | `timetz` | the time in UTC, `"08:15:59.500000Z"` | `string` `io.debezium.time.ZonedTime` |
//! | `timestamp` | microseconds since 1970 (±infinity: the int64 extremes) | `int64` `io.debezium.time.MicroTimestamp` |
//! | `timestamptz` | ISO 8601 in UTC, `"2024-01-01T00:00:00.000000Z"` (`"infinity"`, `"-infinity"`) | `string` `io.debezium.time.ZonedTimestamp` |
//! | `interval` | microseconds, months of 30.4375 days (kept within the int64 range) | `int64` `io.debezium.time.MicroDuration` |
//! | `bytea` | base64 | `bytes` |
//! | `uuid` | text | `string` `io.debezium.data.Uuid` |
//! | `json`, `jsonb`, `xml` | text | `string` `io.debezium.data.Json`/`Xml` |
//! | arrays | JSON arrays of the element's encoding (a 2-D array, arrays of arrays) | `array` |
//! | any other (`inet`, `macaddr`, enums, ranges, `bit`, `point`, composites, …) | PostgreSQL's text | `string` |
//!
//! **Deliberate differences:** Debezium sends a column whose unchanged TOAST value PostgreSQL did
//! not log as the placeholder `__debezium_unavailable_value`, which looks like data; this sink
//! leaves such a column out of `after` and lists it in `"missing": [...]` beside `op`. A value
//! its column's Arrow type cannot hold (a `numeric` NaN or infinity in a column with a
//! precision, the time `24:00:00`: the README's type table) is `null` and named in
//! `"unrepresentable": [...]` — the columns of `after` (of `before` for a delete; an update's
//! `before` has no such list). `bit`/`varbit` and `point` are their text, not Debezium's `Bits`
//! bytes and `Point` struct. Logical messages are not sent.
//!
//! **Value schemas** ([`KafkaOptions::schemas`], Kafka Connect's `schemas.enable=true`): each key
//! is `{"schema":{"type":"struct","fields":[…],"name":"<prefix>.<schema>.<table>.Key"},
//! "payload":{"id":1}}` and each value `{"schema":…,"payload":<the envelope above>}`, the
//! envelope's schema `<prefix>.<schema>.<table>.Envelope` with `before`/`after` of
//! `<prefix>.<schema>.<table>.Value`, Debezium's `io.debezium.connector.postgresql.Source`,
//! `event.block`, and our optional `missing` and `unrepresentable` string arrays. Tombstones stay
//! a null value; transaction-metadata messages get Debezium's `TransactionMetadataKey`/`Value`
//! schemas.
//! Every message carries the headers `wal2arrow.commit_lsn`, `wal2arrow.ordinal` and (Debezium
//! format) `wal2arrow.row`: a copy written again after a crash is identified by them.
//!
//! **Transaction metadata** ([`KafkaOptions::transaction_metadata`], Debezium's
//! `provide.transaction.metadata`; Debezium format): before a transaction's first event a
//! `BEGIN` message, after its last an `END` one, on `<prefix>.transaction`, keyed
//! `{"id":"<txId>:<commit LSN>"}`:
//!
//! ```text
//! {"status":"BEGIN","id":"731:23805440","ts_ms":1700000000123,"event_count":null,"data_collections":null}
//! {"status":"END","id":"731:23805440","ts_ms":1700000000123,"event_count":3,
//!  "data_collections":[{"data_collection":"public.users","event_count":2},
//!                      {"data_collection":"public.orders","event_count":1}]}
//! ```
//!
//! and each event's `transaction` is `{"id":…,"total_order":…,"data_collection_order":…}`
//! (events: rows and truncates; tombstones are not counted). `ts_ms` is the commit time (a
//! transaction decoded at its commit has no earlier one). Transactions without a change to a
//! captured table send nothing.
//!
//! A row whose message is over the producer's `message.max.bytes` stops the run with an error
//! naming the table, the row's key, its transaction and the setting to raise.
//!
//! **Arrow format**: the value is an Arrow IPC stream (the batch's schema, then the batch),
//! with headers `wal2arrow.commit_lsn`, `wal2arrow.xid`, `wal2arrow.commit_time_us`,
//! `wal2arrow.ordinal`, `wal2arrow.table`. A batch larger than the producer's
//! `message.max.bytes` is split into smaller batches (same headers; `wal2arrow.part` numbers
//! them).
//!
//! **Delivery**: an idempotent producer, `acks=all`, messages never expire
//! (`message.timeout.ms=0`): while the broker is down the producer reconnects and retries, and
//! [`flush`](Sink::flush) waits, logging every 10 s (a broker that answers again but leaves
//! what was sent before unacknowledged for 30 s — it lost its state — ends the run with an
//! error: the next run sends it again). The runner acknowledges a transaction
//! only after a flush in which the broker acknowledged every message of it; after a crash,
//! what was written but not acknowledged is written again (at-least-once).
//!
//! **Kafka transactions** ([`KafkaOptions::transactional_id`]): each flush's messages are one
//! Kafka transaction, begun at the first message after a flush; before committing it the sink
//! adds a record of the position it holds — `{"transactional_id":…,"source":"<system
//! identifier>/<database>","commit_lsn":"0/16B3E00","ack_lsn":"0/16B3E30"}`, keyed by the ID,
//! on `<prefix>.wal2arrow-offsets` (created compacted) — so the record and the changes are
//! committed together. [`KafkaSink::start_transactions`], called once the slot is held,
//! registers the ID (fencing an earlier producer with it and aborting its open transaction)
//! and reads the record back (`read_committed`; a record of another source is refused):
//! [`Sink::durable`] returns it and the runner skips the transactions at or before it. A failed
//! run aborts the open transaction ([`Sink::rollback`]). Consumers reading `read_committed`
//! then see each change once. `transaction.timeout.ms` is 900000 (15 minutes, brokers' default
//! maximum) unless given: a broker away for longer, or one PostgreSQL transaction (an initial
//! snapshot included) that takes longer to write, ends the run with an error — the Kafka
//! transaction is aborted, nothing after the last committed one was acknowledged, and the next
//! run writes it again (raise the broker's `transaction.max.timeout.ms` and this setting for
//! larger ones).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Decimal128Type, DecimalType, Float16Type, Float32Type, Float64Type, IntervalMonthDayNanoType,
    UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, TimeUnit};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use wal2arrow_consumer::{ChangeBatch, Event, Lsn};
use wal2arrow_schema::meta::PG_TYPNAME as TYPNAME;

use crate::error::{Error, Result};
use crate::{Durable, Sink, json_string};

/// What the messages hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaFormat {
    /// Debezium's PostgreSQL change events, one JSON message per row (the default).
    Debezium,
    /// One Arrow IPC stream per batch.
    Arrow,
}

/// The Kafka sink's settings.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// `bootstrap.servers`: `HOST:PORT[,…]`.
    pub brokers: String,
    /// Topics are `<prefix>.<schema>.<table>`; also Debezium's `source.name`.
    pub topic_prefix: String,
    /// The message format.
    pub format: KafkaFormat,
    /// A tombstone (the key, a null value) after each delete (Debezium format; default true).
    pub tombstones: bool,
    /// The database name, for Debezium's `source.db`.
    pub database: String,
    /// More librdkafka properties (`key=value`), applied last.
    pub properties: Vec<(String, String)>,
    /// Debezium's `provide.transaction.metadata` (Debezium format): BEGIN and END messages on
    /// `<prefix>.transaction`, and each event's `transaction` block (default false).
    pub transaction_metadata: bool,
    /// Kafka Connect's `schemas.enable` (Debezium format): each key and value is
    /// `{"schema": …, "payload": …}`, the schema in Kafka Connect's JSON form with Debezium's
    /// logical type names (default false).
    pub schemas: bool,
    /// Kafka transactions with this `transactional.id` (one per slot): each flush's messages
    /// are one Kafka transaction, which also records the position of its last PostgreSQL
    /// transaction on `<prefix>.wal2arrow-offsets`; a restart reads it back
    /// ([`Sink::durable`]) and skips what Kafka already has, and messages written since the
    /// last flush are aborted when the run fails ([`Sink::rollback`]). `read_committed`
    /// consumers then see each change once. Default: none (at-least-once).
    pub transactional_id: Option<String>,
    /// What the stream reads, `<system identifier>/<database>` (IDENTIFY_SYSTEM's): recorded
    /// with the position under Kafka transactions, and a record of another source refused —
    /// its LSNs mean nothing here (a recreated cluster, an ID used for another database).
    /// Empty: not checked.
    pub source: String,
}

impl KafkaOptions {
    /// Options for `brokers`, the defaults otherwise (prefix `wal2arrow`, Debezium format).
    pub fn new(brokers: impl Into<String>) -> KafkaOptions {
        KafkaOptions {
            brokers: brokers.into(),
            topic_prefix: "wal2arrow".into(),
            format: KafkaFormat::Debezium,
            tombstones: true,
            database: String::new(),
            properties: Vec::new(),
            transaction_metadata: false,
            schemas: false,
            transactional_id: None,
            source: String::new(),
        }
    }

    /// The topic where Kafka transactions record the position they hold
    /// (`<prefix>.wal2arrow-offsets`, keyed by `transactional.id`).
    pub fn offsets_topic(&self) -> String {
        format!("{}.wal2arrow-offsets", self.topic_prefix)
    }

    /// The topic of a table.
    pub fn topic(&self, namespace: &str, table: &str) -> String {
        format!("{}.{namespace}.{table}", self.topic_prefix)
    }
}

/// Delivery reports: the first failure, kept until the next flush reports it.
#[derive(Clone, Default)]
struct Deliveries {
    failed: Arc<Mutex<Option<String>>>,
}

impl ClientContext for Deliveries {
    /// librdkafka's errors: a broker that cannot be reached is reported by the flush, every
    /// 10 s, with what it means; the rest as warnings.
    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        match error.rdkafka_error_code() {
            Some(Code::BrokerTransportFailure | Code::AllBrokersDown) => {
                tracing::debug!(%error, reason, "librdkafka");
            }
            _ => tracing::warn!(%error, reason, "librdkafka"),
        }
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        // Messages purged on purpose (an aborted Kafka transaction, a flush giving up on a
        // broker) are reported failed; whoever purged them reports why.
        if let Err((KafkaError::MessageProduction(Code::PurgeQueue | Code::PurgeInflight), _)) =
            result
        {
            return;
        }
        if let Err((e, message)) = result {
            use rdkafka::Message;
            let what = format!(
                "the broker refused a message to topic {} ({} bytes): {e}{}",
                message.topic(),
                message.payload_len(),
                if matches!(
                    e,
                    KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                    )
                ) {
                    " — raise the broker's and the topic's message size limit \
                     (message.max.bytes, max.message.bytes) and --kafka-property \
                     message.max.bytes=…, or use --kafka-format arrow, which splits batches"
                } else {
                    ""
                }
            );
            if let Ok(mut f) = self.failed.lock() {
                f.get_or_insert(what);
            }
        }
    }
}

/// The Kafka sink.
pub struct KafkaSink {
    options: KafkaOptions,
    producer: ThreadedProducer<Deliveries>,
    deliveries: Deliveries,
    topics: HashSet<String>,
    /// The transaction being written: xid, commit LSN, commit time (µs).
    txn: (u32, Lsn, i64),
    /// The producer's `message.max.bytes`.
    max_message: usize,
    since_flush: Option<Instant>,
    unflushed: usize,
    value: String,
    /// The message key being written (reused).
    key: String,
    /// The transaction's metadata so far (with `transaction_metadata`).
    meta: TxnMeta,
    /// With `schemas`: each table's key and envelope schemas, for the relation they were
    /// built from.
    schemas: HashMap<String, Arc<TableSchemas>>,
    /// With Kafka transactions: whether one is open (begun at the first message after a
    /// flush), what the last flush committed, and the positions written since.
    txn_open: bool,
    transactions_started: bool,
    durable: Durable,
    last_commit: Lsn,
    last_ack: Lsn,
}

/// A table's Kafka Connect schemas (JSON).
#[derive(Debug)]
struct TableSchemas {
    /// The batches' schema they describe.
    of: arrow_schema::SchemaRef,
    key: String,
    envelope: String,
}

/// Debezium's transaction metadata of the transaction being written: its BEGIN is sent before
/// its first event, its END (with the counts) at its commit.
#[derive(Debug, Default)]
struct TxnMeta {
    /// `txId:commitLSN`, once BEGIN was sent.
    id: Option<String>,
    /// Events so far.
    total: u64,
    /// Events so far per table (`schema.table`), in first-seen order.
    per_table: Vec<(String, u64)>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").field("options", &self.options).finish_non_exhaustive()
    }
}

fn kafka_error(topic: Option<&str>, what: impl std::fmt::Display) -> Error {
    Error::Kafka(match topic {
        Some(t) => format!("kafka topic {t}: {what}"),
        None => format!("kafka: {what}"),
    })
}

impl KafkaSink {
    /// A producer for `options.brokers`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a property librdkafka refuses.
    pub fn new(options: KafkaOptions) -> Result<KafkaSink> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &options.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Only failures need the delivery callback (a flush waits for every message
            // either way): a report per delivered message costs the producer's polling thread
            // about as much as rendering the message does.
            .set("delivery.report.only.error", "true")
            .set("client.id", "wal2arrow");
        // Messages never expire; in a Kafka transaction they may not outlive it (librdkafka's
        // default there: transaction.timeout.ms, 60 s).
        if options.transactional_id.is_none() {
            config.set("message.timeout.ms", "0");
        }
        for (k, v) in &options.properties {
            config.set(k, v);
        }
        if let Some(id) = &options.transactional_id {
            config.set("transactional.id", id);
            // A Kafka transaction spans a flush interval, or one large PostgreSQL transaction
            // (or an initial snapshot): allow it what brokers allow by default
            // (transaction.max.timeout.ms), not librdkafka's 60 s.
            if config.get("transaction.timeout.ms").is_none() {
                config.set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS);
            }
        }
        let max_message =
            config.get("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(1_000_000usize);
        let deliveries = Deliveries::default();
        let producer: ThreadedProducer<Deliveries> = config
            .create_with_context(deliveries.clone())
            .map_err(|e| Error::Config(format!("kafka: {e} (check --kafka-property)")))?;
        let durable = Durable::default();
        Ok(KafkaSink {
            options,
            producer,
            deliveries,
            topics: HashSet::new(),
            txn: (0, Lsn::INVALID, 0),
            max_message,
            since_flush: None,
            unflushed: 0,
            value: String::new(),
            key: String::new(),
            meta: TxnMeta::default(),
            schemas: HashMap::new(),
            txn_open: false,
            transactions_started: false,
            durable,
            last_commit: durable.commit_lsn,
            last_ack: durable.ack_lsn,
        })
    }

    /// With [`KafkaOptions::transactional_id`]: registers the producer with the broker —
    /// fencing an earlier one with the same ID and aborting its open transaction — and reads
    /// back the position the last committed Kafka transaction recorded, which
    /// [`durable`](Sink::durable) then reports. Call it once the replication slot is held
    /// (after [`Consumer::start`](wal2arrow_consumer::Consumer::start)), so that a second
    /// stream started by mistake, which cannot get the slot, does not fence the running one;
    /// and before [`run`](crate::run). Without a transactional ID it does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when the broker refuses transactions or the ID, or the recorded
    /// position is of another PostgreSQL cluster or database ([`KafkaOptions::source`]).
    pub fn start_transactions(&mut self) -> Result<()> {
        let Some(id) = self.options.transactional_id.clone() else { return Ok(()) };
        if self.transactions_started {
            return Ok(());
        }
        init_transactions(&self.producer, &id)?;
        self.durable = read_offsets(&self.options, &id)?;
        self.last_commit = self.durable.commit_lsn;
        self.last_ack = self.durable.ack_lsn;
        self.transactions_started = true;
        tracing::info!(
            transactional_id = %id,
            commit_lsn = %self.durable.commit_lsn,
            "Kafka transactions: Kafka holds the changes up to this commit"
        );
        Ok(())
    }

    /// Makes sure `topic` exists: known from the broker's metadata, or created (waits for a
    /// broker that is down, saying so every 10 s).
    fn ensure_topic(&mut self, topic: &str) -> Result<()> {
        if self.topics.contains(topic) {
            return Ok(());
        }
        let started = Instant::now();
        let mut warned = Instant::now();
        loop {
            match self.producer.client().fetch_metadata(Some(topic), Duration::from_secs(5)) {
                Ok(md) => {
                    let t = md.topics().iter().find(|t| t.name() == topic);
                    match t.map(|t| (t.error(), t.partitions().len())) {
                        Some((None, n)) if n > 0 => break,
                        _ => self.create_topic(topic)?,
                    }
                }
                Err(e) => {
                    if warned.elapsed() >= Duration::from_secs(10) {
                        tracing::warn!(topic, error = %e, waited = ?started.elapsed(), "the Kafka broker does not answer; retrying");
                        warned = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        self.topics.insert(topic.to_owned());
        Ok(())
    }

    fn create_topic(&self, topic: &str) -> Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.options.brokers);
        for (k, v) in &self.options.properties {
            if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
                config.set(k, v);
            }
        }
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            config.create().map_err(|e| kafka_error(Some(topic), e))?;
        let mut new = NewTopic::new(topic, -1, TopicReplication::Fixed(-1));
        if topic == self.options.offsets_topic() {
            // Only each transactional.id's last record matters: kept however old it is.
            new = new.set("cleanup.policy", "compact");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| kafka_error(Some(topic), e))?;
        let created = runtime.block_on(admin.create_topics([&new], &AdminOptions::new()));
        match created {
            Ok(results) => match results.into_iter().next() {
                Some(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)))
                | Some(Ok(_)) => {
                    tracing::info!(topic, "created the Kafka topic");
                    Ok(())
                }
                Some(Err((_, code))) => Err(kafka_error(
                    Some(topic),
                    format!(
                        "missing, and the broker refused to create it ({code}): create it, or \
                         allow this client to"
                    ),
                )),
                None => Ok(()),
            },
            Err(e) => Err(kafka_error(
                Some(topic),
                format!("missing, and creating it failed: {e}: create it, or allow this client to"),
            )),
        }
    }

    /// Queues one message, waiting while the producer's queue is full.
    fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<()> {
        self.send_about(topic, key, value, headers, None)
    }

    /// As [`send`](Self::send); a message too large is reported as `what()` (the row it
    /// holds; written only then).
    fn send_about(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: OwnedHeaders,
        what: Option<&dyn Fn() -> String>,
    ) -> Result<()> {
        if self.options.transactional_id.is_some() && !self.txn_open {
            if !self.transactions_started {
                return Err(Error::Config(
                    "kafka: a transactional.id is set but KafkaSink::start_transactions was not \
                     called (call it once the slot is held, before run)"
                        .into(),
                ));
            }
            self.producer.begin_transaction().map_err(|e| self.transaction_error("begin", e))?;
            self.txn_open = true;
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((
                    KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge,
                    ),
                    _,
                )) => {
                    let (xid, commit_lsn, _) = self.txn;
                    return Err(kafka_error(
                        Some(topic),
                        format!(
                            "{} is a message of {} bytes, over message.max.bytes ({}): raise it \
                             (the broker's and the topic's limit too) with --kafka-property \
                             message.max.bytes=…, or use --kafka-format arrow, which splits \
                             batches",
                            match what {
                                Some(w) => format!("{} (xid {xid}, commit LSN {commit_lsn})", w()),
                                None => format!("a message of xid {xid} (commit LSN {commit_lsn})"),
                            },
                            value.map_or(0, <[u8]>::len),
                            self.max_message
                        ),
                    ));
                }
                Err((e, _)) => return Err(kafka_error(Some(topic), e)),
            }
        }
        self.unflushed += 1;
        self.since_flush.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// A Kafka transaction's error, saying what it means.
    fn transaction_error(&self, what: &str, e: KafkaError) -> Error {
        let id = self.options.transactional_id.as_deref().unwrap_or_default();
        transaction_error(id, what, e)
    }

    /// Records the position of the last PostgreSQL transaction written in the open Kafka
    /// transaction, then commits it (waiting for a broker that is down, saying so).
    fn commit_transaction(&mut self) -> Result<()> {
        let id = self.options.transactional_id.clone().unwrap_or_default();
        let topic = self.options.offsets_topic();
        self.ensure_topic(&topic)?;
        let mut value = String::from("{\"transactional_id\":");
        json_string(&id, &mut value);
        value.push_str(",\"source\":");
        json_string(&self.options.source, &mut value);
        let _ = write!(
            value,
            ",\"commit_lsn\":\"{}\",\"ack_lsn\":\"{}\"}}",
            self.last_commit, self.last_ack
        );
        let headers = self.headers(0);
        self.send(&topic, Some(id.as_bytes()), Some(value.as_bytes()), headers)?;
        let started = Instant::now();
        loop {
            match self.producer.commit_transaction(Duration::from_secs(10)) {
                Ok(()) => break,
                Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                    tracing::warn!(
                        waiting = ?started.elapsed(),
                        error = %e,
                        "the Kafka broker has not committed the transaction yet (is it up?); \
                         nothing after it is acknowledged to PostgreSQL until it has"
                    );
                }
                Err(e) => return Err(self.transaction_error("commit", e)),
            }
        }
        self.txn_open = false;
        self.durable = Durable { commit_lsn: self.last_commit, ack_lsn: self.last_ack };
        self.flushed()
    }

    /// After the broker acknowledged (or committed) everything sent: a delivery that failed
    /// meanwhile is the flush's error; otherwise nothing is unflushed any more.
    fn flushed(&mut self) -> Result<()> {
        if let Some(failed) = self.deliveries.failed.lock().ok().and_then(|mut f| f.take()) {
            return Err(kafka_error(None, failed));
        }
        tracing::debug!(commit_lsn = %self.last_commit, "Kafka committed the changes up to this commit");
        self.since_flush = None;
        self.unflushed = 0;
        Ok(())
    }

    fn headers(&self, ordinal: u32) -> OwnedHeaders {
        HeaderValues::new(self.txn, ordinal).headers(2)
    }

    fn write_arrow(&mut self, c: &ChangeBatch) -> Result<()> {
        let topic = self.options.topic(&c.relation.namespace, &c.relation.name);
        self.ensure_topic(&topic)?;
        let mut parts = vec![c.batch.clone()];
        let mut part = 0u32;
        while let Some(batch) = parts.pop() {
            let bytes = ipc_stream(&batch)?;
            if bytes.len() + 1024 > self.max_message && batch.num_rows() > 1 {
                let half = batch.num_rows() / 2;
                parts.push(batch.slice(half, batch.num_rows() - half));
                parts.push(batch.slice(0, half));
                continue;
            }
            let headers = self
                .headers(c.ordinal)
                .insert(Header { key: "wal2arrow.table", value: Some(c.table().as_bytes()) })
                .insert(Header { key: "wal2arrow.part", value: Some(part.to_string().as_bytes()) });
            part += 1;
            self.send(&topic, Some(c.table().as_bytes()), Some(&bytes), headers)?;
        }
        Ok(())
    }

    fn write_debezium(&mut self, c: &ChangeBatch) -> Result<()> {
        let relation = &c.relation;
        let topic = self.options.topic(&relation.namespace, &relation.name);
        self.ensure_topic(&topic)?;
        let batch = &c.batch;
        let n = relation.table_columns();
        let options = FormatOptions::default().with_display_error(true);
        let fields = batch.schema_ref().fields().clone();
        let renderers: Vec<Renderer<'_>> = (0..n)
            .map(|i| {
                let typname = fields[i].metadata().get(TYPNAME).map(String::as_str);
                Renderer::new(batch.column(i), typname, &options)
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::Arrow)?;
        let names: Vec<&str> =
            batch.schema_ref().fields().iter().take(n).map(|f| f.name().as_str()).collect();
        // The columns' names as JSON object keys (`"name":`), escaped once per batch.
        let json_keys: Vec<String> = names
            .iter()
            .map(|name| {
                let mut k = String::with_capacity(name.len() + 3);
                json_string(name, &mut k);
                k.push(':');
                k
            })
            .collect();
        let key_names = if relation.primary_key.is_empty() {
            &relation.identity_key
        } else {
            &relation.primary_key
        };
        let key_cols: Vec<usize> =
            key_names.iter().filter_map(|k| names.iter().position(|n| n == k)).collect();
        let ops = batch.column_by_name("_op").expect("an _op column").as_dictionary::<UInt8Type>();
        let op_names = ops.values().as_string::<i32>();
        let lsns = batch
            .column_by_name("_lsn")
            .map(|a| a.as_primitive::<arrow_array::types::UInt64Type>().clone());
        let missing = batch.column(relation.missing_index()).as_list::<i32>();
        let unrepresentable = batch.column(relation.missing_index() + 1).as_list::<i32>();
        let names_at = |list: &arrow_array::ListArray, r: usize| -> Vec<String> {
            if list.is_null(r) {
                return Vec::new();
            }
            list.value(r).as_string::<i32>().iter().flatten().map(str::to_owned).collect()
        };
        let missing_at = |r: usize| names_at(missing, r);
        let schemas = if self.options.schemas { Some(self.schemas_of(relation)) } else { None };
        // What every message of the batch repeats, written once: its headers' values and the
        // envelope's `source` block but for the row's position.
        let header_values = HeaderValues::new(self.txn, c.ordinal);
        let source = Source::new(self, relation);
        // Debezium's `ts_ms`, when the connector processed the event: the batch's time.
        let processed_ms = now_ms();
        let render = |r: usize, only: Option<&[usize]>, skip: &[String], out: &mut String| {
            out.push('{');
            let mut first = true;
            for i in 0..n {
                if only.is_some_and(|o| !o.contains(&i)) || skip.iter().any(|s| s == names[i]) {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(&json_keys[i]);
                renderers[i].write(r, out);
            }
            out.push('}');
        };
        let key_of = |row: usize| {
            let mut k = String::new();
            render(row, Some(&key_cols), &[], &mut k);
            k
        };
        let mut r = 0;
        while r < batch.num_rows() {
            let op = op_names.value(ops.keys().value(r) as usize);
            let lsn = lsns.as_ref().map_or(self.txn.1.0, |l| l.value(r));
            // An update's old image comes first, in the same batch.
            let (before, row, op) = if op == "update_before" && r + 1 < batch.num_rows() {
                (Some(r), r + 1, "update")
            } else {
                (None, r, op)
            };
            let key_changed = before.is_some_and(|b| key_of(b) != key_of(row));
            let snapshot = op == "read";
            let emit = |sink: &mut KafkaSink,
                        code: &str,
                        bef: Option<usize>,
                        aft: Option<usize>,
                        key_row: usize,
                        bef_skip: Vec<String>,
                        aft_skip: Vec<String>|
             -> Result<()> {
                let mut key = std::mem::take(&mut sink.key);
                key.clear();
                if !key_cols.is_empty() {
                    if let Some(s) = &schemas {
                        key.push_str("{\"schema\":");
                        key.push_str(&s.key);
                        key.push_str(",\"payload\":");
                    }
                    render(key_row, Some(&key_cols), &[], &mut key);
                    if schemas.is_some() {
                        key.push('}');
                    }
                }
                let key_bytes = (!key_cols.is_empty()).then_some(key.as_bytes());
                let mut v = std::mem::take(&mut sink.value);
                v.clear();
                if let Some(s) = &schemas {
                    v.push_str("{\"schema\":");
                    v.push_str(&s.envelope);
                    v.push_str(",\"payload\":");
                }
                v.push_str("{\"before\":");
                match bef {
                    Some(b) => render(b, None, &bef_skip, &mut v),
                    None => v.push_str("null"),
                }
                v.push_str(",\"after\":");
                match aft {
                    Some(a) => render(a, None, &aft_skip, &mut v),
                    None => v.push_str("null"),
                }
                source.write(&mut v, lsn, snapshot);
                v.push_str(",\"op\":\"");
                v.push_str(code);
                v.push_str("\",\"ts_ms\":");
                push_int(processed_ms, &mut v);
                if aft.is_some() {
                    name_list(",\"missing\":", &aft_skip, &mut v);
                }
                // Columns whose value has no Arrow form (a numeric NaN in a decimal column,
                // time 24:00): sent as null, and named, so that null is not taken as data.
                let lost = names_at(unrepresentable, aft.or(bef).unwrap_or(key_row));
                name_list(",\"unrepresentable\":", &lost, &mut v);
                v.push_str(",\"transaction\":");
                let result =
                    sink.transaction_block(&relation.qualified_name, &mut v).and_then(|()| {
                        v.push('}');
                        if schemas.is_some() {
                            v.push('}');
                        }
                        let headers = header_values.headers(1).insert(Header {
                            key: "wal2arrow.row",
                            value: Some(itoa(key_row as u64).as_bytes()),
                        });
                        let what = || {
                            format!(
                                "the {} of {} with key {}",
                                match code {
                                    "c" => "insert",
                                    "u" => "update",
                                    "d" => "delete",
                                    _ => "row",
                                },
                                relation.qualified_name,
                                match key_bytes {
                                    Some(_) => key.as_str(),
                                    None => "(none: the table has no key)",
                                }
                            )
                        };
                        sink.send_about(&topic, key_bytes, Some(v.as_bytes()), headers, Some(&what))
                    });
                sink.value = v;
                let result = result.and_then(|()| {
                    if code == "d" && sink.options.tombstones && key_bytes.is_some() {
                        let headers = header_values.headers(1).insert(Header {
                            key: "wal2arrow.row",
                            value: Some(itoa(key_row as u64).as_bytes()),
                        });
                        sink.send(&topic, key_bytes, None, headers)?;
                    }
                    Ok(())
                });
                sink.key = key;
                result
            };
            match op {
                "insert" => emit(self, "c", None, Some(row), row, vec![], missing_at(row))?,
                "read" => emit(self, "r", None, Some(row), row, vec![], missing_at(row))?,
                "delete" => emit(self, "d", Some(row), None, row, missing_at(row), vec![])?,
                "update" if key_changed => {
                    let b = before.expect("an old image");
                    emit(self, "d", Some(b), None, b, missing_at(b), vec![])?;
                    emit(self, "c", None, Some(row), row, vec![], missing_at(row))?;
                }
                "update" => emit(
                    self,
                    "u",
                    before,
                    Some(row),
                    row,
                    before.map(missing_at).unwrap_or_default(),
                    missing_at(row),
                )?,
                // An old image whose new one ended up in the next batch (never: the plugin
                // keeps an update's images in one batch).
                _ => {}
            }
            r = row + 1;
        }
        Ok(())
    }

    /// The envelope's `transaction` value for the next event of `table`: `null`, or with
    /// transaction metadata Debezium's `{"id", "total_order", "data_collection_order"}`
    /// (sending the transaction's BEGIN first, before its first event).
    fn transaction_block(&mut self, table: &str, out: &mut String) -> Result<()> {
        if !self.options.transaction_metadata {
            out.push_str("null");
            return Ok(());
        }
        let (xid, commit_lsn, time) = self.txn;
        if self.meta.id.is_none() {
            let id = format!("{xid}:{}", commit_lsn.0);
            let mut v = String::from("{\"status\":\"BEGIN\",\"id\":");
            json_string(&id, &mut v);
            let _ = write!(
                v,
                ",\"ts_ms\":{},\"event_count\":null,\"data_collections\":null}}",
                time.div_euclid(1000)
            );
            self.send_metadata(&id, &v)?;
            self.meta.id = Some(id);
        }
        self.meta.total += 1;
        let order = match self.meta.per_table.iter_mut().find(|(t, _)| t == table) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.meta.per_table.push((table.to_owned(), 1));
                1
            }
        };
        out.push_str("{\"id\":");
        json_string(self.meta.id.as_deref().unwrap_or_default(), out);
        let _ =
            write!(out, ",\"total_order\":{},\"data_collection_order\":{order}}}", self.meta.total);
        Ok(())
    }

    /// The transaction's END, when its BEGIN was sent.
    fn end_transaction(&mut self) -> Result<()> {
        let Some(id) = self.meta.id.take() else { return Ok(()) };
        let mut v = String::from("{\"status\":\"END\",\"id\":");
        json_string(&id, &mut v);
        let _ = write!(
            v,
            ",\"ts_ms\":{},\"event_count\":{},\"data_collections\":[",
            self.txn.2.div_euclid(1000),
            self.meta.total
        );
        for (i, (table, n)) in std::mem::take(&mut self.meta.per_table).iter().enumerate() {
            if i > 0 {
                v.push(',');
            }
            v.push_str("{\"data_collection\":");
            json_string(table, &mut v);
            let _ = write!(v, ",\"event_count\":{n}}}");
        }
        v.push_str("]}");
        self.meta.total = 0;
        self.send_metadata(&id, &v)
    }

    /// A message of the transaction-metadata topic, keyed by the transaction's ID.
    fn send_metadata(&mut self, id: &str, value: &str) -> Result<()> {
        let topic = format!("{}.transaction", self.options.topic_prefix);
        self.ensure_topic(&topic)?;
        let mut key = String::from("{\"id\":");
        json_string(id, &mut key);
        key.push('}');
        let headers = self.headers(0);
        if self.options.schemas {
            let key = format!("{{\"schema\":{TXN_KEY_SCHEMA},\"payload\":{key}}}");
            let value = format!("{{\"schema\":{TXN_VALUE_SCHEMA},\"payload\":{value}}}");
            return self.send(&topic, Some(key.as_bytes()), Some(value.as_bytes()), headers);
        }
        self.send(&topic, Some(key.as_bytes()), Some(value.as_bytes()), headers)
    }

    /// The key and envelope schemas of `relation`'s table (built once per table layout).
    fn schemas_of(&mut self, relation: &wal2arrow_consumer::Relation) -> Arc<TableSchemas> {
        if let Some(s) = self.schemas.get(&relation.qualified_name)
            && (Arc::ptr_eq(&s.of, &relation.schema) || s.of == relation.schema)
        {
            return s.clone();
        }
        let built = Arc::new(table_schemas(
            &format!("{}.{}", self.options.topic_prefix, relation.qualified_name),
            relation,
        ));
        self.schemas.insert(relation.qualified_name.clone(), built.clone());
        built
    }
}

/// The envelope's `source` block of one table's events in one transaction, written once but
/// for each event's position (`sequence`, `lsn`) and `snapshot`.
struct Source {
    /// Up to `"snapshot":"`.
    head: String,
    /// From the snapshot flag's closing quote up to the position in `sequence`.
    middle: String,
    /// From after the position in `sequence` up to `"lsn":`.
    tail: String,
}

impl Source {
    fn new(sink: &KafkaSink, relation: &wal2arrow_consumer::Relation) -> Source {
        let (xid, _, time) = sink.txn;
        let mut head = String::from(",\"source\":{\"version\":\"wal2arrow-");
        head.push_str(env!("CARGO_PKG_VERSION"));
        head.push_str("\",\"connector\":\"postgresql\",\"name\":");
        json_string(&sink.options.topic_prefix, &mut head);
        let _ = write!(head, ",\"ts_ms\":{},\"snapshot\":\"", time.div_euclid(1000));
        let mut middle = String::from("\",\"db\":");
        json_string(&sink.options.database, &mut middle);
        middle.push_str(",\"sequence\":\"[null,\\\"");
        let mut tail = String::from("\\\"]\",\"schema\":");
        json_string(&relation.namespace, &mut tail);
        tail.push_str(",\"table\":");
        json_string(&relation.name, &mut tail);
        let _ = write!(tail, ",\"txId\":{xid},\"lsn\":");
        Source { head, middle, tail }
    }

    /// The block of an event at `lsn`.
    fn write(&self, v: &mut String, lsn: u64, snapshot: bool) {
        v.push_str(&self.head);
        v.push_str(if snapshot { "true" } else { "false" });
        v.push_str(&self.middle);
        let _ = write!(v, "{}", Lsn(lsn));
        v.push_str(&self.tail);
        v.push_str(itoa(lsn).as_str());
        v.push_str(",\"xmin\":null}");
    }
}

/// The values of the headers every message of a transaction's batch carries.
struct HeaderValues {
    commit_lsn: String,
    ordinal: String,
    xid: String,
    time: String,
}

impl HeaderValues {
    fn new((xid, commit_lsn, time): (u32, Lsn, i64), ordinal: u32) -> HeaderValues {
        HeaderValues {
            commit_lsn: commit_lsn.to_string(),
            ordinal: ordinal.to_string(),
            xid: xid.to_string(),
            time: time.to_string(),
        }
    }

    /// The headers, with room for `more`.
    fn headers(&self, more: usize) -> OwnedHeaders {
        OwnedHeaders::new_with_capacity(4 + more)
            .insert(Header { key: "wal2arrow.commit_lsn", value: Some(self.commit_lsn.as_bytes()) })
            .insert(Header { key: "wal2arrow.ordinal", value: Some(self.ordinal.as_bytes()) })
            .insert(Header { key: "wal2arrow.xid", value: Some(self.xid.as_bytes()) })
            .insert(Header { key: "wal2arrow.commit_time_us", value: Some(self.time.as_bytes()) })
    }
}

impl Sink for KafkaSink {
    fn durable(&self) -> Durable {
        self.durable
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::Begin(b) => {
                self.txn = (b.xid, b.commit_lsn, b.commit_time_us);
                self.meta = TxnMeta::default();
                Ok(())
            }
            Event::Commit(c) => {
                self.end_transaction()?;
                self.last_commit = c.commit_lsn;
                self.last_ack = self.last_ack.max(c.end_lsn);
                Ok(())
            }
            Event::Message(m) if !m.transactional => {
                self.last_ack = self.last_ack.max(m.ack_lsn());
                Ok(())
            }
            Event::Change(c) => {
                self.txn = (c.xid, c.commit_lsn, c.commit_time_us);
                match self.options.format {
                    KafkaFormat::Debezium => self.write_debezium(c),
                    KafkaFormat::Arrow => self.write_arrow(c),
                }
            }
            Event::Truncate(t) if self.options.format == KafkaFormat::Debezium => {
                for relation in &t.relations {
                    let topic = self.options.topic(&relation.namespace, &relation.name);
                    self.ensure_topic(&topic)?;
                    let mut v = String::new();
                    if self.options.schemas {
                        let schemas = self.schemas_of(relation);
                        v.push_str("{\"schema\":");
                        v.push_str(&schemas.envelope);
                        v.push_str(",\"payload\":");
                    }
                    v.push_str("{\"before\":null,\"after\":null");
                    Source::new(self, relation).write(&mut v, t.commit_lsn.0, false);
                    let _ = write!(v, ",\"op\":\"t\",\"ts_ms\":{},\"transaction\":", now_ms());
                    self.transaction_block(&relation.qualified_name, &mut v)?;
                    v.push('}');
                    if self.options.schemas {
                        v.push('}');
                    }
                    let headers = self.headers(t.ordinal);
                    self.send(&topic, None, Some(v.as_bytes()), headers)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn wants_flush(&self) -> bool {
        self.since_flush.is_some_and(|t| t.elapsed() >= Duration::from_millis(200))
            || self.unflushed >= 100_000
    }

    fn flush(&mut self) -> Result<()> {
        if self.options.transactional_id.is_some() {
            return if self.txn_open { self.commit_transaction() } else { Ok(()) };
        }
        let started = Instant::now();
        // Since when the broker answers again while messages stay unacknowledged.
        let mut answering_since: Option<Instant> = None;
        loop {
            match self.producer.flush(Duration::from_secs(10)) {
                Ok(()) => break,
                Err(KafkaError::Flush(_)) => {
                    tracing::warn!(
                        waiting = ?started.elapsed(),
                        in_flight = self.producer.in_flight_count(),
                        "the Kafka broker has not acknowledged every message yet (is it up?); \
                         nothing after them is acknowledged to PostgreSQL until it has"
                    );
                    let answers =
                        self.producer.client().fetch_metadata(None, Duration::from_secs(2)).is_ok();
                    match (answers, answering_since) {
                        (false, _) => answering_since = None,
                        (true, None) => answering_since = Some(Instant::now()),
                        (true, Some(t)) if t.elapsed() >= STUCK_AFTER => {
                            let n = self.producer.in_flight_count();
                            self.producer.purge(
                                rdkafka::producer::PurgeConfig::default().queue().inflight(),
                            );
                            return Err(kafka_error(
                                None,
                                format!(
                                    "the broker answers again but has not acknowledged the {n} \
                                     messages sent before it went away for {STUCK_AFTER:?} (did it \
                                     lose its state?): stopping. Nothing after the last transaction \
                                     it acknowledged was acknowledged to PostgreSQL: the next run \
                                     sends it again"
                                ),
                            ));
                        }
                        (true, Some(_)) => {}
                    }
                    // A broker that came back may have lost its topics (one that keeps them in
                    // memory): make sure they exist, or the messages wait for them forever.
                    let topics: Vec<String> = self.topics.drain().collect();
                    for t in &topics {
                        if let Err(e) = self.ensure_topic(t) {
                            tracing::warn!(topic = %t, error = %e, "cannot check the topic");
                            self.topics.insert(t.clone());
                        }
                    }
                }
                Err(e) => return Err(kafka_error(None, e)),
            }
        }
        self.flushed()
    }

    fn rollback(&mut self) -> Result<bool> {
        if self.options.transactional_id.is_none() {
            return Ok(false);
        }
        if self.txn_open {
            self.txn_open = false;
            self.producer
                .abort_transaction(Duration::from_secs(30))
                .map_err(|e| self.transaction_error("abort", e))?;
        }
        self.last_commit = self.durable.commit_lsn;
        self.last_ack = self.durable.ack_lsn;
        self.meta = TxnMeta::default();
        self.since_flush = None;
        self.unflushed = 0;
        Ok(true)
    }
}

/// A Kafka transaction's error, saying what it means.
fn transaction_error(id: &str, what: &str, e: KafkaError) -> Error {
    let fenced = matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
    Error::Kafka(if fenced {
        format!(
            "kafka: cannot {what} a transaction of transactional.id {id}: {e} — another \
             producer with this transactional.id took over (is a second stream running on this \
             slot?), or the broker ended the transaction; nothing after the last committed one \
             was acknowledged to PostgreSQL: the next run writes it again"
        )
    } else {
        format!(
            "kafka: cannot {what} a transaction of transactional.id {id}: {e} — the open \
             transaction is aborted and nothing after the last committed one was acknowledged \
             to PostgreSQL: the next run writes it again"
        )
    })
}

/// Registers the transactional producer with the broker (fencing an earlier one with the same
/// ID, whose open transaction is aborted), waiting for a broker that is down.
fn init_transactions(producer: &ThreadedProducer<Deliveries>, id: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        match producer.init_transactions(Duration::from_secs(10)) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                tracing::warn!(waiting = ?started.elapsed(), error = %e, transactional_id = id,
                    "the Kafka broker does not answer; retrying");
            }
            Err(e) => {
                return Err(Error::Kafka(format!(
                    "kafka: cannot start transactions with transactional.id {id}: {e} (does the \
                     broker support transactions, and may this client use the ID? Without \
                     --kafka-transactions the stream is at-least-once)"
                )));
            }
        }
    }
}

/// What the last committed Kafka transaction of `id` recorded on the offsets topic (read
/// `read_committed`); nothing if the topic or the record is not there.
fn read_offsets(options: &KafkaOptions, id: &str) -> Result<Durable> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let topic = options.offsets_topic();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", format!("{id}.offsets"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    for (k, v) in &options.properties {
        if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
            config.set(k, v);
        }
    }
    let consumer: BaseConsumer =
        config.create().map_err(|e| kafka_error(Some(&topic), format!("a reader: {e}")))?;
    let started = Instant::now();
    let mut warned = Instant::now();
    let partitions = loop {
        match consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
            Ok(md) => match md.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() => break t.partitions().len(),
                _ => break 0,
            },
            Err(e) => {
                if warned.elapsed() >= Duration::from_secs(10) {
                    tracing::warn!(topic, error = %e, waited = ?started.elapsed(),
                        "the Kafka broker does not answer; retrying");
                    warned = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    let mut durable = Durable::default();
    if partitions == 0 {
        return Ok(durable);
    }
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        assignment
            .add_partition_offset(&topic, p, Offset::Beginning)
            .map_err(|e| kafka_error(Some(&topic), e))?;
    }
    consumer.assign(&assignment).map_err(|e| kafka_error(Some(&topic), e))?;
    let mut at_end = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while at_end.len() < partitions {
        match consumer.poll(Duration::from_secs(1)) {
            Some(Ok(m)) if m.key() == Some(id.as_bytes()) => {
                let value = m.payload().and_then(|v| std::str::from_utf8(v).ok()).unwrap_or("");
                // Our own records: string fields without escapes in the values read here.
                let field = |name: &str| -> Option<&str> {
                    let start = value.find(&format!("\"{name}\":\""))? + name.len() + 4;
                    value[start..].split('"').next()
                };
                let lsn = |name: &str| field(name).and_then(|v| v.parse::<Lsn>().ok());
                match (lsn("commit_lsn"), lsn("ack_lsn"), field("source")) {
                    (Some(commit_lsn), Some(ack_lsn), source) => {
                        let mut ours = String::from("\"source\":");
                        json_string(&options.source, &mut ours);
                        if let Some(source) = source
                            && !options.source.is_empty()
                            && !value.contains(&ours)
                        {
                            return Err(kafka_error(
                                Some(&topic),
                                format!(
                                    "the position recorded under transactional.id {id} is of \
                                     another PostgreSQL source ({source}, this stream reads \
                                     {}): its positions mean nothing here. Use another \
                                     transactional.id (--kafka-property transactional.id=…) or \
                                     --topic-prefix",
                                    options.source
                                ),
                            ));
                        }
                        durable = Durable { commit_lsn, ack_lsn };
                    }
                    _ => {
                        return Err(kafka_error(
                            Some(&topic),
                            format!(
                                "a record keyed {id} that is not wal2arrow's: {value:?} — use \
                                 another transactional.id (--kafka-property transactional.id=…) \
                                 or --topic-prefix"
                            ),
                        ));
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => tracing::warn!(topic, error = %e, "reading the offsets topic"),
            None if Instant::now() > deadline => {
                return Err(kafka_error(
                    Some(&topic),
                    "could not read it to its end in 120 s: the position Kafka holds is unknown",
                ));
            }
            None => {}
        }
    }
    Ok(durable)
}

/// Kafka Connect's schema of Debezium's `source` block (PostgreSQL connector).
const SOURCE_SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"version"},{"type":"string","optional":false,"field":"connector"},{"type":"string","optional":false,"field":"name"},{"type":"int64","optional":false,"field":"ts_ms"},{"type":"string","optional":true,"name":"io.debezium.data.Enum","version":1,"parameters":{"allowed":"true,last,false,incremental"},"default":"false","field":"snapshot"},{"type":"string","optional":false,"field":"db"},{"type":"string","optional":true,"field":"sequence"},{"type":"string","optional":false,"field":"schema"},{"type":"string","optional":false,"field":"table"},{"type":"int64","optional":true,"field":"txId"},{"type":"int64","optional":true,"field":"lsn"},{"type":"int64","optional":true,"field":"xmin"}],"optional":false,"name":"io.debezium.connector.postgresql.Source","field":"source"}"#;

/// The schema of an event's `transaction` block.
const BLOCK_SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"id"},{"type":"int64","optional":false,"field":"total_order"},{"type":"int64","optional":false,"field":"data_collection_order"}],"optional":true,"name":"event.block","version":1,"field":"transaction"}"#;

/// The schemas of the transaction-metadata topic's keys and values.
const TXN_KEY_SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"id"}],"optional":false,"name":"io.debezium.connector.common.TransactionMetadataKey"}"#;
const TXN_VALUE_SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"status"},{"type":"string","optional":false,"field":"id"},{"type":"int64","optional":true,"field":"event_count"},{"type":"array","items":{"type":"struct","fields":[{"type":"string","optional":false,"field":"data_collection"},{"type":"int64","optional":false,"field":"event_count"}],"optional":false},"optional":true,"field":"data_collections"},{"type":"int64","optional":false,"field":"ts_ms"}],"optional":false,"name":"io.debezium.connector.common.TransactionMetadataValue"}"#;

/// A table's key schema (`<name>.Key`: the key's columns) and envelope schema
/// (`<name>.Envelope`, whose `before` and `after` are `<name>.Value`), `name` being
/// `<prefix>.<schema>.<table>`.
fn table_schemas(name: &str, relation: &wal2arrow_consumer::Relation) -> TableSchemas {
    let fields = &relation.schema.fields()[..relation.table_columns()];
    let key_names = if relation.primary_key.is_empty() {
        &relation.identity_key
    } else {
        &relation.primary_key
    };
    let mut key = String::from(r#"{"type":"struct","fields":["#);
    let mut first = true;
    for f in fields.iter().filter(|f| key_names.contains(f.name())) {
        if !std::mem::take(&mut first) {
            key.push(',');
        }
        column_schema(f.data_type(), typname(f), false, Some(f.name()), &mut key);
    }
    key.push_str(r#"],"optional":false,"name":"#);
    json_string(&format!("{name}.Key"), &mut key);
    key.push('}');
    let value = |field: &str, out: &mut String| {
        out.push_str(r#"{"type":"struct","fields":["#);
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            column_schema(f.data_type(), typname(f), f.is_nullable(), Some(f.name()), out);
        }
        out.push_str(r#"],"optional":true,"name":"#);
        json_string(&format!("{name}.Value"), out);
        let _ = write!(out, r#","field":"{field}"}}"#);
    };
    let mut envelope = String::from(r#"{"type":"struct","fields":["#);
    value("before", &mut envelope);
    envelope.push(',');
    value("after", &mut envelope);
    envelope.push(',');
    envelope.push_str(SOURCE_SCHEMA);
    envelope.push_str(concat!(
        r#","#,
        r#"{"type":"string","optional":false,"field":"op"},"#,
        r#"{"type":"int64","optional":true,"field":"ts_ms"},"#,
        r#"{"type":"array","items":{"type":"string","optional":false},"optional":true,"field":"missing"},"#,
        r#"{"type":"array","items":{"type":"string","optional":false},"optional":true,"field":"unrepresentable"},"#,
    ));
    envelope.push_str(BLOCK_SCHEMA);
    envelope.push_str(r#"],"optional":false,"name":"#);
    json_string(&format!("{name}.Envelope"), &mut envelope);
    envelope.push_str(r#","version":1}"#);
    TableSchemas { of: relation.schema.clone(), key, envelope }
}

fn typname(field: &arrow_schema::Field) -> Option<&str> {
    field.metadata().get(TYPNAME).map(String::as_str)
}

/// Kafka Connect's schema of a column (or, without `field`, an array's items) as the
/// [`Renderer`] writes its values: the Connect type and Debezium's logical type name.
fn column_schema(
    data_type: &DataType,
    typname: Option<&str>,
    optional: bool,
    field: Option<&str>,
    out: &mut String,
) {
    let (ty, name) = match data_type {
        DataType::Int64 if typname == Some("money") => ("string", None),
        DataType::Struct(_) if typname == Some("timetz") => {
            ("string", Some("io.debezium.time.ZonedTime"))
        }
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => ("int16", None),
        DataType::Int32 | DataType::UInt16 => ("int32", None),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => ("int64", None),
        DataType::Float16 | DataType::Float32 => ("float", None),
        DataType::Float64 => ("double", None),
        DataType::Boolean => ("boolean", None),
        DataType::Date32 => ("int32", Some("io.debezium.time.Date")),
        DataType::Time64(_) => ("int64", Some("io.debezium.time.MicroTime")),
        DataType::Timestamp(_, None) => ("int64", Some("io.debezium.time.MicroTimestamp")),
        DataType::Timestamp(_, Some(_)) => ("string", Some("io.debezium.time.ZonedTimestamp")),
        DataType::Interval(_) => ("int64", Some("io.debezium.time.MicroDuration")),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => ("bytes", None),
        DataType::FixedSizeBinary(16) => ("string", Some("io.debezium.data.Uuid")),
        DataType::List(item) => {
            out.push_str(r#"{"type":"array","items":"#);
            column_schema(item.data_type(), self::typname(item), true, None, out);
            let _ = write!(out, r#","optional":{optional}"#);
            if let Some(f) = field {
                out.push_str(r#","field":"#);
                json_string(f, out);
            }
            out.push('}');
            return;
        }
        _ => match typname {
            Some("json" | "jsonb") => ("string", Some("io.debezium.data.Json")),
            Some("xml") => ("string", Some("io.debezium.data.Xml")),
            _ => ("string", None),
        },
    };
    let _ = write!(out, r#"{{"type":"{ty}","optional":{optional}"#);
    if let Some(n) = name {
        let _ = write!(out, r#","name":"{n}","version":1"#);
    }
    if let Some(f) = field {
        out.push_str(r#","field":"#);
        json_string(f, out);
    }
    out.push('}');
}

/// `transaction.timeout.ms` unless given: Kafka brokers' default `transaction.max.timeout.ms`
/// (15 minutes).
const TRANSACTION_TIMEOUT_MS: &str = "900000";

/// How long a flush waits for a broker that answers again but does not acknowledge the
/// messages sent before it went away.
const STUCK_AFTER: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The batch as an Arrow IPC stream: its schema, then it.
fn ipc_stream(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())
        .map_err(Error::Arrow)?;
    w.write(batch).map_err(Error::Arrow)?;
    w.finish().map_err(Error::Arrow)?;
    drop(w);
    Ok(out)
}

/// Writes one column's values in Debezium's JSON encodings.
enum Renderer<'a> {
    /// `UInt64`: its text is JSON.
    Plain(&'a dyn Array, ArrayFormatter<'a>),
    /// Booleans.
    Bool(&'a arrow_array::BooleanArray),
    /// Text as a JSON string.
    Str(&'a arrow_array::StringArray),
    /// Floats: numbers, NaN and infinities as strings.
    Float(&'a dyn Array, ArrayFormatter<'a>),
    /// Shown as a JSON string.
    Text(&'a dyn Array, ArrayFormatter<'a>),
    /// Integers, `Date32` (days) and microsecond times without a zone: the integer.
    Int64(&'a dyn Array, Vec<i64>),
    /// `timestamptz`: ISO 8601 UTC.
    Zoned(&'a arrow_array::TimestampMicrosecondArray),
    /// Exact decimals as their text.
    Decimal(&'a arrow_array::Decimal128Array, u8, i8),
    /// Intervals as microseconds (months of 30.4375 days).
    Interval(&'a arrow_array::IntervalMonthDayNanoArray),
    /// Binary as base64.
    Binary(&'a dyn Array),
    /// UUIDs as text.
    Uuid(&'a arrow_array::FixedSizeBinaryArray),
    /// Lists as JSON arrays.
    List(&'a arrow_array::ListArray, FormatOptions<'a>),
    /// `money` (cents) as its exact text with two decimals, as `decimal.handling.mode=string`.
    Money(&'a arrow_array::Int64Array),
    /// `timetz` (local time and offset east of UTC) as Debezium's `ZonedTime`: the time in UTC,
    /// `HH:MM:SS.ffffffZ`.
    ZonedTime(&'a arrow_array::StructArray),
}

impl<'a> Renderer<'a> {
    /// The renderer of `array`, whose PostgreSQL type is `typname` (field metadata).
    fn new(
        array: &'a ArrayRef,
        typname: Option<&str>,
        options: &FormatOptions<'a>,
    ) -> std::result::Result<Self, arrow_schema::ArrowError> {
        Ok(match array.data_type() {
            DataType::Int64 if typname == Some("money") => {
                Renderer::Money(array.as_primitive::<arrow_array::types::Int64Type>())
            }
            DataType::Struct(_) if typname == Some("timetz") => {
                Renderer::ZonedTime(array.as_struct())
            }
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => {
                let values = arrow_cast::cast(array, &DataType::Int64)?;
                let values = values.as_primitive::<arrow_array::types::Int64Type>();
                Renderer::Int64(array.as_ref(), values.values().to_vec())
            }
            DataType::UInt64 => {
                Renderer::Plain(array.as_ref(), ArrayFormatter::try_new(array.as_ref(), options)?)
            }
            DataType::Boolean => Renderer::Bool(array.as_boolean()),
            DataType::Utf8 => Renderer::Str(array.as_string::<i32>()),
            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                Renderer::Float(array.as_ref(), ArrayFormatter::try_new(array.as_ref(), options)?)
            }
            DataType::Date32 => {
                let values = array.as_primitive::<arrow_array::types::Date32Type>().values();
                Renderer::Int64(array.as_ref(), values.iter().map(|v| i64::from(*v)).collect())
            }
            DataType::Time64(TimeUnit::Microsecond) => {
                let values = array.as_primitive::<arrow_array::types::Time64MicrosecondType>();
                Renderer::Int64(array.as_ref(), values.values().to_vec())
            }
            DataType::Timestamp(TimeUnit::Microsecond, None) => {
                let values = array.as_primitive::<arrow_array::types::TimestampMicrosecondType>();
                Renderer::Int64(array.as_ref(), values.values().to_vec())
            }
            DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => Renderer::Zoned(
                array.as_primitive::<arrow_array::types::TimestampMicrosecondType>(),
            ),
            DataType::Decimal128(p, s) => {
                Renderer::Decimal(array.as_primitive::<Decimal128Type>(), *p, *s)
            }
            DataType::Interval(arrow_schema::IntervalUnit::MonthDayNano) => {
                Renderer::Interval(array.as_primitive::<IntervalMonthDayNanoType>())
            }
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                Renderer::Binary(array.as_ref())
            }
            DataType::FixedSizeBinary(16) => Renderer::Uuid(array.as_fixed_size_binary()),
            DataType::List(_) => Renderer::List(array.as_list::<i32>(), options.clone()),
            _ => Renderer::Text(array.as_ref(), ArrayFormatter::try_new(array.as_ref(), options)?),
        })
    }

    fn array(&self) -> &dyn Array {
        match self {
            Renderer::Plain(a, _) | Renderer::Float(a, _) | Renderer::Text(a, _) => *a,
            Renderer::Bool(a) => *a,
            Renderer::Str(a) => *a,
            Renderer::Int64(a, _) | Renderer::Binary(a) => *a,
            Renderer::Zoned(a) => *a,
            Renderer::Decimal(a, ..) => *a,
            Renderer::Interval(a) => *a,
            Renderer::Uuid(a) => *a,
            Renderer::List(a, _) => *a,
            Renderer::Money(a) => *a,
            Renderer::ZonedTime(a) => *a,
        }
    }

    fn write(&self, r: usize, out: &mut String) {
        if self.array().is_null(r) {
            out.push_str("null");
            return;
        }
        match self {
            Renderer::Plain(_, f) => {
                let _ = write!(out, "{}", f.value(r));
            }
            Renderer::Bool(a) => out.push_str(if a.value(r) { "true" } else { "false" }),
            Renderer::Str(a) => json_string(a.value(r), out),
            Renderer::Float(a, f) => {
                let v = match a.data_type() {
                    DataType::Float16 => a.as_primitive::<Float16Type>().value(r).to_f64(),
                    DataType::Float32 => f64::from(a.as_primitive::<Float32Type>().value(r)),
                    _ => a.as_primitive::<Float64Type>().value(r),
                };
                if v.is_nan() {
                    out.push_str("\"NaN\"");
                } else if v.is_infinite() {
                    out.push_str(if v > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" });
                } else {
                    let _ = write!(out, "{}", f.value(r));
                }
            }
            Renderer::Text(_, f) => json_string(&f.value(r).to_string(), out),
            Renderer::Int64(_, v) => push_int(v[r], out),
            Renderer::Zoned(a) => match a.value(r) {
                i64::MAX => out.push_str("\"infinity\""),
                i64::MIN => out.push_str("\"-infinity\""),
                us => {
                    out.push('"');
                    push_iso_micros(us, out);
                    out.push('"');
                }
            },
            Renderer::Decimal(a, p, s) => {
                json_string(&Decimal128Type::format_decimal(a.value(r), *p, *s), out)
            }
            Renderer::Interval(a) => {
                let _ = write!(out, "{}", micro_duration(a.value(r)));
            }
            Renderer::Binary(a) => {
                let bytes: &[u8] = match a.data_type() {
                    DataType::LargeBinary => a.as_binary::<i64>().value(r),
                    DataType::BinaryView => a.as_binary_view().value(r),
                    _ => a.as_binary::<i32>().value(r),
                };
                out.push('"');
                push_base64(bytes, out);
                out.push('"');
            }
            Renderer::Uuid(a) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push('"');
                for (i, byte) in a.value(r).iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        out.push('-');
                    }
                    out.push(HEX[usize::from(byte >> 4)] as char);
                    out.push(HEX[usize::from(byte & 15)] as char);
                }
                out.push('"');
            }
            Renderer::Money(a) => {
                json_string(&Decimal128Type::format_decimal(i128::from(a.value(r)), 20, 2), out)
            }
            Renderer::ZonedTime(a) => {
                let time = a.column(0).as_primitive::<arrow_array::types::Time64MicrosecondType>();
                let offset = a.column(1).as_primitive::<arrow_array::types::Int32Type>();
                json_string(&utc_time(time.value(r), offset.value(r)), out);
            }
            Renderer::List(list, options) => {
                let items = list.value(r);
                let typname = match list.data_type() {
                    DataType::List(item) => item.metadata().get(TYPNAME).map(String::as_str),
                    _ => None,
                };
                out.push('[');
                match Renderer::new(&items, typname, options) {
                    Ok(inner) => {
                        for i in 0..items.len() {
                            if i > 0 {
                                out.push(',');
                            }
                            inner.write(i, out);
                        }
                    }
                    Err(_) => out.push_str("null"),
                }
                out.push(']');
            }
        }
    }
}

/// Microseconds since 1970 as ISO 8601 UTC with six decimals (`1970-01-01T00:00:00.000000Z`),
/// the year as chrono's `%Y` writes it: four digits from 0 to 9999, signed outside (`+10000`,
/// `-0001`; ISO 8601's expanded years). Every `timestamptz` PostgreSQL holds (4713 BC to
/// 294276 AD) has a form.
fn push_iso_micros(us: i64, out: &mut String) {
    const DAY_US: i64 = 86_400_000_000;
    let (days, time) = (us.div_euclid(DAY_US), us.rem_euclid(DAY_US));
    let (year, month, day) = wal2arrow_schema::types::civil_from_days(days);
    if (0..10_000).contains(&year) {
        let _ = write!(out, "{year:04}");
    } else {
        let _ = write!(out, "{year:+05}");
    }
    let (secs, frac) = (time / 1_000_000, time % 1_000_000);
    let _ = write!(
        out,
        "-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

/// `field` (`,"name":`) and `names` as a JSON array of strings; nothing when there are none.
fn name_list(field: &str, names: &[String], out: &mut String) {
    if names.is_empty() {
        return;
    }
    out.push_str(field);
    out.push('[');
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(name, out);
    }
    out.push(']');
}

/// An interval as Debezium's `MicroDuration`: microseconds, a month being 30.4375 days
/// (exactly: integer arithmetic), kept within the int64 range.
fn micro_duration(v: arrow_buffer::IntervalMonthDayNano) -> i64 {
    const MONTH_US: i128 = 2_629_800_000_000; // 30.4375 × 86,400 × 10^6
    const DAY_US: i128 = 86_400_000_000;
    let us = i128::from(v.months) * MONTH_US
        + i128::from(v.days) * DAY_US
        + i128::from(v.nanoseconds).div_euclid(1000);
    us.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// A `timetz` (microseconds since midnight, `offset` seconds east of UTC) as the time in UTC,
/// `HH:MM:SS.ffffffZ`.
fn utc_time(local_us: i64, offset: i32) -> String {
    const DAY: i64 = 86_400_000_000;
    let us = (local_us - i64::from(offset) * 1_000_000).rem_euclid(DAY);
    let (s, frac) = (us / 1_000_000, us % 1_000_000);
    format!("{:02}:{:02}:{:02}.{frac:06}Z", s / 3600, s / 60 % 60, s % 60)
}

/// `bytes` in base64 (RFC 4648, padded).
fn push_base64(bytes: &[u8], out: &mut String) {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.reserve(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
}

/// `n` in decimal.
fn push_int(n: i64, out: &mut String) {
    if n < 0 {
        out.push('-');
    }
    out.push_str(itoa(n.unsigned_abs()).as_str());
}

/// An unsigned integer's decimal digits, without allocating.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[self.start..]).expect("ASCII digits")
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa(mut n: u64) -> Digits {
    let mut d = Digits { buf: [0; 20], start: 20 };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_times_match_their_standards() {
        let base64 = |b: &[u8]| {
            let mut s = String::new();
            push_base64(b, &mut s);
            s
        };
        let iso_micros = |us| {
            let mut s = String::new();
            push_iso_micros(us, &mut s);
            s
        };
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xde, 0xad, 0xbe, 0xef]), "3q2+7w==");
        assert_eq!(iso_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(iso_micros(1_700_000_000_123_456), "2023-11-14T22:13:20.123456Z");
        // As chrono writes them, across eras, leap days and the ends of PostgreSQL's range.
        for us in [
            -1,
            -86_400_000_000,
            951_782_400_000_000,      // 2000-02-29
            -62_135_596_800_000_001,  // just before 0001-01-01
            -62_167_219_200_000_000,  // 0000-01-01
            -210_866_803_200_000_000, // 4714-11-24 BC, PostgreSQL's first day
            253_402_300_799_999_999,  // 9999-12-31 23:59:59.999999
            253_402_300_800_000_000,  // 10000-01-01
            4_102_444_800_000_000 + 1_234_567,
        ] {
            let chrono = chrono::DateTime::from_timestamp_micros(us).expect("in chrono's range");
            assert_eq!(iso_micros(us), chrono.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(), "{us}");
        }
        // Beyond chrono's years (to 262143), which PostgreSQL's reach (to 294276).
        assert_eq!(iso_micros(9_089_380_483_199_999_999), "+290000-12-31T23:59:59.999999Z");
        let mut n = String::new();
        for v in [0, 7, -7, 10, i64::MAX, i64::MIN] {
            n.clear();
            push_int(v, &mut n);
            assert_eq!(n, v.to_string());
        }
        // 13:45:59.5+05:30 and 00:00:00-15:59.
        assert_eq!(utc_time(49_559_500_000, 19_800), "08:15:59.500000Z");
        assert_eq!(utc_time(0, -57_540), "15:59:00.000000Z");
        assert_eq!(utc_time(3_600_000_000, 7_200), "23:00:00.000000Z");
        let interval = |months, days, nanoseconds| {
            micro_duration(arrow_buffer::IntervalMonthDayNano { months, days, nanoseconds })
        };
        assert_eq!(interval(1, 1, 1_000), 2_629_800_000_000 + 86_400_000_000 + 1);
        assert_eq!(interval(-2_136_000_000, 0, 0), i64::MIN, "kept within int64");
    }
}
