"""The files written from the settings: current in the checkout, complete, and rewritten on demand."""

from __future__ import annotations

import json
import shutil

import pytest

from fim_lsp import settings_docs
from fim_lsp.settings import SETTINGS

# The files it writes live in the source checkout, not in an installed wheel.
pytestmark = pytest.mark.skipif(
    not settings_docs.README.is_file(), reason="needs the source checkout (README.md, editors/)"
)


def test_generated_files_are_current():
    stale = [str(path.relative_to(settings_docs.ROOT)) for path in settings_docs.stale_files()]
    assert not stale, (
        f"{', '.join(stale)} differ from fim_lsp/settings.py: run `{settings_docs.COMMAND}`"
    )


def test_the_readme_table_has_a_row_per_setting():
    rows = settings_docs.options_table().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{s.key}`" for s in SETTINGS.values()]
    by_key = {row.split("`")[1]: row for row in rows}
    assert "| `64` | 1-1024 | next request |" in by_key["maxNewTokens"]
    assert "`cpu` (the CPU)" in by_key["device"] and "reloads the model" in by_key["device"]
    assert "| none | text |" in by_key["logFile"]


def test_vscode_properties_carry_the_bounds_and_choices():
    package = json.loads(settings_docs.vscode_package(settings_docs.VSCODE_PACKAGE.read_text()))
    client, server = package["contributes"]["configuration"]
    assert "fimLsp.serverCommand" in client["properties"]
    properties = server["properties"]
    assert list(properties) == [f"fimLsp.{s.key}" for s in SETTINGS.values()]
    assert properties["fimLsp.debounceMs"] | {"markdownDescription": ""} == {
        "type": ["integer", "null"],
        "default": None,
        "minimum": 0,
        "maximum": 2000,
        "markdownDescription": "",
    }
    assert properties["fimLsp.multiline"]["enum"] == ["", "auto", "always", "never"]
    assert properties["fimLsp.cacheReuse"]["type"] == ["boolean", "null"]
    model = properties["fimLsp.model"]
    assert (
        model["scope"] == "machine-overridable"
        and "reloads the model" in model["markdownDescription"]
    )


def test_the_extension_forwards_every_setting():
    module = settings_docs.vscode_settings_module()
    assert [line.strip(' ",') for line in module.splitlines() if line.startswith("  ")] == [
        s.key for s in SETTINGS.values()
    ]


def test_the_readme_block_needs_its_markers():
    with pytest.raises(ValueError, match="lacks the markers"):
        settings_docs.with_block("# no markers here\n", "| table |")
    text = f"before\n{settings_docs.BEGIN}\nold\n{settings_docs.END}\nafter\n"
    assert settings_docs.with_block(text, "new") == text.replace("old", "new")


def test_check_reports_stale_files_and_write_fixes_them(tmp_path, monkeypatch, capsys):
    for name in ("README", "VSCODE_PACKAGE", "VSCODE_SETTINGS"):
        copy = tmp_path / getattr(settings_docs, name).name
        shutil.copy(getattr(settings_docs, name), copy)
        monkeypatch.setattr(settings_docs, name, copy)
    monkeypatch.setattr(settings_docs, "ROOT", tmp_path)
    readme = settings_docs.README
    readme.write_text(
        readme.read_text().replace("| `maxNewTokens` | `64`", "| `maxNewTokens` | `8`")
    )
    settings_docs.VSCODE_SETTINGS.unlink()

    assert settings_docs.main([]) == 1
    assert capsys.readouterr().out == "stale: README.md\nstale: serverSettings.ts\n"
    assert settings_docs.main(["--write"]) == 0
    assert settings_docs.main([]) == 0
    assert "| `maxNewTokens` | `64`" in readme.read_text()
    assert settings_docs.VSCODE_SETTINGS.read_text() == settings_docs.vscode_settings_module()
