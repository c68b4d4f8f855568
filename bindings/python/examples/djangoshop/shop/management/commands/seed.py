from django.core.management.base import BaseCommand

from shop.models import Product


class Command(BaseCommand):
    help = "Create products 1..=100 if there are none."

    def handle(self, **options):
        if Product.objects.exists():
            self.stdout.write("products already there")
            return
        Product.objects.bulk_create(
            Product(id=i, name=f"Product {i}", price_cents=100 * i) for i in range(1, 101)
        )
        self.stdout.write("created 100 products")
