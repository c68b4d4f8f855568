"""No stale set, and Redis down never fails a request: the library's
guarantees through the bindings, against the real daemon."""

import json
import threading

from django.db import connections

from shop.models import Product
from smartcache.django import Dep, get_cache

from .conftest import wait_until


def race(fill):
    """A reader reads product 1 before a commit, the commit is applied by
    the daemon, then the reader stores what it read with `fill`. Returns
    what the reader got."""
    cache = get_cache()
    read, release, out = threading.Event(), threading.Event(), {}

    def compute():
        price = Product.objects.get(pk=1).price_cents
        read.set()
        release.wait(10)
        return price

    def reader():
        try:
            out["fetched"] = fill(cache, compute)
        finally:
            connections.close_all()

    thread = threading.Thread(target=reader)
    thread.start()
    assert read.wait(10)
    # Registered under the same row: gone once the daemon applied the commit.
    cache.set("probe", 1, [Dep.row(Product, 1)])
    Product.objects.filter(pk=1).update(price_cents=200)
    wait_until(lambda: cache.get("probe") is None, what="the daemon applying the commit")
    release.set()
    thread.join()
    return out["fetched"]


def test_a_fill_that_started_before_an_invalidation_is_not_stored(products, namespace, daemon):
    cache = get_cache()
    fetched = race(lambda cache, compute: cache.fetch("price:1", [Dep.row(Product, 1)], compute))
    assert fetched == (100, "uncached"), "the caller still gets its value, uncached"
    assert cache.get("price:1") is None, "the stale value was stored"
    # The next reader sees the committed row and caches it.
    refill = cache.fetch("price:1", [Dep.row(Product, 1)], lambda: Product.objects.get(pk=1).price_cents)
    assert refill == (200, "computed")


def test_without_a_lease_the_same_race_stores_a_stale_value_forever(products, namespace, daemon):
    # The control: a read-then-SET cache (django-smart-redis' way) loses
    # this race, so the test above is not passing by luck of timing.
    def read_then_set(cache, compute):
        value = compute()
        cache.set("price:1", value, [Dep.row(Product, 1)])
        return value

    race(read_then_set)
    assert get_cache().get("price:1") == 100
    assert Product.objects.get(pk=1).price_cents == 200


def test_redis_down_never_fails_a_request(client, products, settings, redis_server):
    settings.SMARTCACHE = {
        "URL": redis_server.url,
        "NAMESPACE": "down",
        "OPTIONS": {"timeout": 0.1, "connect_timeout": 0.2, "breaker_cooldown": 0.2},
    }
    assert client.get("/products/1")["X-Cache"] == "miss"
    assert client.get("/products/1")["X-Cache"] == "hit"

    redis_server.stop()
    for _ in range(5):
        response = client.get("/products/1")
        assert (response.status_code, response["X-Cache"]) == (200, "miss")
    # Computed each time while Redis is down, so a write shows at once.
    Product.objects.filter(pk=1).update(price_cents=7)
    assert json.loads(client.get("/products/1").content)["price_cents"] == 7
    assert client.get("/products").status_code == 200

    redis_server.start()

    def cached_again():
        client.get("/products/1")
        return client.get("/products/1")["X-Cache"] == "hit"

    wait_until(cached_again, what="caching resumed after Redis came back")
    assert json.loads(client.get("/products/1").content)["price_cents"] == 7
