"""Third-party clients against Strata's schema registry (run by server/tests/registry.rs).

usage: registry_client.py SERVER_URL COMPAT_CASES_FILE

1. confluent-kafka's SchemaRegistryClient, pointed at SERVER_URL/registry, unchanged: register,
   get by id, list versions, lookup, test compatibility, change config.
2. Its AvroSerializer produces values that are POSTed as value_b64 to the validated topic
   `payments` (bound to `payments-value`); its AvroDeserializer reads the stored bytes back.
3. The Apache Avro reference checker (PyPI `avro`) decides every `pair` of the data-driven
   compatibility cases the same way Strata's checker does.
"""

import base64
import json
import sys
import urllib.request

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

SERVER = sys.argv[1]
CASES = sys.argv[2]

V1 = json.dumps({
    "type": "record", "name": "Payment", "namespace": "pay",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
})
V2 = json.dumps({
    "type": "record", "name": "Payment", "namespace": "pay",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "channel", "type": "string", "default": "web"},
    ],
})
BAD = json.dumps({
    "type": "record", "name": "Payment", "namespace": "pay",
    "fields": [{"name": "id", "type": "long"}],
})


def http(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(SERVER + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return json.loads(resp.read())


def registry_round_trip():
    client = SchemaRegistryClient({"url": SERVER + "/registry"})
    subject = "payments-value"
    sid = client.register_schema(subject, Schema(V1, "AVRO"))
    assert isinstance(sid, int) and sid > 0, sid
    assert client.register_schema(subject, Schema(V1, "AVRO")) == sid

    fetched = client.get_schema(sid)
    assert fetched.schema_type == "AVRO", fetched.schema_type
    assert json.loads(fetched.schema_str)["name"] == "Payment", fetched.schema_str
    assert client.get_versions(subject) == [1]
    assert subject in client.get_subjects()

    registered = client.lookup_schema(subject, Schema(V1, "AVRO"))
    assert (registered.schema_id, registered.version) == (sid, 1), registered

    assert client.test_compatibility(subject, Schema(V2, "AVRO")) is True
    assert client.test_compatibility(subject, Schema(BAD, "AVRO")) is False
    try:
        client.register_schema(subject, Schema(BAD, "AVRO"))
        raise AssertionError("an incompatible schema was registered")
    except SchemaRegistryError as e:
        assert e.http_status_code == 409 and e.error_code == 409, (e.http_status_code, e.error_code)

    assert client.get_compatibility() == "BACKWARD"
    client.set_compatibility(subject_name=subject, level="FULL")
    assert client.get_compatibility(subject) == "FULL"
    client.set_compatibility(level="BACKWARD")
    latest = client.get_latest_version(subject)
    assert latest.version == 1 and latest.schema_id == sid, latest

    try:
        client.get_schema(987654)
        raise AssertionError("an unknown id was found")
    except SchemaRegistryError as e:
        assert e.error_code == 40403, e.error_code

    # The Avro serializer registers (auto.register.schemas) and frames values.
    serializer = AvroSerializer(client, V1)
    ctx = SerializationContext("payments", MessageField.VALUE)
    values = [
        {"id": "p-1", "amount": 10.5, "note": None},
        {"id": "p-2", "amount": 0.25, "note": None},
        {"id": "p-3", "amount": 99.0, "note": "third"},
    ]
    framed = [serializer(v, ctx) for v in values]
    assert all(f[0] == 0 for f in framed)
    records = [{"value_b64": base64.b64encode(f).decode()} for f in framed]
    http("POST", "/v1/topics/payments/records", {"records": records})

    deserializer = AvroDeserializer(client)
    page = http("GET", "/v1/topics/payments/partitions/0/records?offset=0&encoding=base64")
    back = [deserializer(base64.b64decode(r["value_b64"]), ctx) for r in page["records"]]
    assert back == values, back
    print("ok: registry client round trip")


def reference_checker():
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
    from avro.schema import parse

    schemas, checked, disagree = {}, 0, []
    for line in open(CASES):
        line = line.strip()
        if line.startswith("schema "):
            name, text = line[len("schema "):].split(" = ", 1)
            schemas[name] = parse(text)
        elif line.startswith("pair "):
            words = line.split()
            writer, reader, expected = schemas[words[1]], schemas[words[2]], words[3]
            result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
            got = "compatible" if result.compatibility is SchemaCompatibilityType.compatible else "incompatible"
            checked += 1
            if got != expected:
                disagree.append(f"{line}: the reference checker says {got}")
    assert not disagree, "\n".join(disagree)
    print(f"ok: reference checker agrees on {checked} pairs")


if __name__ == "__main__":
    registry_round_trip()
    reference_checker()
