"""The command line, run as a user runs it: complete (JSON, dry run, errors), doctor, version."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fim_lsp.engine.linear import kernel_problem
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
    if kernel_problem() is None:
        assert report["attention"] == "C attention kernel, fp16 KV cache"
        assert report["decode_steps"] == "C step (one C call per layer)"
    else:  # where the C kernels cannot run (FIM_LSP_KERNELS=off, no AVX2): torch's, and why
        assert report["attention"].startswith("torch attention, fp32 KV cache (")
        assert report["decode_steps"].startswith("transformers' modules (")
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
        # the C kernel, with the ISA its products run on; torch's where it cannot run
        "would run: 8-bit c-kernel (" if kernel_problem() is None else "would run: 8-bit ",
        "attention: C" if kernel_problem() is None else "attention: torch attention",
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
