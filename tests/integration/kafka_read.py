"""Reads every message of the given Kafka topics with an independent client (confluent-kafka,
librdkafka), assigning all partitions from offset 0 directly (no group join), and prints one
JSON object per message: topic, partition, offset, key, value (text, or for --arrow the rows
pyarrow decodes from the Arrow IPC stream), headers. Used by tests/integration/kafka.rs.

    python3 kafka_read.py BROKERS TOPIC[,TOPIC…] [--arrow | --raw] [--expect N]

--raw prints each value as base64, for the caller to decode.
"""
import base64
import json
import sys
import time

from confluent_kafka import Consumer, TopicPartition


def main():
    brokers, topics = sys.argv[1], sys.argv[2].split(",")
    arrow = "--arrow" in sys.argv
    raw = "--raw" in sys.argv
    expect = int(sys.argv[sys.argv.index("--expect") + 1]) if "--expect" in sys.argv else None
    c = Consumer({"bootstrap.servers": brokers, "group.id": "wal2arrow-tests",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    md = c.list_topics(timeout=10)
    parts = []
    for t in topics:
        if t not in md.topics or md.topics[t].error is not None:
            print(json.dumps({"missing_topic": t}))
            continue
        parts += [TopicPartition(t, p, 0) for p in md.topics[t].partitions]
    # The end of each partition now: read up to it.
    ends = {}
    for tp in parts:
        low, high = c.get_watermark_offsets(tp, timeout=10)
        ends[(tp.topic, tp.partition)] = high
    c.assign(parts)
    remaining = {k for k, v in ends.items() if v > 0}
    got = 0
    deadline = time.time() + 180
    idle_since = time.time()
    # Up to the ends seen at the start, then on until nothing more comes for 3 s.
    while time.time() < deadline and (remaining or time.time() - idle_since < 3):
        m = c.poll(0.5)
        if m is None:
            # A partition written in Kafka transactions ends with a control record, which is
            # never returned: the consumer's position passes it.
            for tp in c.position([TopicPartition(t, p) for t, p in remaining]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    remaining.discard((tp.topic, tp.partition))
            continue
        idle_since = time.time()
        if m.error():
            continue
        key = (m.topic(), m.partition())
        out = {"topic": m.topic(), "partition": m.partition(), "offset": m.offset(),
               "key": None if m.key() is None else m.key().decode(),
               "headers": {k: v.decode() for k, v in (m.headers() or [])}}
        value = m.value()
        if value is None:
            out["value"] = None
        elif raw:
            out["value"] = base64.b64encode(value).decode()
        elif arrow:
            import pyarrow as pa
            table = pa.ipc.open_stream(value).read_all()
            out["value"] = {"rows": table.num_rows, "columns": table.column_names,
                            "data": json.loads(json.dumps(table.to_pylist(), default=str))}
        else:
            out["value"] = value.decode()
        print(json.dumps(out))
        got += 1
        if m.offset() + 1 >= ends.get(key, 0):
            remaining.discard(key)
    c.close()
    if remaining:
        print(json.dumps({"unread": sorted(f"{t}/{p}" for t, p in remaining)}))


main()
