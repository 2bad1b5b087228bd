"""Strata's SQL against DuckDB on the same records (run by server/tests/sql_duckdb.rs).

usage: sql_duckdb.py SERVER_URL QUERIES_FILE WORK_DIR BASE_MS TOPIC...

1. Export, independently of the SQL path: every record of every TOPIC is read back through the
   fetch API (`GET /v1/topics/{t}/partitions/{p}/records?encoding=base64`, page by page) and
   written to WORK_DIR/{topic}.jsonl (partition, offset, timestamp, key and value as hex and as
   text, NULL where absent or not UTF-8).
2. DuckDB loads those files as tables of the same names, with the columns `partition`, `offset`,
   `timestamp` (TIMESTAMP), `key`/`value` (BLOB) and `key_str`/`value_str` (VARCHAR).
3. Each query pair of QUERIES_FILE runs through Strata (`POST /v1/sql`, JSON) and through DuckDB;
   the results must be equal after normalising types: integers as integers, floats rounded to
   6 decimals (integral ones as integers), timestamps as epoch milliseconds, binary as hex. Rows
   are compared in order for entries marked `[ordered]`, as sorted multisets otherwise.

QUERIES_FILE: entries start with `=== name` (optionally followed by `[ordered]`); the Strata SQL
follows, then optionally a line `--- duckdb` and DuckDB's SQL (without it, the same SQL runs on
both). Lines starting with `#` are comments. `@BASE@` in either SQL is replaced by
BASE_MS, the test data's first timestamp.

Prints `exported TOPIC: N records` per topic, `ok NAME (R rows)` per matching query, a diff per
failing one, and last `duckdb comparison: Q queries, M matched`; exits 1 if any query differs.
"""

import base64
import datetime
import decimal
import difflib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

import duckdb

SERVER, QUERIES, WORK, BASE_MS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
TOPICS = sys.argv[5:]
EPOCH = datetime.datetime(1970, 1, 1)


