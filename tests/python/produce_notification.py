"""Produce NotificationRequested events the way a Python product team would.

Uses confluent-kafka for Kafka and fastavro for Avro, nothing of Herald's.
Framings: 'confluent' (0x00 + 4-byte schema id from the registry) or
'single_object' (0xC3 0x01 + CRC-64-AVRO fingerprint, little-endian).

usage: produce_notification.py BOOTSTRAP TOPIC FRAMING SCHEMA_FILE COUNT [SCHEMA_ID]
"""
import io
import json
import struct
import sys

import fastavro
from confluent_kafka import Producer

EMPTY = 0xC15D213AA4D7A795  # CRC-64-AVRO initial value, from the Avro specification


def _table():
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        table.append(fp)
    return table


TABLE = _table()


def crc64_avro(data: bytes) -> int:
    fp = EMPTY
    for b in data:
        fp = (fp >> 8) ^ TABLE[(fp ^ b) & 0xFF]
    return fp


def event(n: int) -> dict:
    return {
        "idempotency_key": f"py-{n}",
        "tenant": "python-team",
        "user_id": f"user-{n % 10}",
        "category": "password_reset",
        "priority": "URGENT",
        "channels": ["SMS", "EMAIL"],
        "content": {
            "push": None,
            "sms": {"body": f"Your code is {n:06d}"},
            "email": {"subject": "Reset your password", "text": f"Code {n:06d}", "html": None},
            "webhook": None,
        },
        "template": None,
        "recipients": {"devices": [], "phone": "+15555550199", "email": f"user{n % 10}@example.com", "webhook_url": None},
        "created_at": 1_790_000_000_000 + n,
        "expires_at": None,
        "trace": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": None},
    }


def main() -> None:
    bootstrap, topic, framing, schema_file, count = sys.argv[1:6]
    with open(schema_file) as f:
        raw = json.load(f)
    schema = fastavro.parse_schema(raw)
    if framing == "confluent":
        header = b"\x00" + struct.pack(">I", int(sys.argv[6]))
    elif framing == "single_object":
        canonical = fastavro.schema.to_parsing_canonical_form(raw).encode()
        header = b"\xc3\x01" + struct.pack("<Q", crc64_avro(canonical))
    else:
        raise SystemExit(f"unknown framing {framing}")
    # murmur2_random: the Java client's partitioner, as the producer contract asks.
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "partitioner": "murmur2_random"}
    )
    for n in range(int(count)):
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, event(n))
        producer.produce(topic, key=event(n)["user_id"].encode(), value=header + body.getvalue())
    left = producer.flush(30)
    if left:
        raise SystemExit(f"{left} records not delivered")
    print(f"produced {count} {framing} records to {topic}")


if __name__ == "__main__":
    main()
