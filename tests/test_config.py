"""The settings: one Config, its checks, and what it never shows."""

from __future__ import annotations

import pytest

from connector import Config, ConfigError

KEY = "sk_test_config_51c0ffee"


def test_config_refuses_cleartext_to_a_remote_host() -> None:
    with pytest.raises(ConfigError, match="clear text"):
        Config(api_key=KEY, base_url="http://db.internal:8787")
    Config(api_key=KEY, base_url="http://db.internal:8787", allow_insecure=True)
    Config(api_key=KEY, base_url="http://localhost:8787")
    assert KEY not in repr(Config(api_key=KEY))


def test_config_rejects_a_bad_health_address() -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        Config(api_key=KEY, health_addr="9464")
    assert Config(api_key=KEY, health_addr="[::1]:9464").health_addr == "[::1]:9464"


def test_repr_shows_no_key_and_no_lock_password() -> None:
    config = Config(api_key=KEY, ha_lock="postgresql://ha:Sec%40ret!@db.internal/app?name=orders")
    shown = repr(config)
    assert KEY not in shown and "Sec%40ret!" not in shown and "Sec@ret" not in shown
    assert "postgresql://ha:[redacted]@db.internal/app?name=orders" in shown
    broken = repr(Config(api_key=KEY, ha_lock="postgresql://ha:p%zz@ss@db/app"))
    assert "p%zz" not in broken and "ss@db" not in broken
    for lock in (
        "postgresql://app:ab?TOPSECRET@127.0.0.1:1/db",
        "postgresql://app:ab#TOPSECRET@127.0.0.1:1/db",
        "postgresql://app@127.0.0.1:1/db?%70assword=TOPSECRET&name=x",
        "postgresql://app@127.0.0.1:1/db?sslpassword=TOPSECRET",
        "mysql://app:TOPSECRET@127.0.0.1:1/?name=x",
        "mariadb://app:ab?TOPSECRET@127.0.0.1:1/",
        "mysql://app@127.0.0.1:1/?name=x&password=TOPSECRET",
    ):
        assert "TOPSECRET" not in repr(Config(api_key=KEY, ha_lock=lock)), lock


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ("http://127.0.0.1:99999", "port outside 1-65535"),
        ("https://api.example.com/v1/source/listen/", "already ends in /v1/source/listen"),
        ("ftp://api.example.com", "must be an http(s):// or ws(s):// URL"),
        ("https://user:pw@api.example.com", "must not carry credentials"),
    ],
)
def test_base_url_mistakes_are_named(base_url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config(api_key=KEY, base_url=base_url)


@pytest.mark.parametrize(
    "key", ['sk_test_"x"', "sk_test_a,b", "sk_test_a\\b", "sk_test_é", "sk test"]
)
def test_a_key_that_cannot_be_a_subprotocol_is_refused(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config(api_key=key)
    assert key not in str(caught.value)


def test_every_command_line_setting_has_its_flag_env_and_group() -> None:
    import dataclasses

    flags = set()
    for item in dataclasses.fields(Config):
        spec = item.metadata.get("setting")
        if spec is None:
            continue
        assert spec.flag.startswith("--") and spec.flag not in flags
        flags.add(spec.flag)
        assert spec.group in {"source", "engine", "limits", "operations", "logging"}
        assert spec.hidden or spec.env == "ABLO_" + spec.flag[2:].replace("-", "_").upper()
