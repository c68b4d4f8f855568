"""smartcache for Django: view caching by decorator, kept fresh by the
invalidator.

A drop-in for django-smart-redis: put ``"smartcache.django"`` in
``INSTALLED_APPS`` and change the imports::

    from smartcache.django import Dep, smart_cache, clear_cache

    @smart_cache("product:{pk}", deps=lambda request, pk: [Dep.row(Product, pk)])
    def product(request, pk): ...

Settings: a ``SMARTCACHE`` dict (see ``smartcache.django.conf``), or the
original package's ``SMART_REDIS_HOST``, ``_PORT``, ``_DB``,
``_PASSWORD``, ``_NAMESPACE`` and ``_RESTART_AND_CLEAR_CACHE``.
"""

from .cache import clear_cache, get_cache
from .decorators import smart_cache
from .deps import Dep

__all__ = ["Dep", "smart_cache", "clear_cache", "get_cache"]
