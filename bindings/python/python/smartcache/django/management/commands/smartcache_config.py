"""Prints the invalidator's ``[[tables]]`` for this project's models."""

import json

from django.apps import apps
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Print the smartcache-invalidator [[tables]] entries for the project's models "
        "(table names from Model._meta.db_table), to paste into smartcache.toml."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "app_labels", nargs="*", help="only these apps (default: all but django.contrib.*)"
        )
        parser.add_argument(
            "--include-contrib", action="store_true", help="also django.contrib apps"
        )

    def handle(self, app_labels=(), include_contrib=False, **options):
        if app_labels:
            configs = [apps.get_app_config(label) for label in app_labels]
        else:
            configs = [
                c
                for c in apps.get_app_configs()
                if include_contrib or not c.name.startswith("django.contrib.")
            ]
        tables = []
        for config in configs:
            for model in config.get_models(include_auto_created=True):
                meta = model._meta
                if meta.managed and not meta.proxy and not meta.swapped:
                    if meta.db_table not in tables:
                        tables.append(meta.db_table)
        self.stdout.write("# smartcache-invalidator tables for this project's models")
        for table in tables:
            # A JSON string is a valid TOML basic string.
            self.stdout.write(f"\n[[tables]]\nname = {json.dumps(table)}")
