"""The bindings themselves: the library's guarantees as Python sees them."""

import asyncio
import math
import threading
import time

import pytest

from smartcache import Cache, Dep, InvalidName, RedisUnavailable

from .conftest import CLUSTER, REDIS_URL


@pytest.fixture
def cache(namespace):
    return Cache(REDIS_URL, namespace=namespace, cluster=CLUSTER)


@pytest.fixture
def other_process(namespace):
    """Another Cache on the namespace, as another process would have: no
    shared single-flight, only the fill lease."""
    return Cache(REDIS_URL, namespace=namespace, cluster=CLUSTER, lease_wait=3)


def test_a_miss_computes_and_a_hit_returns_the_same_value(cache):
    value = {"id": 1, "tags": ("a", "b"), "price": 1.5, "name": "Théière"}
    assert cache.fetch("p", [Dep.row("products", 1)], lambda: value) == (
        {"id": 1, "tags": ["a", "b"], "price": 1.5, "name": "Théière"},
        "computed",
    )
    again = cache.fetch("p", [Dep.row("products", 1)], lambda: pytest.fail("computed twice"))
    assert again == ({"id": 1, "tags": ["a", "b"], "price": 1.5, "name": "Théière"}, "hit")
    assert cache.get("p") == again[0]


def test_values_are_json_that_other_languages_read(cache, namespace):
    import redis

    cache.get_or_compute("p", [], lambda: {"id": 1, "name": "Teapot"})
    raw = redis.Redis.from_url(REDIS_URL) if not CLUSTER else redis.RedisCluster.from_url(REDIS_URL)
    # What serde_json writes for the same value: compact, UTF-8.
    assert raw.get(f"{namespace}:p") == b'{"id":1,"name":"Teapot"}'
    raw.set(f"{namespace}:from_elsewhere", b'{"written":"by Rust"}')
    assert cache.get("from_elsewhere") == {"written": "by Rust"}


def test_a_value_that_is_not_json_is_refused_and_gives_the_lease_back(cache, other_process):
    with pytest.raises(TypeError):
        cache.get_or_compute("k", [], lambda: object())
    with pytest.raises(ValueError):
        cache.get_or_compute("k", [], lambda: math.nan)
    started = time.monotonic()
    assert other_process.fetch("k", [], lambda: 2) == (2, "computed")
    assert time.monotonic() - started < 1


def test_an_exception_from_compute_propagates_unchanged_and_gives_the_lease_back(
    cache, other_process
):
    class Boom(Exception):
        pass

    boom = Boom("no database")

    def compute():
        raise boom

    with pytest.raises(Boom) as raised:
        cache.get_or_compute("k", [Dep.table("t")], compute)
    assert raised.value is boom
    # Had the lease stayed, this would wait 3 s and come back uncached.
    started = time.monotonic()
    assert other_process.fetch("k", [], lambda: "after") == ("after", "computed")
    assert time.monotonic() - started < 1


def test_concurrent_misses_in_threads_compute_once(cache):
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.2)
        return "v"

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.fetch("k", [], compute)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(s for _, s in results) == ["computed"] + ["shared"] * 7


def test_another_process_waits_for_the_lease_holder(cache, other_process):
    release = threading.Event()
    holder = threading.Thread(
        target=lambda: cache.get_or_compute("k", [], lambda: release.wait(5) and "v")
    )
    holder.start()
    time.sleep(0.1)
    threading.Timer(0.3, release.set).start()
    assert other_process.fetch("k", [], lambda: pytest.fail("computed twice")) == ("v", "shared")
    holder.join()


def test_the_gil_is_released_while_waiting_on_redis(cache, other_process):
    # A thread waits up to 3 s for another process's lease; meanwhile this
    # thread keeps running Python, never stalled for long.
    release = threading.Event()
    holder = threading.Thread(
        target=lambda: cache.get_or_compute("k", [], lambda: release.wait(5) and "v")
    )
    holder.start()
    time.sleep(0.1)
    waiter = threading.Thread(target=lambda: other_process.get_or_compute("k", [], lambda: "w"))
    waiter.start()
    longest, last = 0.0, time.monotonic()
    deadline = last + 1.0
    while (now := time.monotonic()) < deadline:
        longest, last = max(longest, now - last), now
    assert waiter.is_alive(), "the waiter should still be waiting for the lease"
    release.set()
    waiter.join()
    holder.join()
    assert longest < 0.5, f"this thread stalled {longest:.2f} s"


def test_compute_may_use_the_cache(cache):
    def page():
        return {"product": cache.get_or_compute("product:1", [], lambda: {"id": 1})}

    assert cache.fetch("page", [], page) == ({"product": {"id": 1}}, "computed")
    assert cache.get("product:1") == {"id": 1}


