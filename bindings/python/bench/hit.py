"""Cost of a cache hit through the bindings next to a django-redis
``cache.get`` of the same value, measured side by side in one run.

    target/venv/bin/python bindings/python/bench/hit.py [--rounds 15] [--calls 2000]

Each round times ``--calls`` hits of each contender, in a shuffled order,
so load from other processes on the machine falls on all of them alike;
the figures are medians over the rounds. REDIS_URL names the server
(default redis://127.0.0.1:6379/0); keys live under a throwaway
namespace and prefix, deleted at the end.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time

import django
import redis
import redis.utils
from django.conf import settings

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = f"bench_{os.getpid()}"

settings.configure(
    CACHES={
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": PREFIX,
        }
    }
)
django.setup()

from django.core.cache import cache as django_cache  # noqa: E402

from smartcache import Cache, Dep  # noqa: E402


def product(size):
    """A product as a view would cache it, padded to about `size` bytes of
    JSON."""
    value = {"id": 42, "name": "Teapot", "price_cents": 2599, "tags": ["kitchen", "tea"]}
    value["description"] = "x" * max(0, size - len(str(value)) - 20)
    return value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--sizes", default="100,1000,10000")
    args = parser.parse_args()

    sc = Cache(REDIS_URL, namespace=PREFIX)
    # The floor: a bare client reading smartcache's entry, no Django.
    raw = redis.Redis.from_url(REDIS_URL)
    deps = [Dep.row("products", 42)]
    keys = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            value = product(size)
            key = f"product:{size}"
            keys.append(key)
            django_cache.set(key, value, timeout=None)
            sc.set(key, value, deps)
            assert django_cache.get(key) == sc.get(key) == value

            raw_key = f"{PREFIX}:{key}"
            contenders = {
                "django-redis cache.get": lambda: django_cache.get(key),
                "redis-py GET + json.loads": lambda: json.loads(raw.get(raw_key)),
                "smartcache get": lambda: sc.get(key),
                "smartcache get_or_compute": lambda: sc.get_or_compute(
                    key, [Dep.row("products", 42)], lambda: value
                ),
            }
            per_call = {name: [] for name in contenders}
            for _ in range(args.rounds):
                order = list(contenders.items())
                random.shuffle(order)
                for name, call in order:
                    started = time.perf_counter()
                    for _ in range(args.calls):
                        call()
                    per_call[name].append((time.perf_counter() - started) / args.calls * 1e6)

            base = statistics.median(per_call["django-redis cache.get"])
            stored = sc.keys(key)[0].size_bytes
            print(f"\nvalue of {stored} bytes as JSON ({args.rounds} rounds x {args.calls} hits, medians)")
            for name, samples in per_call.items():
                med = statistics.median(samples)
                print(f"  {name:28} {med:7.1f} µs  {med / base:5.2f}x   "
                      f"(rounds {min(samples):.1f}..{max(samples):.1f})")
    finally:
        sc.clear_all()
        # Not django_cache.clear(): django-redis runs FLUSHDB.
        django_cache.delete_many(keys)


if __name__ == "__main__":
    print(f"Python {sys.version.split()[0]}, hiredis: {redis.utils.HIREDIS_AVAILABLE}, Redis at {REDIS_URL}")
    main()
