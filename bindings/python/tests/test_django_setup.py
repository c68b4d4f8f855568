"""Settings, the admin page and `manage.py smartcache_config`."""

from urllib.parse import urlparse

from django.contrib.auth.models import User
from django.core.management import call_command

from smartcache import Cache
from smartcache.django import conf, get_cache

from .conftest import CLUSTER, REDIS_URL


def test_smartcache_config_prints_the_models_tables(capsys):
    call_command("smartcache_config")
    out = capsys.readouterr().out
    assert '[[tables]]\nname = "shop_product"' in out
    assert "auth_user" not in out
    call_command("smartcache_config", "auth")
    assert 'name = "auth_user_groups"' in capsys.readouterr().out


def test_the_original_packages_settings_are_accepted(settings):
    del settings.SMARTCACHE
    settings.SMART_REDIS_HOST = "10.1.2.3"
    settings.SMART_REDIS_PORT = 6380
    settings.SMART_REDIS_DB = 2
    settings.SMART_REDIS_PASSWORD = "p@ss"
    settings.SMART_REDIS_NAMESPACE = "legacy"
    settings.SMART_REDIS_RESTART_AND_CLEAR_CACHE = True
    kwargs = conf.cache_kwargs()
    assert kwargs["url"] == "redis://:p%40ss@10.1.2.3:6380/2"
    assert (kwargs["namespace"], kwargs["clear_on_start"]) == ("legacy", True)


def test_smartcache_settings_win_over_the_original_ones(settings):
    settings.SMART_REDIS_NAMESPACE = "legacy"
    settings.SMARTCACHE = {"NAMESPACE": "new", "TTL": 60, "OPTIONS": {"timeout": 0.1}}
    kwargs = conf.cache_kwargs()
    assert (kwargs["namespace"], kwargs["default_ttl"], kwargs["timeout"]) == ("new", 60, 0.1)
    # Without the original's default of clearing on every start.
    assert kwargs["clear_on_start"] is False


def test_a_project_on_the_original_settings_caches(settings, namespace):
    if CLUSTER:
        return  # the original's settings name one server
    url = urlparse(REDIS_URL)
    del settings.SMARTCACHE
    settings.SMART_REDIS_HOST = url.hostname
    settings.SMART_REDIS_PORT = url.port
    settings.SMART_REDIS_DB = int(url.path.lstrip("/") or 0)
    settings.SMART_REDIS_NAMESPACE = namespace
    assert get_cache().namespace == namespace
    assert get_cache().fetch("k", [], lambda: 1) == (1, "computed")


def test_clear_on_start_clears_the_namespace_when_first_used(settings, namespace):
    Cache(REDIS_URL, namespace=namespace, cluster=CLUSTER).set("old", 1)
    settings.SMARTCACHE = {**settings.SMARTCACHE, "CLEAR_ON_START": True}
    assert get_cache().get("old") is None


def staff(client):
    user = User.objects.create_user("staff", password="x", is_staff=True)
    client.force_login(user)
    return user


def test_admin_lists_keys_with_size_deps_and_age(client, products, namespace):
    client.get("/products/2")
    staff(client)
    page = client.get("/admin/smartcache/cachedkey/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<code>product:2</code>" in html
    assert "r:public.shop_product:2" in html
    assert "bytes" in html  # filesizeformat of the size
    assert " s</td>" in html  # age in seconds
    assert namespace in html


def test_admin_pattern_search(client, products, namespace):
    client.get("/products/2")
    client.get("/products")
    staff(client)
    html = client.get("/admin/smartcache/cachedkey/", {"pattern": "product:*"}).content.decode()
    assert "<code>product:2</code>" in html and "<code>product_list</code>" not in html


def test_staff_clear_a_key_and_a_table(client, products, namespace):
    client.get("/products/2")
    client.get("/products/3")
    client.get("/products")
    staff(client)
    response = client.post("/admin/smartcache/cachedkey/", {"key": "product:2"})
    assert response.status_code == 302
    assert sorted(k.key for k in get_cache().keys()) == ["product:3", "product_list"]
    client.post("/admin/smartcache/cachedkey/", {"table": "shop_product"})
    assert get_cache().keys() == []


def test_non_staff_cannot_see_or_clear(client, products, namespace):
    client.get("/products/2")
    client.force_login(User.objects.create_user("customer", password="x"))
    assert client.get("/admin/smartcache/cachedkey/").status_code == 302
    client.post("/admin/smartcache/cachedkey/", {"key": "product:2"})
    assert [k.key for k in get_cache().keys()] == ["product:2"]
