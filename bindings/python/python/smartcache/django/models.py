from django.db import models


class CachedKey(models.Model):
    """No table: the admin's entry point for the cache listing, which reads
    Redis."""

    class Meta:
        managed = False
        default_permissions = ()
        verbose_name = "cached key"
        verbose_name_plural = "cached keys"
