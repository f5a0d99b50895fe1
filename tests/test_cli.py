"""The command line, run as a user runs it: complete (JSON, dry run, errors), doctor, version."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys

import pytest

from fim_lsp import cli
from fim_lsp.engine.loading import DEMO_MODEL
from fim_lsp.settings import SETTINGS, Settings
from tests import tiny_model

CARD = tiny_model.SHARED / "assets" / "fim-neox-1.3b" / "model_card_test_vectors.json"


def fim_lsp(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fim_lsp", *args], capture_output=True, text=True, check=check
    )


@pytest.fixture(scope="module")
def card_file(tmp_path_factory):
    """The model card's example as a file, with the cursor between prefix and suffix."""
    card = json.loads(CARD.read_text())
    path = tmp_path_factory.mktemp("card") / "score.py"
    path.write_text(card["prefix"] + card["suffix"])
    line = card["prefix"].count("\n") + 1
    column = len(card["prefix"].rsplit("\n", 1)[-1]) + 1
    return f"{path}:{line}:{column}", card


def test_dry_run_prints_the_card_prompt_with_only_a_tokenizer(tiny_model_dir, card_file):
    where, card = card_file
    out = fim_lsp("complete", where, "--dry-run", "--json", "--model", str(tiny_model_dir))
    report = json.loads(out.stdout)
    assert report["prompt_ids"] == card["model_input_ids (SPM: SUF s PRE p MID)"]
    assert report["prompt"] == card["decode(model_input_ids)"]


def test_complete_json_reports_the_run(tiny_model_dir, card_file):
    where, _ = card_file
    flags = ["--model", str(tiny_model_dir), "--max-new-tokens", "6", "--max-time-ms", "0"]
    out = fim_lsp("complete", where, "--json", *flags)
    report = json.loads(out.stdout)
    for key in (
        "completion",
        "prompt_ids",
        "prompt_tokens",
        "generated_tokens",
        "model",
        "device",
        "quantization",
    ):
        assert key in report
    assert set(report["timings_ms"]) >= {"load", "prefill", "decode", "total"}
    assert report["quantization"].startswith("int8") and report["device"] == "cpu"
    # The faster int8 layers here are timed at load: the C kernels or bitsandbytes.
    if report["quantization"] == "int8 (c-kernel)":
        assert report["attention"] == "C attention kernel, fp16 KV cache"
        assert report["decode_steps"] == "C step (one C call per layer)"
    else:
        assert report["quantization"] == "int8 (bitsandbytes)"
    assert 0 < report["generated_tokens"] <= 6
    assert report["prompt_tokens"] == len(report["prompt_ids"]) == 28
    plain = fim_lsp("complete", where, *flags)
    assert plain.stdout == report["completion"] + "\n"
    assert plain.stderr.count("\n") < 20  # logs, not progress bars, go to stderr


@pytest.mark.parametrize("where", ["nofile.py:1:1", "{file}:0:1", "{file}:99:1", "{file}:1"])
def test_bad_locations_are_explained(card_file, where):
    file = card_file[0].split(":")[0]
    out = fim_lsp("complete", where.format(file=file), "--dry-run", check=False)
    assert out.returncode != 0 and "fim-lsp" in out.stderr and "Traceback" not in out.stderr


def test_bad_option_values_are_refused(card_file):
    out = fim_lsp("complete", card_file[0], "--max-new-tokens", "0", check=False)
    assert out.returncode == 2 and "below the minimum" in out.stderr


def other_value(setting):
    """A valid value of `setting` that is not its default, as it is typed on the command line."""
    if setting.choices:
        return next(value for value in setting.choices if value != setting.default)
    if setting.kind in (int, float):
        return setting.maximum
    if setting.name == "backend":
        return "http://gpu-box:8000"
    return "elsewhere.log" if setting.nullable else "demo"


@pytest.mark.parametrize("setting", SETTINGS.values(), ids=lambda setting: setting.flag)
def test_every_setting_has_a_flag(setting):
    if setting.kind is bool:
        flag = [setting.flag if not setting.default else "--no-" + setting.flag[2:]]
        expected = not setting.default
    else:
        expected = other_value(setting)
        flag = [setting.flag, str(expected)]
    settings, problems = cli.settings_from(cli.build_parser().parse_args(["doctor", *flag]))
    assert problems == []
    assert settings == Settings(**{setting.name: expected})


