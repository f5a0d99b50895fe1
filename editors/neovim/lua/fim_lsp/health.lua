--- `:checkhealth fim_lsp`: the server binary, its version, the client and the model state.

local M = {}

--- The command without its `serve ...` tail, plus `--version`.
local function version_command(cmd)
  local out = {}
  for _, word in ipairs(cmd) do
    if word == 'serve' then
      break
    end
    out[#out + 1] = word
  end
  out[#out + 1] = '--version'
  return out
end

function M.check()
  local fim = require('fim_lsp')
  local health = vim.health

  health.start('fim-lsp: Neovim')
  local v = vim.version()
  local version = ('%d.%d.%d'):format(v.major, v.minor, v.patch)
  if vim.lsp.inline_completion then
    health.ok('Neovim ' .. version .. ': ghost text by vim.lsp.inline_completion')
  elseif vim.fn.has('nvim-0.11') == 1 then
    health.ok('Neovim ' .. version .. ': ghost text by the plugin (extmarks in namespace fim_lsp)')
  else
    health.warn('Neovim ' .. version .. ' is older than 0.11; the plugin is tested on 0.11+')
  end

  health.start('fim-lsp: server')
  local cmd = fim.options.cmd
  local exe = vim.fn.exepath(cmd[1])
  if exe == '' then
    health.error(
      ('`%s` is not executable or not on PATH'):format(cmd[1]),
      { 'pip install fim-lsp, or set `cmd` in require("fim_lsp").setup({ cmd = { "/path/to/fim-lsp", "serve" } })' }
    )
  else
    health.ok(('server command: %s (%s)'):format(table.concat(cmd, ' '), exe))
    local ok, result = pcall(function()
      return vim.system(version_command(cmd), { text = true }):wait(15000)
    end)
    if ok and result.code == 0 then
      health.ok('version: ' .. vim.trim(result.stdout ~= '' and result.stdout or result.stderr))
    else
      health.warn('could not read the version: ' .. table.concat(version_command(cmd), ' '))
    end
  end

  health.start('fim-lsp: model')
  local client = fim.client()
  local state = fim.state
  if not client then
    health.info('the server is not running (it starts when a buffer of a configured filetype opens)')
  end
  local describe = state.status .. (state.message and (': ' .. state.message) or '')
  if state.status == 'error' then
    health.error(describe, { 'see :LspLog, then :FimLsp restart' })
  elseif state.status == 'ready' then
    health.ok(describe)
  elseif client then
    health.info(describe .. (state.percentage and (' (%d%%)'):format(state.percentage) or ''))
  end
  if client then
    health.info(('client %d, position encoding %s'):format(client.id, client.offset_encoding))
    local settings = vim.inspect(fim.options.settings, { newline = ' ', indent = '' })
    health.info('settings: ' .. settings)
  end
end

return M