def test_set_get_clear(cache):
    assert cache.set("a", [1, 2], [Dep.table("products")])
    assert cache.set("ab", "x")
    assert cache.get("a") == [1, 2]
    assert [k.key for k in cache.keys("a*")] == ["a", "ab"]
    assert [(k.key, k.deps) for k in cache.keys("a")] == [("a", ["t:public.products"])]
    assert cache.clear("a") is True
    assert cache.get("ab") == "x"
    assert cache.clear("a") is False
    cache.set("c", 1, [Dep.row("products", 1)])
    assert cache.clear_table("products") == 1
    assert cache.clear_all() == 1
    assert cache.keys() == []


def test_keys_up_to_says_when_more_match(cache):
    for i in range(5):
        cache.set(f"k{i}", i)
    keys, more = cache.keys_up_to("k*", 3)
    assert (len(keys), more) == (3, True)
    assert cache.keys_up_to("k*", 10)[1] is False


def test_ttl(cache):
    cache.get_or_compute("short", [], lambda: 1, ttl=0.2)
    time.sleep(0.4)
    assert cache.get("short") is None


def test_reserved_keys_and_bad_names_are_refused(cache):
    with pytest.raises(InvalidName):
        cache.get_or_compute("@sc:lease", [], lambda: 1)
    with pytest.raises(InvalidName):
        Dep.table("")
    with pytest.raises(TypeError):
        cache.get_or_compute("k", "products", lambda: 1)


def test_a_strict_cache_refuses_an_unreachable_redis_and_a_lazy_one_serves():
    from .conftest import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailable):
        Cache(url, connect_timeout=0.2)
    lazy = Cache(url, lazy=True, timeout=0.1)
    assert lazy.fetch("k", [], lambda: 1) == (1, "uncached")
    with pytest.raises(RedisUnavailable):
        lazy.clear("k")


def test_dep_ids_match_the_rust_library():
    assert Dep.table("products").id == "t:public.products"
    assert Dep.table("products") == Dep.table("public.products")
    assert Dep.row("shop.order_lines", (1001, 3)).id == "r:shop.order_lines:1001,3"
    assert Dep.row("t", "a,b:c%").id == "r:public.t:a%2Cb%3Ac%25"
    assert Dep.row("t", True).id == "r:public.t:true"
    with pytest.raises(TypeError):
        Dep.row("t", 1.5)
    with pytest.raises(TypeError):
        Dep.row("t", None)


async def test_asyncio_misses_compute_once(cache):
    calls = []

    async def compute():
        calls.append(1)
        await asyncio.sleep(0.1)
        return {"v": 1}

    results = await asyncio.gather(*(cache.afetch("k", [], compute) for _ in range(10)))
    assert calls == [1]
    assert sorted(s for _, s in results) == ["computed"] + ["shared"] * 9
    assert await cache.aget_or_compute("k", [], compute) == {"v": 1}
    assert await cache.aget("k") == {"v": 1}
    assert await cache.aset("k2", 2) is True
    assert await cache.aclear("k2") is True
    assert await cache.aclear_table("nothing") == 0


async def test_asyncio_exception_propagates_unchanged_and_gives_the_lease_back(
    cache, other_process
):
    boom = KeyError("missing")

    async def compute():
        await asyncio.sleep(0)
        raise boom

    with pytest.raises(KeyError) as raised:
        await cache.aget_or_compute("k", [], compute)
    assert raised.value is boom
    started = time.monotonic()
    assert await other_process.afetch("k", [], lambda: 1) == (1, "computed")
    assert time.monotonic() - started < 1


async def test_asyncio_compute_may_use_the_cache(cache):
    async def inner():
        return 1

    async def page():
        return {"inner": await cache.aget_or_compute("inner", [], inner)}

    assert await cache.aget_or_compute("page", [], page) == {"inner": 1}


def test_the_sync_api_refuses_a_coroutine(cache):
    async def compute():
        return 1

    with pytest.raises(TypeError, match="aget_or_compute"):
        cache.get_or_compute("k", [], compute)


def test_the_local_tier_serves_hits_and_learns_of_another_process_clear(namespace, other_process):
    from .conftest import wait_until

    local = Cache(REDIS_URL, namespace=namespace, cluster=CLUSTER, local_max_bytes=1 << 20)
    assert Cache(REDIS_URL, namespace=namespace, cluster=CLUSTER).local_stats() is None
    wait_until(lambda: local.local_stats()["serving"], what="the local tier to serve")
    other_process.set("k", {"v": 1}, [])
    assert local.get("k") == {"v": 1}
    wait_until(
        lambda: local.get("k") == {"v": 1} and local.local_stats()["hits"] > 0,
        what="a local hit",
    )
    stats = local.local_stats()
    assert stats["entries"] == 1 and 0 < stats["bytes"] <= 1 << 20
    other_process.clear("k")
    wait_until(lambda: local.get("k") is None, what="the local copy to go")