@pytest.mark.parametrize(
    "flag, message",
    [
        (["--temperature", "nan"], "expected a finite number"),
        (["--temperature", "inf"], "expected a finite number"),
        (["--debounce-ms", "1000000000"], "above the maximum 2000"),
        (["--draft-tokens", "-1"], "below the minimum 0"),
        (["--model", " "], "empty value"),
    ],
)
def test_flags_are_checked_like_client_settings(flag, message, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["doctor", *flag])
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory):
    """Copies of the demo model: weights cut in half, a config.json that is not JSON."""
    root = tmp_path_factory.mktemp("broken")
    truncated = shutil.copytree(DEMO_MODEL, root / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bad_config = shutil.copytree(DEMO_MODEL, root / "bad-config")
    (bad_config / "config.json").write_text("{not json")
    data = root / "data"
    data.mkdir()
    problem = {
        "task_id": "t/0", "prompt": "def f():\n", "suffix": "", "entry_point": "f",
        "canonical_solution": "    return 1\n", "test": "def check(f):\n    assert f() == 1\n",
    }  # fmt: skip
    with gzip.open(data / "HumanEval-SingleLineInfilling.jsonl.gz", "wt") as file:
        file.write(json.dumps(problem) + "\n")
    code = root / "f.py"
    code.write_text("def f(x):\n    return \n")
    return {"truncated": truncated, "bad-config": bad_config, "data": data, "code": code}


@pytest.mark.parametrize(
    "broken, message",
    [
        ("truncated", "cannot load the model in {folder}: Error while deserializing header"),
        ("bad-config", "{folder} has no readable config.json"),
    ],
)
@pytest.mark.parametrize("command", ["complete", "doctor", "eval"])
def test_broken_model_folders_get_the_servers_message(
    broken_models, broken, message, command, capsys
):
    folder = broken_models[broken]
    args = {
        "complete": ["complete", f"{broken_models['code']}:2:12"],
        "doctor": ["doctor"],
        "eval": ["eval", "humaneval-infilling", "--data", str(broken_models["data"])],
    }[command]
    # In-process (an exception would fail the test) to load torch once for all six cases.
    assert cli.main([*args, "--model", str(folder)]) == 1
    out = capsys.readouterr()
    assert message.format(folder=folder) in out.out + out.err


def test_missing_model_is_explained_offline(card_file, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-m", "fim_lsp", "complete", card_file[0]],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 1
    assert "HF_HUB_OFFLINE is set" in out.stderr and "fim-lsp download" in out.stderr


def test_doctor_reports_the_machine_and_the_model(tiny_model_dir):
    out = fim_lsp("doctor", "--model", str(tiny_model_dir))
    for expected in (
        "Python",
        "torch",
        "CUDA",
        "bitsandbytes",
        "bitsandbytes 8-bit on cpu",
        "would run: 8-bit ",  # c-kernel (with its ISA) or bitsandbytes: timed here
        "attention: ",
        "OK",
    ):
        assert expected in out.stdout


def test_doctor_says_what_is_missing(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fim_lsp", "doctor"],
        capture_output=True, text=True, env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert out.returncode == 1
    assert "fim-lsp download --model CarperAI/FIM-NeoX-1.3B" in out.stdout


def test_version():
    assert fim_lsp("--version").stdout.startswith("fim-lsp ")


@pytest.mark.parametrize("args", [["--stdio", "--help"], ["serve", "--stdio", "--help"]])
def test_stdio_flag_that_clients_append_is_accepted(args):
    assert fim_lsp(*args).returncode == 0


def test_serve_vllm_prints_its_command_without_the_key():
    out = fim_lsp("serve-vllm", "--print", "--port", "8123", "--api-key", "k3y", "--", "--x", "1")
    command = out.stdout.split()
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enable-prefix-caching" in command and command[-2:] == ["--x", "1"]
    assert "k3y" not in out.stdout


def test_serve_vllm_says_when_it_cannot_start():
    out = fim_lsp("serve-vllm", "--python", "/no/such/python", "--api-key", "k", check=False)
    assert out.returncode == 1 and "cannot start /no/such/python" in out.stderr


def test_doctor_checks_a_team_server_that_is_down():
    out = fim_lsp("doctor", "--backend", "http://127.0.0.1:9", "--model", "demo", check=False)
    assert out.returncode == 1
    assert "team server: http://127.0.0.1:9" in out.stdout and "is it running?" in out.stdout
