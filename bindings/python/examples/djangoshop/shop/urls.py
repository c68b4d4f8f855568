from django.urls import path

from . import views

urlpatterns = [
    path("products/<int:pk>", views.product, name="product"),
    path("products", views.ProductList.as_view(), name="product_list"),
]
