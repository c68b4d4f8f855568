"""Cache data in Redis forever and never serve it stale.

Bindings of the Rust library ``smartcache``: the same key layout, Lua
scripts and fill leases, so Python and Rust processes share one cache. The
``smartcache-invalidator`` daemon deletes exactly the entries a committed
PostgreSQL change affects.

>>> from smartcache import Cache, Dep
>>> cache = Cache("redis://127.0.0.1:6379/0", namespace="cache")
>>> cache.get_or_compute("product:42", [Dep.row("products", 42)], lambda: load_product(42))

Django projects: see ``smartcache.django``.
"""

from ._smartcache import Cache, Dep, KeyInfo
from .exceptions import Error, InvalidName, InvalidUrl, RedisUnavailable

__all__ = [
    "Cache",
    "Dep",
    "KeyInfo",
    "Error",
    "InvalidName",
    "InvalidUrl",
    "RedisUnavailable",
]
