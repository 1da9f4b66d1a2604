"""application/settings.py: your settings, each read from one environment variable with a safe default."""

import pytest

from app import create_app
from application import settings
from deployment.settings import ConfigError, Settings


def test_defaults():
    assert settings.from_env({}) == {"ANNOUNCEMENT_MAX_LENGTH": 500}


def test_read_from_the_environment():
    assert settings.from_env({"ANNOUNCEMENT_MAX_LENGTH": " 80 "})["ANNOUNCEMENT_MAX_LENGTH"] == 80


@pytest.mark.parametrize("value", ["many", "1.5", "0", "-3"])
def test_a_bad_value_is_refused_naming_the_variable(value):
    with pytest.raises(ConfigError, match="ANNOUNCEMENT_MAX_LENGTH"):
        settings.from_env({"ANNOUNCEMENT_MAX_LENGTH": value})


def test_create_app_puts_them_in_app_config(monkeypatch):
    monkeypatch.setenv("ANNOUNCEMENT_MAX_LENGTH", "80")
    app = create_app(Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "unit"}))
    assert app.config["ANNOUNCEMENT_MAX_LENGTH"] == 80


def test_create_app_refuses_a_bad_value(monkeypatch):
    monkeypatch.setenv("ANNOUNCEMENT_MAX_LENGTH", "many")
    with pytest.raises(ConfigError, match="ANNOUNCEMENT_MAX_LENGTH"):
        create_app(Settings.from_env({"APP_ENV": "development", "INSTANCE_NAME": "unit"}))
