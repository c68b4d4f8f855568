"""Type stubs of the native module; see the docstrings for behaviour."""

from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any, Literal, Optional, Union

Seconds = Union[float, timedelta]
Status = Literal["hit", "computed", "shared", "uncached"]
Json = Any
"""A value ``json.dumps`` can write; it comes back as ``json.loads`` reads it."""

class Dep:
    """What a cache entry depends on: a whole table, or one row of it."""

    @staticmethod
    def table(table: str) -> Dep: ...
    @staticmethod
    def row(table: str, pk: Any) -> Dep:
        """``pk``: an int, str, bool, Decimal, UUID, datetime, date or time,
        or a tuple of them for a composite key."""
    @property
    def id(self) -> str: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

class KeyInfo:
    """A cached entry as ``Cache.keys`` lists it."""

    @property
    def key(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def deps(self) -> list[str]: ...
    @property
    def age(self) -> Optional[float]: ...

class Cache:
    """A handle on the cache; share one per process."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        namespace: str = "cache",
        cluster: bool = False,
        *,
        lazy: bool = False,
        default_ttl: Optional[Seconds] = None,
        lease_ttl: Optional[Seconds] = None,
        lease_wait: Optional[Seconds] = None,
        timeout: Optional[Seconds] = None,
        connect_timeout: Optional[Seconds] = None,
        breaker_cooldown: Optional[Seconds] = None,
        clear_on_start: bool = False,
        local_max_bytes: Optional[int] = None,
        local_max_entries: Optional[int] = None,
        local_max_lag: Optional[Seconds] = None,
        ca_file: Optional[str] = None,
        client_cert_file: Optional[str] = None,
        client_key_file: Optional[str] = None,
    ) -> None: ...
    @property
    def namespace(self) -> str: ...
    def get_or_compute(
        self, key: str, deps: Iterable[Dep], compute: Callable[[], Json], *, ttl: Optional[Seconds] = None
    ) -> Json: ...
    def fetch(
        self, key: str, deps: Iterable[Dep], compute: Callable[[], Json], *, ttl: Optional[Seconds] = None
    ) -> tuple[Json, Status]: ...
    def aget_or_compute(
        self,
        key: str,
        deps: Iterable[Dep],
        compute: Callable[[], Union[Awaitable[Json], Json]],
        *,
        ttl: Optional[Seconds] = None,
    ) -> Awaitable[Json]: ...
    def afetch(
        self,
        key: str,
        deps: Iterable[Dep],
        compute: Callable[[], Union[Awaitable[Json], Json]],
        *,
        ttl: Optional[Seconds] = None,
    ) -> Awaitable[tuple[Json, Status]]: ...
    def get(self, key: str) -> Optional[Json]: ...
    def aget(self, key: str) -> Awaitable[Optional[Json]]: ...
    def set(
        self, key: str, value: Json, deps: Optional[Iterable[Dep]] = None, *, ttl: Optional[Seconds] = None
    ) -> bool: ...
    def aset(
        self, key: str, value: Json, deps: Optional[Iterable[Dep]] = None, *, ttl: Optional[Seconds] = None
    ) -> Awaitable[bool]: ...
    def clear(self, key: str) -> bool: ...
    def aclear(self, key: str) -> Awaitable[bool]: ...
    def clear_table(self, table: str) -> int: ...
    def aclear_table(self, table: str) -> Awaitable[int]: ...
    def clear_all(self) -> int: ...
    def aclear_all(self) -> Awaitable[int]: ...
    def keys(self, pattern: str = "*", limit: Optional[int] = None) -> list[KeyInfo]: ...
    def keys_up_to(self, pattern: str, limit: int) -> tuple[list[KeyInfo], bool]: ...
    def local_stats(self) -> Optional[dict[str, Union[int, bool]]]: ...
    def ping(self) -> None: ...

def _after_fork_in_child() -> None: ...
