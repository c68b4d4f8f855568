"""Python and Rust share one cache: the Rust example shop reads what
Python stored and the other way round, and the daemon invalidates both."""

import datetime
import json
import os
import subprocess
import time
import urllib.request
import uuid
from decimal import Decimal

import pytest
from django.db import connection

from smartcache import Cache, Dep

from .conftest import (
    CLUSTER,
    REDIS_URL,
    WORKSPACE,
    database_url,
    free_port,
    start_daemon,
    wait_until,
)


def shop_binary():
    built = [
        p
        for p in (WORKSPACE / "target" / d / "examples" / "shop" for d in ("debug", "release"))
        if p.exists()
    ]
    if not built:
        pytest.fail("build the Rust example first: cargo build -p smartcache --example shop --features axum")
    return str(max(built, key=lambda p: p.stat().st_mtime))


@pytest.fixture
def rust_shop(database, namespace):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(database),
        "REDIS_URL": REDIS_URL,
        "SMARTCACHE_NAMESPACE": namespace,
        "SHOP_ADDR": f"127.0.0.1:{port}",
    }
    process = subprocess.Popen([shop_binary()], env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            urllib.request.urlopen(f"{base}/products/1", timeout=1)
            return True
        except OSError:
            return False

    try:
        wait_until(up, timeout=30, what="the Rust shop answering")
        yield base
    finally:
        process.terminate()
        process.wait(10)


def fetch(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read()), r.headers["x-cache"]


@pytest.mark.skipif(CLUSTER, reason="the example shop talks to a single Redis")
def test_rust_and_python_read_each_others_entries(rust_shop, namespace, database, tmp_path):
    cache = Cache(REDIS_URL, namespace=namespace)
    cache.clear_all()  # the shop cached product 1 while starting
    rust_value, _ = fetch(f"{rust_shop}/products/1")
    assert fetch(f"{rust_shop}/products/1")[1] == "hit"
    assert cache.get("product:1") == rust_value

    mine = {"id": 2, "name": "stored by Python", "price_cents": 1}
    assert cache.set("product:2", mine, [Dep.row("shop_products", 2)])
    assert fetch(f"{rust_shop}/products/2") == (mine, "hit")

    # The daemon deletes Python's entry through the row Python registered.
    daemon = start_daemon(database, namespace, tmp_path, '[[tables]]\nname = "shop_products"\n')
    try:
        with connection.cursor() as cur:
            cur.execute("UPDATE shop_products SET price_cents = 5 WHERE id = 2")
        wait_until(lambda: cache.get("product:2") is None, what="product:2 deleted")
        value, status = fetch(f"{rust_shop}/products/2")
        assert (value["price_cents"], status) == (5, "miss")
    finally:
        daemon.stop()


KEY_TYPES = [
    # (column type, SQL literal, the Python value Django would hand over)
    ("bigint", "42", 42),
    ("boolean", "true", True),
    ("text", "'a,b:c%{x}'", "a,b:c%{x}"),
    ("numeric(10,2)", "1.50", Decimal("1.50")),
    ("uuid", "'6F9619FF-8B86-D011-B42D-00C04FC964FF'", uuid.UUID("6F9619FF-8B86-D011-B42D-00C04FC964FF")),
    ("timestamp", "'2024-05-01 10:00:00.25'", datetime.datetime(2024, 5, 1, 10, 0, 0, 250000)),
    (
        "timestamptz",
        "'2024-05-01 12:00:00+02'",
        datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    ),
    ("date", "'2024-05-01'", datetime.date(2024, 5, 1)),
]


def test_row_deps_of_every_key_type_match_what_the_trigger_captures(database, namespace, tmp_path):
    cache = Cache(REDIS_URL, namespace=namespace, cluster=CLUSTER)
    tables = ""
    with connection.cursor() as cur:
        for i, (sql_type, literal, _) in enumerate(KEY_TYPES):
            cur.execute(f"CREATE TABLE k{i} (id {sql_type} PRIMARY KEY, v int)")
            cur.execute(f"INSERT INTO k{i} VALUES ({literal}, 0)")
            tables += f'[[tables]]\nname = "k{i}"\n'
        cur.execute("CREATE TABLE kc (a int, b text, v int, PRIMARY KEY (a, b))")
        cur.execute("INSERT INTO kc VALUES (7, 'x y', 0)")
        tables += '[[tables]]\nname = "kc"\n'
    for i, (_, _, value) in enumerate(KEY_TYPES):
        cache.set(f"k{i}", 1, [Dep.row(f"k{i}", value)])
    cache.set("kc", 1, [Dep.row("kc", (7, "x y"))])

    daemon = start_daemon(database, namespace, tmp_path, tables)
    try:
        with connection.cursor() as cur:
            cur.execute("SET TIME ZONE 'America/New_York'")  # whatever the writer's zone
            for i in range(len(KEY_TYPES)):
                cur.execute(f"UPDATE k{i} SET v = 1")
            cur.execute("UPDATE kc SET v = 1")
        deadline = time.monotonic() + 10
        while cache.keys() and time.monotonic() < deadline:
            time.sleep(0.02)
        left = [(k.key, k.deps) for k in cache.keys()]
        assert left == [], "these rows' deps did not match the captured primary keys"
    finally:
        daemon.stop()
