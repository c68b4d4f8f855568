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

import os

from ._smartcache import Cache, Dep, KeyInfo, _after_fork_in_child
from .exceptions import Error, InvalidName, InvalidTlsFile, InvalidUrl, RedisUnavailable

# A child forked after the runtime started has none of its threads: make
# its calls raise a clear error instead of hanging.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = [
    "Cache",
    "Dep",
    "KeyInfo",
    "Error",
    "InvalidName",
    "InvalidTlsFile",
    "InvalidUrl",
    "RedisUnavailable",
]
