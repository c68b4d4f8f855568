"""The example shop's settings; each test points DATABASES and SMARTCACHE
at its own database and namespace (see conftest.py)."""

from djangoshop.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
