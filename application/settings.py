"""Your settings: one environment variable each, with a safe default, put into app.config by create_app().
The deployment's own settings (REDIS_URL, SECRET_KEY, IO_COOKIE_*, ...) are in deployment/settings.py;
both are listed in docs/configuration.md."""

import os

from deployment.settings import ConfigError, env_number


def from_env(env=os.environ):
    """app.config entries from the environment; a bad value raises ConfigError, naming the variable."""
    return {
        # ANNOUNCEMENT_MAX_LENGTH: characters kept of a POST /api/announce text
        "ANNOUNCEMENT_MAX_LENGTH": env_number(env, "ANNOUNCEMENT_MAX_LENGTH", 500, minimum=1),
    }


__all__ = ["ConfigError", "from_env"]
