"""The admin page: the namespace's cached keys with size, dependencies and
age, and buttons that clear a key or a table, for staff."""

from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import urlencode

from .. import Error
from .cache import get_cache
from .models import CachedKey

LIMIT = 1000


def _staff(request):
    return request.user.is_active and request.user.is_staff


@admin.register(CachedKey)
class CachedKeyAdmin(admin.ModelAdmin):
    def has_module_permission(self, request):
        return _staff(request)

    def has_view_permission(self, request, obj=None):
        return _staff(request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        if request.method == "POST":
            return self._clear(request)
        pattern = request.GET.get("pattern") or "*"
        cache = get_cache()
        try:
            keys, more = cache.keys_up_to(pattern, LIMIT)
            error = None
        except Error as e:
            keys, more, error = [], False, str(e)
        context = {
            **self.admin_site.each_context(request),
            "title": "Cached keys",
            "opts": self.model._meta,
            "namespace": cache.namespace,
            "pattern": pattern,
            "keys": [
                {"key": k.key, "size": k.size_bytes, "deps": k.deps, "age": _age(k.age)}
                for k in keys
            ],
            "more": more,
            "limit": LIMIT,
            "error": error,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "smartcache/admin_keys.html", context)

    def _clear(self, request):
        cache = get_cache()
        key, table = request.POST.get("key"), request.POST.get("table")
        try:
            if key:
                cleared = cache.clear(key)
                self.message_user(request, f"Cleared {key!r}." if cleared else f"{key!r} was not cached.")
            elif table:
                n = cache.clear_table(table)
                self.message_user(request, f"Cleared {n} entries of table {table!r}.")
        except Error as e:
            self.message_user(request, f"Nothing cleared: {e}", level=messages.ERROR)
        url = reverse("admin:smartcache_cachedkey_changelist")
        pattern = request.POST.get("pattern")
        if pattern:
            url += "?" + urlencode({"pattern": pattern})
        return HttpResponseRedirect(url)


def _age(seconds):
    if seconds is None:
        return "–"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
