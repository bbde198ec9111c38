"""The chaos suite's traffic: a Python product team producing notifications.

confluent-kafka and fastavro, nothing of Herald's; single-object framing,
keyed by user id with the Java client's partitioner (murmur2_random), as the
producer contract says. COUNT unique events at RATE per second, each for two
channels: even events for email and push (the user's one device, APNs for
every fourth user, FCM otherwise), odd ones for SMS and a webhook; every
tenth event is sent a second time (a duplicate: same idempotency key); one
record in a hundred is garbage (not Avro). The test
(`tests/e2e/chaos.rs`) computes the expected notifications by the same
rules.
Prints a JSON manifest of what it produced on its last line.

usage: chaos_producer.py BOOTSTRAP TOPIC SCHEMA_FILE COUNT RATE WEBHOOK_URL
"""
import io
import json
import struct
import sys
import time

import fastavro
from confluent_kafka import Producer

from produce_notification import crc64_avro


def channels(n: int) -> list:
    return ["EMAIL", "PUSH"] if n % 2 == 0 else ["SMS", "WEBHOOK"]


def event(n: int, webhook_url: str) -> dict:
    u = n % 50
    return {
        "idempotency_key": f"chaos-{n}",
        "tenant": "chaos-team",
        "user_id": f"user-{u}",
        "category": "order_update",
        "priority": ["URGENT", "NORMAL", "BULK"][n % 3],
        "channels": channels(n),
        "content": {
            "push": {"title": f"Order {n}", "body": f"Order {n} shipped", "data": {"order": str(n)}},
            "sms": {"body": f"Order {n} shipped"},
            "email": {"subject": f"Order {n}", "text": f"Order {n} shipped", "html": None},
            "webhook": {"event_type": "order.shipped", "payload_json": json.dumps({"order": n})},
        },
        "template": None,
        "recipients": {
            "devices": [{"token": f"{u:064x}", "platform": "APNS" if u % 4 == 0 else "FCM"}],
            "phone": f"+1415555{u:04d}",
            "email": f"user{u}@example.test",
            "webhook_url": webhook_url,
        },
        "created_at": int(time.time() * 1000),
        "expires_at": None,
        "trace": None,
    }


def main() -> None:
    bootstrap, topic, schema_file, count, rate, webhook_url = sys.argv[1:7]
    count, rate = int(count), float(rate)
    with open(schema_file) as f:
        raw = json.load(f)
    schema = fastavro.parse_schema(raw)
    canonical = fastavro.schema.to_parsing_canonical_form(raw).encode()
    header = b"\xc3\x01" + struct.pack("<Q", crc64_avro(canonical))
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            # Through broker restarts: keep retrying for up to two minutes.
            "message.timeout.ms": 120000,
        }
    )
    failed = []
    done = lambda err, msg: failed.append(str(err)) if err else None
    duplicates = garbage = 0
    start = time.monotonic()
    for n in range(count):
        # Steady rate: wait until this event's turn.
        lag = start + n / rate - time.monotonic()
        if lag > 0:
            time.sleep(lag)
        e = event(n, webhook_url)
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, e)
        value = header + body.getvalue()
        key = e["user_id"].encode()
        producer.produce(topic, key=key, value=value, on_delivery=done)
        if n % 10 == 9:
            producer.produce(topic, key=key, value=value, on_delivery=done)
            duplicates += 1
        if n % 100 == 42:
            producer.produce(topic, key=key, value=b"\x00garbage " + str(n).encode(), on_delivery=done)
            garbage += 1
        producer.poll(0)
    left = producer.flush(180)
    if left or failed:
        raise SystemExit(f"{left} records not delivered; failures: {failed[:5]}")
    print(json.dumps({"unique": count, "duplicates": duplicates, "garbage": garbage}))


if __name__ == "__main__":
    main()
