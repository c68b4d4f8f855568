"""Fixtures: each test gets its own PostgreSQL database (copied from a
migrated template), its own Redis namespace and, when it asks for one,
its own smartcache-invalidator daemon on them."""

import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from django.core.management import call_command
from django.db import connections

DATABASE_URL = os.environ.get(
    "SMARTCACHE_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SMARTCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CLUSTER = os.environ.get("SMARTCACHE_TEST_REDIS_CLUSTER") == "1"
WORKSPACE = Path(__file__).resolve().parents[3]

_counter = itertools.count()


def admin_sql(sql):
    with psycopg.connect(DATABASE_URL, autocommit=True) as con:
        con.execute(sql)


def database_url(name):
    base, _, _ = DATABASE_URL.rpartition("/")
    return f"{base}/{name}"


def use_database(name):
    connections.close_all()
    connections.settings["default"]["NAME"] = name


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def invalidator_binary():
    if os.environ.get("SMARTCACHE_INVALIDATOR"):
        return os.environ["SMARTCACHE_INVALIDATOR"]
    built = [
        p
        for p in (WORKSPACE / "target" / d / "smartcache-invalidator" for d in ("release", "debug"))
        if p.exists()
    ]
    if not built:
        pytest.fail("build the daemon first: cargo build -p smartcache-invalidator")
    return str(max(built, key=lambda p: p.stat().st_mtime))


@pytest.fixture(scope="session")
def template_database(django_db_blocker):
    name = f"sc_py_template_{os.getpid()}"
    admin_sql(f'DROP DATABASE IF EXISTS "{name}"')
    admin_sql(f'CREATE DATABASE "{name}"')
    with django_db_blocker.unblock():
        use_database(name)
        call_command("migrate", verbosity=0)
        connections.close_all()
    yield name
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database(template_database, django_db_blocker):
    """A migrated database of this test's own, dropped afterwards."""
    name = f"sc_py_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    with django_db_blocker.unblock():
        use_database(name)
        yield name
        connections.close_all()
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def namespace(settings, request):
    """A Redis namespace of this test's own, used by smartcache.django."""
    ns = f"py_{request.node.name[:24]}_{os.getpid()}_{next(_counter)}"
    settings.SMARTCACHE = {"URL": REDIS_URL, "NAMESPACE": ns, "CLUSTER": CLUSTER}
    yield ns
    from smartcache import Cache

    Cache(REDIS_URL, namespace=ns, cluster=CLUSTER).clear_all()


@pytest.fixture
def products(database):
    from shop.models import Product

    Product.objects.bulk_create(
        Product(id=i, name=f"Product {i}", price_cents=100 * i) for i in range(1, 11)
    )
    return Product


class Daemon:
    def __init__(self, config, database, namespace):
        self.config = config
        # Flags, because DATABASE_URL, REDIS_URL and SMARTCACHE_NAMESPACE in
        # the environment would win over the config file.
        self.flags = [
            "--config", str(config),
            "--database-url", database_url(database),
            "--redis-url", REDIS_URL,
            "--namespace", namespace,
        ]
        self.process = None

    def cli(self, *args):
        done = subprocess.run(
            [invalidator_binary(), *self.flags, *args],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise AssertionError(f"smartcache-invalidator {' '.join(args)}: {done.stderr}")
        return done

    def start(self):
        self.process = subprocess.Popen(
            [invalidator_binary(), *self.flags, "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_daemon(database, namespace, directory, tables):
    """Installs the daemon's triggers on `tables` (TOML `[[tables]]`) and
    starts it."""
    config = directory / "smartcache.toml"
    config.write_text(
        f"redis_cluster = {'true' if CLUSTER else 'false'}\n"
        "poll_interval_ms = 100\n"
        "canary_interval_ms = 0\n"
        f"{tables}\n"
    )
    d = Daemon(config, database, namespace)
    d.cli("install")
    d.start()
    return d


@pytest.fixture
def daemon(database, namespace, tmp_path, capsys):
    """smartcache-invalidator installed on this test's database and running
    on its namespace, its tables from `manage.py smartcache_config`."""
    call_command("smartcache_config")
    d = start_daemon(database, namespace, tmp_path, capsys.readouterr().out)
    yield d
    d.stop()


class RedisServer:
    """A throwaway redis-server on a free port, stopped and started by PID."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.dir = tmp_path
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is needed (Debian package redis-server)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
        )

        def answers():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(answers, what="redis-server answering")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
