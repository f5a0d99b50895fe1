"""Files written from the settings declarations: the README's options table, the VS Code settings.

After adding or changing a setting in `settings.py`, run `python -m fim_lsp.settings_docs --write`
in a source checkout; tests/test_settings_docs.py fails while a file is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fim_lsp.settings import SETTINGS, Setting

COMMAND = "python -m fim_lsp.settings_docs --write"
ROOT = Path(__file__).resolve().parent.parent  # the source checkout
README = ROOT / "README.md"
VSCODE_PACKAGE = ROOT / "editors" / "vscode" / "package.json"
VSCODE_SETTINGS = ROOT / "editors" / "vscode" / "src" / "serverSettings.ts"

BEGIN = f"<!-- options: written by `{COMMAND}` from fim_lsp/settings.py -->"
END = "<!-- end of options -->"
VSCODE_SECTION = "FIM LSP: Server"  # the VS Code settings category that holds the server's
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def generated_files() -> dict[Path, str]:
    """Each generated file and the text it should have now."""
    return {
        README: with_block(README.read_text(encoding="utf-8"), options_table()),
        VSCODE_PACKAGE: vscode_package(VSCODE_PACKAGE.read_text(encoding="utf-8")),
        VSCODE_SETTINGS: vscode_settings_module(),
    }


# ---- README -----------------------------------------------------------------------------------


def options_table() -> str:
    rows = [
        "| option | default | values | on change | what |",
        "|---|---|---|---|---|",
    ]
    for setting in SETTINGS.values():
        applies = "reloads the model" if setting.startup else "next request"
        rows.append(
            f"| `{setting.key}` | {code(setting.default_text)} | {values(setting)} | {applies} "
            f"| {setting.help} |"
        )
    return "\n".join(rows)


def code(text: str) -> str:
    return "none" if text == "none" else f"`{text}`"


def values(setting: Setting) -> str:
    if setting.choices:
        return ", ".join(
            f"`{value}` ({meaning})" if meaning else f"`{value}`"
            for value, meaning in setting.choices.items()
        )
    if setting.kind is bool:
        return "`true`, `false`"
    return setting.bounds or "text"


def with_block(text: str, block: str) -> str:
    """`text` with what lies between the BEGIN and END markers replaced by `block`."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not (begin and end):
        raise ValueError(f"the README lacks the markers {BEGIN} and {END}")
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


# ---- VS Code ----------------------------------------------------------------------------------


def vscode_package(text: str) -> str:
    """package.json with its server settings category rewritten (the client's own stay)."""
    package = json.loads(text)
    categories = [
        category
        for category in package["contributes"]["configuration"]
        if category["title"] != VSCODE_SECTION
    ]
    server = {f"fimLsp.{setting.key}": vscode_property(setting) for setting in SETTINGS.values()}
    categories.append({"title": VSCODE_SECTION, "properties": server})
    package["contributes"]["configuration"] = categories
    return json.dumps(package, indent=2, ensure_ascii=False) + "\n"


def vscode_property(setting: Setting) -> dict[str, Any]:
    """The setting's JSON schema. Empty ("" or null) means the server's default: the extension
    leaves such values out, so flags in `fimLsp.serverArgs` still apply."""
    schema: dict[str, Any]
    if setting.kind is str:
        schema = {"type": "string", "default": ""}
        if setting.choices:
            schema["enum"] = ["", *setting.choices]
            schema["enumDescriptions"] = [
                f"The server's default ({setting.default_text})",
                *(meaning[:1].upper() + meaning[1:] for meaning in setting.choices.values()),
            ]
    else:
        schema = {"type": [JSON_TYPES[setting.kind], "null"], "default": None}
        for bound in ("minimum", "maximum"):
            if getattr(setting, bound) is not None:
                schema[bound] = json_number(getattr(setting, bound))
    default = (
        "not set" if setting.default is None else f"the server's default (`{setting.default_text}`)"
    )
    reload = " Changing it reloads the model." if setting.startup else ""
    schema["markdownDescription"] = f"{setting.help} Empty: {default}.{reload}"
    if setting.startup:  # model folders and devices differ between machines
        schema["scope"] = "machine-overridable"
    return schema


def json_number(number: float) -> float | int:
    return int(number) if float(number).is_integer() else number


def vscode_settings_module() -> str:
    names = "".join(f'  "{setting.key}",\n' for setting in SETTINGS.values())
    return (
        f"// Written by `{COMMAND}` from fim_lsp/settings.py: edit there.\n\n"
        "/** The server's settings, forwarded as initializationOptions and "
        "workspace/didChangeConfiguration. */\n"
        f"export const SERVER_SETTINGS = [\n{names}];\n"
    )


# ---- command line -----------------------------------------------------------------------------


def stale_files() -> dict[Path, str]:
    """The generated files whose text differs from what the settings make now."""
    return {
        path: text
        for path, text in generated_files().items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fim_lsp.settings_docs", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--write", action="store_true", help="rewrite the stale files")
    args = parser.parse_args(argv)
    if not VSCODE_PACKAGE.is_file():
        parser.error(f"run it in a fim-lsp source checkout ({VSCODE_PACKAGE} is missing)")
    stale = stale_files()
    for path, text in stale.items():
        if args.write:
            path.write_text(text, encoding="utf-8")
        print(f"{'wrote' if args.write else 'stale'}: {path.relative_to(ROOT)}")
    return 1 if stale and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
