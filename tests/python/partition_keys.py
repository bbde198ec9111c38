"""Produce keyed records the way a Java-client team and a Python team would.

kafka-python's default partitioner is the Java client's (murmur2 of the key);
confluent-kafka (librdkafka) is given partitioner=murmur2_random, as Herald's
producer contract asks. Both write each key once; the test compares the
partitions they chose with Herald's own producer's. Also prints the
partitions librdkafka's default (CRC32) would have chosen, so the test can
check that the choice matters for these keys.

usage: partition_keys.py BOOTSTRAP JAVA_TOPIC RDKAFKA_TOPIC PARTITIONS COUNT
"""
import json
import sys
import zlib

from confluent_kafka import Producer
from kafka import KafkaProducer


def main() -> None:
    bootstrap, java_topic, rdkafka_topic, partitions, count = sys.argv[1:6]
    keys = [f"user-{n}".encode() for n in range(int(count))]

    java = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key in keys:
        java.send(java_topic, key=key, value=b"java")
    java.flush(30)
    java.close()

    rdkafka = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "partitioner": "murmur2_random"}
    )
    for key in keys:
        rdkafka.produce(rdkafka_topic, key=key, value=b"rdkafka")
    left = rdkafka.flush(30)
    if left:
        raise SystemExit(f"{left} records not delivered")

    crc32 = {k.decode(): zlib.crc32(k) % int(partitions) for k in keys}
    print(json.dumps({"crc32": crc32}))


if __name__ == "__main__":
    main()
