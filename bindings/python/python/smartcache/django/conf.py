"""The cache's settings, from ``settings.SMARTCACHE``::

    SMARTCACHE = {
        "URL": "redis://127.0.0.1:6379/0",  # with CLUSTER, seed nodes separated by commas
        "NAMESPACE": "cache",               # must match the invalidator's
        "CLUSTER": False,
        "TTL": None,                        # default expiry in seconds; None: until invalidated
        "CLEAR_ON_START": False,            # clear the namespace when each process first uses it
        "OPTIONS": {},                      # further Cache(...) keyword arguments, e.g. {"timeout": 0.1}
    }

The settings of django-smart-redis are read too, so a project switches by
changing its imports: ``SMART_REDIS_HOST`` (``127.0.0.1``), ``_PORT``
(6379), ``_DB`` (0), ``_PASSWORD``, ``_NAMESPACE`` (``cache``) and
``_RESTART_AND_CLEAR_CACHE``. Keys of ``SMARTCACHE`` win over them.

Unlike the original, clearing on start is off unless asked for: with the
invalidator nothing is stale after a restart, and with several processes
each start would flush the cache of all of them.
"""

from urllib.parse import quote

from django.conf import settings

DEFAULTS = {
    "URL": "redis://127.0.0.1:6379/0",
    "NAMESPACE": "cache",
    "CLUSTER": False,
    "TTL": None,
    "CLEAR_ON_START": False,
    "OPTIONS": {},
}

LEGACY = (
    "SMART_REDIS_HOST",
    "SMART_REDIS_PORT",
    "SMART_REDIS_DB",
    "SMART_REDIS_PASSWORD",
    "SMART_REDIS_NAMESPACE",
    "SMART_REDIS_RESTART_AND_CLEAR_CACHE",
)


def _legacy():
    if not any(hasattr(settings, name) for name in LEGACY):
        return {}
    host = getattr(settings, "SMART_REDIS_HOST", "127.0.0.1")
    port = getattr(settings, "SMART_REDIS_PORT", 6379)
    db = getattr(settings, "SMART_REDIS_DB", 0)
    password = getattr(settings, "SMART_REDIS_PASSWORD", None)
    auth = f":{quote(str(password), safe='')}@" if password else ""
    out = {"URL": f"redis://{auth}{host}:{port}/{db}"}
    if hasattr(settings, "SMART_REDIS_NAMESPACE"):
        out["NAMESPACE"] = settings.SMART_REDIS_NAMESPACE
    if hasattr(settings, "SMART_REDIS_RESTART_AND_CLEAR_CACHE"):
        out["CLEAR_ON_START"] = bool(settings.SMART_REDIS_RESTART_AND_CLEAR_CACHE)
    return out


def config():
    """The effective settings: defaults, then the legacy ones, then
    ``SMARTCACHE``."""
    own = getattr(settings, "SMARTCACHE", {})
    unknown = set(own) - set(DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown SMARTCACHE setting(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}"
        )
    return {**DEFAULTS, **_legacy(), **own}


def cache_kwargs():
    """``Cache(...)`` keyword arguments for the effective settings."""
    c = config()
    return {
        "url": c["URL"],
        "namespace": c["NAMESPACE"],
        "cluster": c["CLUSTER"],
        "default_ttl": c["TTL"],
        "clear_on_start": c["CLEAR_ON_START"],
        # A web process must start, and serve, while Redis is down.
        "lazy": True,
        **c["OPTIONS"],
    }
