from django.apps import AppConfig


class SmartCacheConfig(AppConfig):
    name = "smartcache.django"
    label = "smartcache"
    verbose_name = "Smart cache"
    default_auto_field = "django.db.models.AutoField"
