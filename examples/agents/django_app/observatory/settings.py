"""Settings of the example site: one app, alert_manager, whose agent starts with Django.

The agent reads corral's configuration like every corral process: ``CORRAL_DATA_DIR``,
``CORRAL_NATS_URL``, ``CORRAL_CREDS`` ... (see docs/configuration.md), not Django settings.
"""

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["alert_manager"]
ROOT_URLCONF = "observatory.urls"
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}
