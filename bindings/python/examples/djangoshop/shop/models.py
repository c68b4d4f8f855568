from django.db import models


class Product(models.Model):
    name = models.TextField()
    price_cents = models.BigIntegerField()

    class Meta:
        ordering = ["id"]

    def as_json(self):
        return {"id": self.id, "name": self.name, "price_cents": self.price_cents}
