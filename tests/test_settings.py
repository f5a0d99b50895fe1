"""Settings: the declarations, the names clients use, validation that warns and falls back."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fim_lsp import cli
from fim_lsp.settings import SETTINGS, Settings, declared, from_client, merge

NUMBERS = [setting for setting in SETTINGS.values() if setting.kind in (int, float)]


def test_defaults_match_the_documentation():
    settings = Settings()
    assert settings.model == "CarperAI/FIM-NeoX-1.3B"
    assert (settings.device, settings.quantization) == ("auto", "int8")
    assert (settings.context_length, settings.max_new_tokens, settings.temperature) == (
        None,  # by device: DEVICE_CONTEXT
        64,
        0.0,
    )


def test_an_unset_context_is_the_devices_and_never_past_the_models_window():
    unset = Settings()
    assert unset.with_context_for("cpu", 2048).context_length == 1024
    assert unset.with_context_for("cuda", 2048).context_length == 2048
    assert unset.with_context_for("team server", 2048).context_length == 2048
    assert unset.with_context_for("cuda", 1024).context_length == 1024  # the model's window
    assert Settings(context_length=1536).with_context_for("cpu", 2048).context_length == 1536
    assert Settings(context_length=4096).with_context_for("cpu", 2048).context_length == 2048


def test_every_setting_is_fully_declared():
    for setting in SETTINGS.values():
        assert setting.help.endswith("."), setting.name
        if setting.default is not None:  # each default passes its own validation
            assert setting.parse(setting.default) == setting.default, setting.name
        if setting.kind in (int, float):
            assert setting.minimum is not None and setting.maximum is not None, setting.name
    startup = {name for name, setting in SETTINGS.items() if setting.startup}
    team = {"backend", "api_key", "fallback", "cache_salt"}
    assert startup == {"model", "device", "quantization"} | team


def test_team_settings_reload_only_a_team_backend():
    local = Settings()
    assert not Settings(api_key="k").reloads_model(local)  # the local engine does not read it
    assert Settings(backend="http://gpu:8000").reloads_model(local)
    team = Settings(backend="http://gpu:8000")
    assert Settings(backend="http://gpu:8000", api_key="k").reloads_model(team)
    assert not Settings(backend="http://gpu:8000", max_new_tokens=5).reloads_model(team)
    assert SETTINGS["log_file"].nullable and not SETTINGS["model"].nullable
    assert (SETTINGS["cache_reuse"].kind, SETTINGS["temperature"].kind) == (bool, float)


@pytest.mark.parametrize("setting", NUMBERS, ids=lambda setting: setting.key)
def test_each_bound_is_inclusive_and_enforced(setting):
    low, high = setting.minimum, setting.maximum
    step = 1 if setting.kind is int else 0.01
    assert merge(Settings(), {setting.key: low})[0] == Settings(**{setting.name: low})
    assert merge(Settings(), {setting.key: high})[0] == Settings(**{setting.name: high})
    for outside, words in ((low - step, "below the minimum"), (high + step, "above the maximum")):
        settings, warnings = merge(Settings(), {setting.key: outside})
        assert settings == Settings()
        assert len(warnings) == 1 and words in warnings[0]


@pytest.mark.parametrize("setting", NUMBERS, ids=lambda setting: setting.key)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(setting, value):
    settings, warnings = merge(Settings(), {setting.key: value})
    assert settings == Settings()
    assert len(warnings) == 1 and "expected a finite number" in warnings[0]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"maxNewTokens": "many"}, "expected a number"),
        ({"maxNewTokens": "64"}, "expected a number"),
        ({"maxNewTokens": 0}, "below the minimum"),
        ({"debounceMs": 10**9}, "above the maximum 2000"),
        ({"temperature": 2.5}, "above the maximum 2"),
        ({"device": "tpu"}, "not one of auto, cpu, cuda"),
        ({"multiline": "sometimes"}, "not one of auto, always, never"),
        ({"temperature": True}, "expected a number"),
        ({"contextLength": 10.5}, "whole number"),
        ({"contextLength": [2048]}, "expected a number"),
        ({"logFile": 5}, "expected text"),
        ({"logFile": {"path": "x"}}, "expected text"),
        ({"model": "  "}, "empty value"),
        ({"cacheReuse": 1}, "expected true or false"),
        ({"cacheReuse": "false"}, "expected true or false"),
        ({"colour": "blue"}, "unknown setting"),
    ],
)
def test_bad_options_warn_and_keep_the_previous_value(options, message):
    settings, warnings = merge(Settings(), options)
    assert settings == Settings()
    assert len(warnings) == 1 and message in warnings[0]


def test_a_refused_value_keeps_the_previous_one_not_the_default():
    before = Settings(max_new_tokens=8)
    after, warnings = merge(before, {"maxNewTokens": 10**9, "temperature": 0.5})
    assert (after.max_new_tokens, after.temperature) == (8, 0.5)
    assert warnings == ["setting 'maxNewTokens': 1000000000 is above the maximum 1024; keeping 8"]


def test_values_take_the_declared_type():
    settings, warnings = merge(Settings(), {"maxNewTokens": 32.0, "temperature": 1})
    assert warnings == []
    assert type(settings.max_new_tokens) is int and settings.max_new_tokens == 32
    assert type(settings.temperature) is float and settings.temperature == 1.0


def test_camel_case_options_apply_over_earlier_layers():
    cli_layer, _ = merge(Settings(), {"max_new_tokens": 32, "device": "cpu"})
    init, _ = merge(cli_layer, {"maxNewTokens": 16, "contextLength": 1024})
    live, warnings = merge(init, {"maxNewTokens": 8})
    assert (live.max_new_tokens, live.context_length, live.device) == (8, 1024, "cpu")
    assert warnings == []


def test_precedence_from_the_command_line_to_a_live_change():
    args = cli.build_parser().parse_args(
        ["--temperature", "0.5", "serve", "--max-new-tokens", "32", "--debounce-ms", "5"]
    )
    flags, problems = cli.settings_from(args)
    assert problems == []
    assert (flags.temperature, flags.max_new_tokens, flags.debounce_ms) == (0.5, 32, 5)
    init, _ = merge(flags, from_client({"maxNewTokens": 16, "debounceMs": 7}))
    live, _ = merge(init, from_client({"fimLsp": {"maxNewTokens": 8}}))
    assert (live.temperature, live.max_new_tokens, live.debounce_ms) == (0.5, 8, 7)


def test_settings_payloads_from_clients():
    assert from_client({"fimLsp": {"model": "demo"}}) == {"model": "demo"}
    assert from_client({"model": "demo"}) == {"model": "demo"}
    assert from_client(None) == {}
    assert from_client({"fimLsp": None}) == {}


def test_only_startup_settings_reload_the_model():
    settings = Settings()
    for name in ("model", "device", "quantization"):
        value = "demo" if name == "model" else list(SETTINGS[name].choices)[-1]
        assert settings.reloads_model(merge(settings, {name: value})[0]), name
    live = {"maxNewTokens": 3, "multiline": "never", "cacheReuse": False, "logFile": "x.log"}
    assert not settings.reloads_model(merge(settings, live)[0])


def test_null_restores_the_default():
    changed, _ = merge(Settings(), {"maxNewTokens": 8, "logFile": "/tmp/x.log"})
    restored, warnings = merge(changed, {"maxNewTokens": None, "logFile": None})
    assert restored == Settings() and warnings == []


@pytest.mark.parametrize("hint", [list[str], int | str, dict])
def test_only_plain_types_can_be_declared(hint):
    field = next(f for f in dataclasses.fields(Settings) if f.name == "model")
    with pytest.raises(TypeError, match="is not bool, int, float or str"):
        declared(field, hint)


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
    assert SETTINGS["api_key"].shown(settings.api_key) == "<hidden>"
    kept, warnings = merge(settings, {"apiKey": " "})
    assert kept.api_key == "secret-key"
    assert len(warnings) == 1 and "keeping <hidden>" in warnings[0]
    assert "secret-key" not in warnings[0]
