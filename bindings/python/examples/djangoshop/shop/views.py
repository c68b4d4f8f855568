from django.http import JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views import View

from smartcache.django import Dep, smart_cache

from .models import Product


# One entry per product, deleted when that row changes.
@smart_cache("product:{pk}", deps=lambda request, pk: [Dep.row(Product, pk)])
def product(request, pk):
    return JsonResponse(get_object_or_404(Product, pk=pk).as_json())


# One entry per query string (?max_price=500), each deleted when any
# product changes.
class ProductList(View):
    @smart_cache("product_list", deps=[Dep.model(Product)])
    def get(self, request):
        products = Product.objects.all()
        if "max_price" in request.GET:
            products = products.filter(price_cents__lte=int(request.GET["max_price"]))
        return render(request, "shop/product_list.html", {"products": products})
