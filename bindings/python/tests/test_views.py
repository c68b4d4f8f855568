"""The decorator on the example shop's views, kept fresh by the real
daemon: every way Django writes a row invalidates the cached response."""

import json

import pytest
from django.db import connection
from django.http import HttpResponse
from django.test import RequestFactory

from smartcache.django import Dep, clear_cache, get_cache, smart_cache

from .conftest import wait_until


def get(client, url):
    response = client.get(url)
    return response, response["X-Cache"]


def gone(key):
    return lambda: get_cache().get(key) is None


def test_a_view_is_cached_by_the_decorator(client, products, namespace):
    first, status = get(client, "/products/3")
    assert (first.status_code, status) == (200, "miss")
    second, status = get(client, "/products/3")
    assert status == "hit"
    assert second.content == first.content
    assert json.loads(second.content) == {"id": 3, "name": "Product 3", "price_cents": 300}
    assert second["Content-Type"] == "application/json"
    [info] = get_cache().keys("product:*")
    assert (info.key, info.deps) == ("product:3", ["r:public.shop_product:3"])


def test_a_class_based_view_keeps_its_content_type(client, products, namespace):
    first, status = get(client, "/products")
    assert status == "miss"
    second, status = get(client, "/products")
    assert status == "hit"
    assert second["Content-Type"] == "text/html; charset=utf-8"
    assert second.content == first.content
    assert b"Product 10: 1000" in second.content


def test_each_query_string_is_cached_separately(client, products, namespace):
    cheap, _ = get(client, "/products?max_price=300")
    everything, _ = get(client, "/products")
    assert b"Product 4" not in cheap.content and b"Product 4" in everything.content
    assert get(client, "/products?max_price=300")[1] == "hit"
    assert [k.key for k in get_cache().keys()] == ["product_list", "product_list?max_price=300"]


def test_orm_save_invalidates(client, products, namespace, daemon):
    get(client, "/products/1")
    p = products.objects.get(pk=1)
    p.price_cents = 111
    p.save()
    wait_until(gone("product:1"), what="product:1 deleted")
    response, status = get(client, "/products/1")
    assert (status, json.loads(response.content)["price_cents"]) == ("miss", 111)


def test_queryset_update_invalidates(client, products, namespace, daemon):
    # No post_save signal fires for .update(): a signal-based cache misses it.
    get(client, "/products/2")
    get(client, "/products")
    products.objects.filter(pk__lte=5).update(price_cents=1)
    wait_until(gone("product:2"), what="product:2 deleted")
    wait_until(gone("product_list"), what="product_list deleted")
    assert json.loads(get(client, "/products/2")[0].content)["price_cents"] == 1


def test_bulk_create_invalidates(client, products, namespace, daemon):
    get(client, "/products")
    get(client, "/products?max_price=100")
    products.objects.bulk_create([products(id=11, name="Product 11", price_cents=50)])
    wait_until(gone("product_list"), what="product_list deleted")
    wait_until(gone("product_list?max_price=100"), what="the query string's entry deleted")
    response, status = get(client, "/products?max_price=100")
    assert status == "miss" and b"Product 11" in response.content


def test_raw_sql_update_invalidates(client, products, namespace, daemon):
    get(client, "/products/7")
    with connection.cursor() as cur:
        cur.execute("UPDATE shop_product SET name = 'Renamed' WHERE id = 7")
    wait_until(gone("product:7"), what="product:7 deleted")
    assert json.loads(get(client, "/products/7")[0].content)["name"] == "Renamed"


def test_other_rows_stay_cached(client, products, namespace, daemon):
    get(client, "/products/8")
    get(client, "/products/9")
    products.objects.filter(pk=8).update(price_cents=8)
    wait_until(gone("product:8"), what="product:8 deleted")
    assert get(client, "/products/9")[1] == "hit"


def test_error_responses_are_never_cached(client, products, namespace):
    assert client.get("/products/999").status_code == 404
    assert get_cache().keys() == []
    products.objects.create(id=999, name="Late", price_cents=1)
    assert client.get("/products/999").status_code == 200


def test_post_is_not_cached(client, products, namespace):
    # The view itself decides what POST does; nothing is stored for it.
    client.post("/products")
    assert get_cache().keys() == []


def test_responses_that_set_cookies_are_not_stored(rf, namespace):
    @smart_cache("with_cookie")
    def view(request):
        response = HttpResponse("hi")
        response.set_cookie("session", "secret")
        return response

    assert view(rf.get("/")).cookies["session"].value == "secret"
    assert get_cache().get("with_cookie") is None


def test_query_string_without_deps_is_served_uncached(rf, namespace):
    # Key templates in the daemon's config name exact keys: nothing could
    # invalidate a `?page=2` variant, so it is not stored.
    calls = []

    @smart_cache("page")
    def view(request):
        calls.append(1)
        return HttpResponse("x")

    view(rf.get("/", {"page": 2}))
    view(rf.get("/", {"page": 2}))
    assert len(calls) == 2
    view(rf.get("/"))
    assert view(rf.get("/"))["X-Cache"] == "hit"


def test_clear_cache_clears_exactly_that_key(client, products, namespace):
    get(client, "/products/1")
    get(client, "/products/10")
    assert clear_cache("product:1") == 1
    assert [k.key for k in get_cache().keys()] == ["product:10"]
    assert clear_cache(["product:1", "product:10"]) == 1


def test_an_async_view_is_cached(namespace):
    import asyncio

    calls = []

    @smart_cache("async:{pk}", deps=lambda request, pk: [Dep.row("shop_product", pk)])
    async def view(request, pk):
        calls.append(pk)
        await asyncio.sleep(0)
        return HttpResponse(f"product {pk}", content_type="text/plain")

    request = RequestFactory().get("/")
    first = asyncio.run(view(request, pk=5))
    second = asyncio.run(view(request, pk=5))
    assert (first["X-Cache"], second["X-Cache"]) == ("miss", "hit")
    assert second.content == b"product 5" and second["Content-Type"] == "text/plain"
    assert calls == [5]


def test_deps_name_tables_from_model_metadata(products):
    p = products.objects.get(pk=4)
    assert Dep.model(products).id == "t:public.shop_product"
    assert Dep.instance(p).id == "r:public.shop_product:4"
    assert Dep.row(products, 4) == Dep.instance(p)
    with pytest.raises(ValueError):
        Dep.instance(products(name="unsaved", price_cents=1))