def http_json(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(SERVER + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def text_or_none(b):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


def export(topic):
    """Every record of `topic` through the fetch API into WORK/topic.jsonl; returns the count."""
    quoted = urllib.parse.quote(topic, safe="")
    status, meta = http_json("GET", f"/v1/topics/{quoted}")
    assert status == 200, (topic, meta)
    path = os.path.join(WORK, f"{topic}.jsonl")
    count = 0
    with open(path, "w") as out:
        for p in meta["partitions"]:
            offset, end = p["log_start_offset"], p["high_watermark"]
            while offset < end:
                status, page = http_json(
                    "GET", f"/v1/topics/{quoted}/partitions/{p['partition']}/records"
                           f"?offset={offset}&max_records=1000&encoding=base64")
                assert status == 200, (topic, p, page)
                records = page["records"]
                assert records, f"{topic}/{p['partition']}: no records at {offset} < {end}"
                for r in records:
                    assert r["offset"] == offset, f"{topic}/{p['partition']}: offset {r['offset']}, expected {offset}"
                    key = base64.b64decode(r["key_b64"]) if "key_b64" in r else None
                    value = base64.b64decode(r["value_b64"]) if r.get("value_b64") is not None else None
                    out.write(json.dumps({
                        "partition": r["partition"], "offset": r["offset"], "timestamp": r["timestamp"],
                        "key_hex": None if key is None else key.hex(),
                        "value_hex": None if value is None else value.hex(),
                        "key_str": None if key is None else text_or_none(key),
                        "value_str": None if value is None else text_or_none(value),
                    }) + "\n")
                    offset += 1
                    count += 1
                offset = page["next_offset"]
    return path, count


def load(con, topic, path):
    columns = ("{'partition': 'INTEGER', 'offset': 'BIGINT', 'timestamp': 'BIGINT', 'key_hex': 'VARCHAR', "
               "'value_hex': 'VARCHAR', 'key_str': 'VARCHAR', 'value_str': 'VARCHAR'}")
    con.execute(f"""
        CREATE TABLE "{topic}" AS
        SELECT "partition", "offset", epoch_ms("timestamp") AS "timestamp",
               from_hex(key_hex) AS "key", from_hex(value_hex) AS "value", key_str, value_str
        FROM read_json(?, format = 'newline_delimited', columns = {columns})""", [path])


def parse_queries(path):
    entries, current, side = [], None, "strata"
    with open(path) as f:
        for line in f:
            stripped = line.rstrip("\n")
            if stripped.startswith("=== "):
                words = stripped[4:].split()
                current = {"name": words[0], "ordered": "[ordered]" in words[1:], "strata": [], "duckdb": []}
                entries.append(current)
                side = "strata"
            elif stripped.strip() == "--- duckdb" and current is not None:
                side = "duckdb"
            elif current is None or stripped.startswith("#"):
                continue
            else:
                current[side].append(stripped)
    out = []
    for e in entries:
        strata = "\n".join(e["strata"]).strip()
        duck = "\n".join(e["duckdb"]).strip() or strata
        out.append((e["name"], e["ordered"], strata.replace("@BASE@", str(BASE_MS)),
                    duck.replace("@BASE@", str(BASE_MS))))
    names = [n for n, *_ in out]
    assert len(names) == len(set(names)), f"duplicate query names in {path}"
    return out


def norm_number(v):
    v = round(float(v), 6)
    return int(v) if v.is_integer() else v


def norm_duck(v):
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, (float, decimal.Decimal)):
        return norm_number(v)
    if isinstance(v, datetime.datetime):
        assert v.tzinfo is None, v
        return (v - EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    raise TypeError(f"DuckDB value of an unexpected type: {v!r}")


def norm_strata(v, arrow_type):
    if v is None:
        return None
    if arrow_type.startswith("Timestamp"):
        t = datetime.datetime.fromisoformat(v.rstrip("Z"))
        return (t.replace(tzinfo=None) - EPOCH) // datetime.timedelta(milliseconds=1)
    if arrow_type.startswith("Decimal"):
        return norm_number(v)
    if isinstance(v, float):
        return norm_number(v)
    return v


def sort_key(row):
    return tuple((0, "") if v is None else (1, f"{type(v).__name__}:{v}") for v in row)


def indented(sql):
    return sql.replace("\n", "\n          ")


def run_strata(sql):
    status, body = http_json("POST", "/v1/sql", {"sql": sql, "format": "json"})
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body}")
    types = [c["type"] for c in body["columns"]]
    return [tuple(norm_strata(v, t) for v, t in zip(row, types)) for row in body["rows"]]


def run_duckdb(con, sql):
    return [tuple(norm_duck(v) for v in row) for row in con.execute(sql).fetchall()]


def main():
    con = duckdb.connect()
    for topic in TOPICS:
        path, count = export(topic)
        load(con, topic, path)
        print(f"exported {topic}: {count} records")
    queries = parse_queries(QUERIES)
    matched = 0
    for name, ordered, strata_sql, duck_sql in queries:
        try:
            got = run_strata(strata_sql)
        except Exception as e:  # noqa: BLE001 - reported per query
            print(f"FAIL {name}: Strata failed: {e}\n  strata: {indented(strata_sql)}")
            continue
        try:
            want = run_duckdb(con, duck_sql)
        except Exception as e:  # noqa: BLE001 - reported per query
            print(f"FAIL {name}: DuckDB failed: {e}\n  duckdb: {indented(duck_sql)}")
            continue
        if not ordered:
            got, want = sorted(got, key=sort_key), sorted(want, key=sort_key)
        if got == want:
            matched += 1
            print(f"ok {name} ({len(got)} rows)")
            continue
        print(f"FAIL {name}: {len(got)} rows from Strata, {len(want)} from DuckDB"
              f"{' (in order)' if ordered else ' (sorted)'}\n  strata: {indented(strata_sql)}\n  duckdb: {indented(duck_sql)}")
        diff = difflib.unified_diff([repr(r) for r in want], [repr(r) for r in got],
                                    "duckdb", "strata", lineterm="", n=1)
        for i, line in enumerate(diff):
            if i == 60:
                print("    ... (diff cut)")
                break
            print(f"    {line}")
    print(f"duckdb comparison: {len(queries)} queries, {matched} matched")
    sys.exit(0 if matched == len(queries) else 1)


if __name__ == "__main__":
    main()
