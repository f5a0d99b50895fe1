"""Settings: defaults, the names clients use, validation that warns and falls back."""

from __future__ import annotations

import pytest

from fim_lsp.settings import Settings, from_client, merge, shown


def test_defaults_match_the_documentation():
    settings = Settings()
    assert settings.model == "CarperAI/FIM-NeoX-1.3B"
    assert (settings.device, settings.quantization) == ("auto", "int8")
    assert (settings.context_length, settings.max_new_tokens, settings.temperature) == (
        2048,
        64,
        0.0,
    )


def test_camel_case_options_apply_over_earlier_layers():
    cli, _ = merge(Settings(), {"max_new_tokens": 32, "device": "cpu"})
    init, _ = merge(cli, {"maxNewTokens": 16, "contextLength": 1024})
    live, warnings = merge(init, {"maxNewTokens": 8})
    assert (live.max_new_tokens, live.context_length, live.device) == (8, 1024, "cpu")
    assert warnings == []


@pytest.mark.parametrize(
    "options, message",
    [
        ({"maxNewTokens": "many"}, "expected a number"),
        ({"maxNewTokens": 0}, "below the minimum"),
        ({"device": "tpu"}, "not one of"),
        ({"temperature": True}, "expected a number"),
        ({"contextLength": 10.5}, "whole number"),
        ({"colour": "blue"}, "unknown setting"),
    ],
)
def test_bad_options_warn_and_keep_the_previous_value(options, message):
    settings, warnings = merge(Settings(), options)
    assert settings == Settings()
    assert len(warnings) == 1 and message in warnings[0]


def test_settings_payloads_from_clients():
    assert from_client({"fimLsp": {"model": "demo"}}) == {"model": "demo"}
    assert from_client({"model": "demo"}) == {"model": "demo"}
    assert from_client(None) == {}
    assert from_client({"fimLsp": None}) == {}


def test_only_startup_settings_reload_the_model():
    settings = Settings()
    assert settings.reloads_model(merge(settings, {"model": "demo"})[0])
    assert not settings.reloads_model(merge(settings, {"maxNewTokens": 3})[0])


def test_null_restores_the_default():
    changed, _ = merge(Settings(), {"maxNewTokens": 8, "logFile": "/tmp/x.log"})
    restored, warnings = merge(changed, {"maxNewTokens": None, "logFile": None})
    assert restored == Settings() and warnings == []


def test_team_server_settings():
    settings, warnings = merge(
        Settings(),
        {"backend": "http://gpu-box:8000/v1/", "apiKey": "k", "fallback": "none", "cacheSalt": "s"},
    )
    assert warnings == []
    assert (settings.backend, settings.api_key, settings.fallback, settings.cache_salt) == (
        "http://gpu-box:8000",
        "k",
        "none",
        "s",
    )
    assert Settings().backend == "local" and Settings().fallback == "local"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"backend": "gpu-box:8000"}, "neither local nor a server URL"),
        ({"backend": "ftp://gpu-box"}, "neither local nor a server URL"),
        ({"backend": "http://gpu-box:port"}, "Port could not be cast"),
        ({"fallback": "remote"}, "not one of local, none"),
        ({"apiKey": " "}, "empty value"),
    ],
)
def test_bad_team_server_settings_warn(options, message):
    settings, warnings = merge(Settings(), options)
    assert settings == Settings()
    assert len(warnings) == 1 and message in warnings[0]


def test_the_api_key_is_never_shown():
    settings, _ = merge(Settings(), {"apiKey": "secret-key"})
    assert "secret-key" not in repr(settings)
    assert shown("api_key", settings.api_key) == "<hidden>"
    kept, warnings = merge(settings, {"apiKey": " "})
    assert kept.api_key == "secret-key"
    assert len(warnings) == 1 and "keeping <hidden>" in warnings[0]
    assert "secret-key" not in warnings[0]
