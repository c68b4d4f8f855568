"""Exceptions raised by smartcache.

Request-path calls (``get_or_compute``, ``fetch``, ``get``, ``set``) never
raise because of Redis: they compute uncached instead. Management calls
(``clear*``, ``keys``, ``ping``, a non-lazy ``Cache(...)``) raise
``RedisUnavailable``, because their caller must know the effect did not
happen.
"""


class Error(Exception):
    """Base class of smartcache's own errors."""


class InvalidName(Error, ValueError):
    """A namespace, cache key or table name that cannot be used, e.g. a key
    starting with the reserved ``@sc:``."""


class InvalidUrl(Error, ValueError):
    """A Redis URL that cannot be parsed."""


class InvalidTlsFile(Error, ValueError):
    """A ``ca_file``, ``client_cert_file`` or ``client_key_file`` that cannot
    be read or holds no PEM certificate or key."""


class RedisUnavailable(Error, ConnectionError):
    """Redis could not be reached, failed, or did not answer in time."""
