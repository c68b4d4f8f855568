"""The process's cache, built from the settings on first use."""

import logging
import os
import threading

from django.core.signals import setting_changed
from django.dispatch import receiver

from .. import Cache, RedisUnavailable
from . import conf

logger = logging.getLogger("smartcache")

_lock = threading.Lock()
_cache = None


def get_cache() -> Cache:
    """The ``smartcache.Cache`` of this process, built from the settings
    the first time it is needed (so after a server forks its workers)."""
    global _cache
    cache = _cache
    if cache is None:
        with _lock:
            if _cache is None:
                _cache = Cache(**conf.cache_kwargs())
            cache = _cache
    return cache


def _forget(**_):
    global _cache
    with _lock:
        _cache = None


@receiver(setting_changed)
def _settings_changed(setting, **_):
    if setting == "SMARTCACHE" or setting in conf.LEGACY:
        _forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)


def clear_cache(key):
    """Deletes the entry ``key`` (or each of a list of keys) exactly: unlike
    django-smart-redis, ``clear_cache("product:1")`` leaves
    ``product:10`` alone. Query-string variants of a cached view are their
    own keys (``product_list?page=2``).

    With the invalidator running there is rarely a reason to call this: a
    committed change deletes what depends on it. Returns how many entries
    were there. Like the original, a Redis failure is logged, not raised,
    so a ``post_save`` handler never fails a write.
    """
    keys = [key] if isinstance(key, str) else list(key)
    cache = get_cache()
    cleared = 0
    for k in keys:
        try:
            cleared += cache.clear(k)
        except RedisUnavailable:
            logger.exception("smartcache: could not clear %r", k)
    return cleared
