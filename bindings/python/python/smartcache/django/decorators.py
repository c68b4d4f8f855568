"""``smart_cache``: cache a view's response until the data it depends on
changes."""

import base64
import functools
import inspect
import logging

from django.http import HttpRequest, HttpResponse

from .. import InvalidName
from .cache import get_cache

logger = logging.getLogger("smartcache")

# Not stored with a cached response: the server and the middleware set
# these for each response.
_SKIPPED_HEADERS = {"content-length", "set-cookie", "x-cache"}


class _Uncacheable(Exception):
    """Raised from inside the fill so the lease is given back and nothing
    is stored; carries the response to return as it is."""

    def __init__(self, response):
        super().__init__()
        self.response = response


def _request_and_args(args):
    """The request and the URL's positional args, for a function view
    ``(request, *args)`` or a view method ``(self, request, *args)``."""
    if args and isinstance(args[0], HttpRequest):
        return args[0], args[1:]
    if len(args) > 1 and isinstance(args[1], HttpRequest):
        return args[1], args[2:]
    # django-smart-redis' style: a method that reads self.request.
    if args and isinstance(getattr(args[0], "request", None), HttpRequest):
        return args[0].request, args[1:]
    raise TypeError("smart_cache decorates a view: (request, ...) or (self, request, ...)")


def _freeze(response):
    """The response as a JSON value, or ``_Uncacheable``: anything but a
    2xx, a streaming response, one that sets cookies or says ``private``
    or ``no-store``."""
    if getattr(response, "streaming", False) or not 200 <= response.status_code < 300:
        raise _Uncacheable(response)
    if response.cookies:
        raise _Uncacheable(response)
    cache_control = response.get("Cache-Control", "").lower()
    if "private" in cache_control or "no-store" in cache_control:
        raise _Uncacheable(response)
    if callable(getattr(response, "render", None)) and not getattr(response, "is_rendered", True):
        response.render()
    frozen = {
        "status": response.status_code,
        "headers": [
            [name, value]
            for name, value in response.items()
            if name.lower() not in _SKIPPED_HEADERS
        ],
    }
    try:
        frozen["body"] = response.content.decode("utf-8")
    except UnicodeDecodeError:
        frozen["body_base64"] = base64.b64encode(response.content).decode("ascii")
    return frozen


def _thaw(frozen, status):
    if "body" in frozen:
        content = frozen["body"].encode("utf-8")
    else:
        content = base64.b64decode(frozen["body_base64"])
    response = HttpResponse(content, status=frozen["status"])
    for name, value in frozen["headers"]:
        response[name] = value
    response["X-Cache"] = "hit" if status == "hit" else "miss"
    return response


def smart_cache(key, deps=(), *, ttl=None):
    """Caches the view's 2xx responses under ``key`` until the data they
    depend on changes.

    ``key`` may use the URL's keyword arguments, ``"product:{pk}"``, and
    positional ones, ``"{0}"``. Each query string is its own entry,
    ``product_list?page=2``. ``deps`` is a list of ``Dep`` or a callable
    ``deps(request, *args, **kwargs)`` returning one; every entry of the
    view, each query string's too, is registered under them, so the
    invalidator deletes them all on a committed change.

    Without ``deps`` the entry is found by the invalidator's key templates
    (``keys = ["product:{id}"]``), which name exact keys: a request with a
    query string is then served uncached, since nothing could invalidate
    its entry.

    Works on function views and class-based view methods (``get``), sync or
    async. The response keeps its status, content type and other headers
    (cookies aside) and gets ``X-Cache: hit`` or ``miss``. Only GET and HEAD
    are cached; error responses, streaming responses, responses that set
    cookies or say ``Cache-Control: private`` / ``no-store`` are returned
    as they are and never stored. If Redis is down the view runs as if it
    were not decorated.

    >>> @smart_cache("product:{pk}", deps=lambda request, pk: [Dep.row(Product, pk)])
    ... def product(request, pk): ...
    >>> class ProductList(View):
    ...     @smart_cache("product_list", deps=[Dep.model(Product)])
    ...     def get(self, request): ...
    """

    def decorate(view):
        def entry(args, kwargs):
            """The entry's key and deps, or None to run the view uncached."""
            request, url_args = _request_and_args(args)
            if request.method not in ("GET", "HEAD"):
                return None
            entry_key = key.format(*url_args, **kwargs)
            entry_deps = deps(request, *url_args, **kwargs) if callable(deps) else list(deps)
            query = request.META.get("QUERY_STRING", "")
            if query:
                if not entry_deps:
                    return None
                entry_key = f"{entry_key}?{query}"
            return entry_key, entry_deps

        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args, **kwargs):
                found = entry(args, kwargs)
                if found is None:
                    return await view(*args, **kwargs)

                async def compute():
                    return _freeze(await view(*args, **kwargs))

                try:
                    frozen, status = await get_cache().afetch(*found, compute, ttl=ttl)
                except _Uncacheable as u:
                    return u.response
                except InvalidName:
                    logger.warning("smartcache: cannot cache %r", found[0], exc_info=True)
                    return await view(*args, **kwargs)
                return _thaw(frozen, status)

            return async_wrapper

        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            found = entry(args, kwargs)
            if found is None:
                return view(*args, **kwargs)
            try:
                frozen, status = get_cache().fetch(
                    *found, lambda: _freeze(view(*args, **kwargs)), ttl=ttl
                )
            except _Uncacheable as u:
                return u.response
            except InvalidName:
                logger.warning("smartcache: cannot cache %r", found[0], exc_info=True)
                return view(*args, **kwargs)
            return _thaw(frozen, status)

        return wrapper

    return decorate
