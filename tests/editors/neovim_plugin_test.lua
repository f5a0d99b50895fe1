-- Drives the fim_lsp Neovim plugin in a real (headless) Neovim: typed keys go through the
-- input queue, so autocommands and keymaps run as for a user. Run by test_neovim_plugin.py:
--   nvim --headless --clean -c 'luafile neovim_plugin_test.lua' </dev/null
-- with FIM_TEST_CONFIG naming a JSON file: {plugin, cmd, file, line, result, timeout_ms}.

local cfg = vim.json.decode(table.concat(vim.fn.readfile(vim.env.FIM_TEST_CONFIG), '\n'))
local out = { steps = {} }

local function finish(err)
  out.error = err or vim.NIL
  vim.fn.writefile({ vim.json.encode(out) }, cfg.result)
  vim.cmd('qall!')
end

local function log(message)
  table.insert(out.steps, ('%d %s'):format(vim.uv.now(), message))
end

vim.opt.rtp:prepend(cfg.plugin)
local fim = require('fim_lsp')
local ghost = require('fim_lsp.ghost')
fim.setup({ cmd = cfg.cmd, filetypes = { 'python' }, debounce = 30 })

local function extmarks()
  local marks = vim.api.nvim_buf_get_extmarks(0, ghost.ns, 0, -1, { details = true })
  local result = {}
  for _, mark in ipairs(marks) do
    local details = mark[4]
    local lines = {}
    for _, chunks in ipairs(details.virt_lines or {}) do
      lines[#lines + 1] = chunks[1] and chunks[1][1] or ''
    end
    result[#result + 1] = {
      row = mark[2],
      col = mark[3],
      virt_text = details.virt_text and details.virt_text[1][1] or vim.NIL,
      virt_text_pos = details.virt_text_pos or vim.NIL,
      virt_lines = lines,
    }
  end
  return result
end

local function buffer_text()
  return table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\n') .. '\n'
end

-- Runs `steps` one after another; each may wait (poll) for a condition in the main loop,
-- so that keys fed with nvim_feedkeys are really typed in between.
local function run(steps)
  local deadline = vim.uv.now() + cfg.timeout_ms
  local index = 1
  local function tick()
    if index > #steps then
      return finish()
    end
    if vim.uv.now() > deadline then
      return finish(('timed out in step %d (%s)'):format(index, steps[index].name))
    end
    local ok, done = pcall(steps[index].fn)
    if not ok then
      return finish(('step %d (%s): %s'):format(index, steps[index].name, done))
    end
    if done then
      log(steps[index].name)
      index = index + 1
    end
    vim.defer_fn(tick, 20)
  end
  vim.schedule(tick)
end

local function feed(keys)
  vim.api.nvim_feedkeys(vim.keycode(keys), 't', false)
end

local attempts = 0
local typed_at = nil
run({
  { name = 'open', fn = function()
    vim.cmd.edit(vim.fn.fnameescape(cfg.file))
    return true
  end },
  { name = 'attached', fn = function()
    return fim.client(0) ~= nil
  end },
  { name = 'model ready', fn = function()
    out.status_loading_seen = out.status_loading_seen or fim.state.status == 'loading'
    return fim.state.status == 'ready'
  end },
  { name = 'type at the end of the line', fn = function()
    out.status_line = fim.status_line()
    vim.api.nvim_win_set_cursor(0, { cfg.line + 1, 0 })
    feed('A' .. cfg.typed)
    typed_at = vim.uv.now()
    attempts = attempts + 1
    return true
  end },
  { name = 'ghost text shown', fn = function()
    if fim.current() then
      out.mode = vim.api.nvim_get_mode().mode
      out.cursor = vim.api.nvim_win_get_cursor(0)
      out.suggestion = fim.current()
      out.extmarks = extmarks()
      out.line_text = vim.api.nvim_get_current_line()
      out.buffer_before = buffer_text()
      return true
    end
    -- Nothing yet after a while (e.g. an empty answer): type the key again, a few times.
    if vim.uv.now() - typed_at > 15000 and attempts < 4 then
      feed('<BS>' .. cfg.typed)
      typed_at = vim.uv.now()
      attempts = attempts + 1
    end
    return false
  end },
  { name = 'accept a word', fn = function()
    out.word = ghost.partial(fim.current().text, 'word')
    fim.accept_word()
    return true
  end },
  { name = 'after the word', fn = function()
    out.after_word = {
      line_text = vim.api.nvim_get_current_line(),
      cursor = vim.api.nvim_win_get_cursor(0),
      suggestion = fim.current() or vim.NIL,
      extmarks = extmarks(),
    }
    return true
  end },
  { name = 'press Tab', fn = function()
    feed('<Tab>')
    return true
  end },
  { name = 'accepted', fn = function()
    if fim.current() and fim.current().text == out.after_word.suggestion.text then
      return false -- the Tab is not processed yet
    end
    out.buffer_after = buffer_text()
    out.cursor_after = vim.api.nvim_win_get_cursor(0)
    return true
  end },
  { name = 'next suggestion after the accept', fn = function()
    return fim.current() ~= nil
  end },
  { name = 'move away', fn = function()
    out.next_suggestion = fim.current()
    feed('<Left>')
    return true
  end },
  { name = 'cleared by moving', fn = function()
    if vim.api.nvim_win_get_cursor(0)[2] == out.cursor_after[2] then
      return false
    end
    out.extmarks_after_move = #extmarks()
    return true
  end },
  { name = 'back to the end of the line', fn = function()
    feed('<End>')
    return true
  end },
  { name = 'ask again', fn = function()
    if vim.api.nvim_win_get_cursor(0)[2] ~= out.cursor_after[2] then
      return false
    end
    fim.suggest()
    return true
  end },
  { name = 'suggestion before leaving', fn = function()
    return fim.current() ~= nil
  end },
  { name = 'leave insert mode', fn = function()
    out.extmarks_before_leave = #extmarks()
    feed('<Esc>')
    return true
  end },
  { name = 'cleared', fn = function()
    if vim.api.nvim_get_mode().mode ~= 'n' then
      return false
    end
    out.extmarks_after_leave = #extmarks()
    return true
  end },
  { name = 'restart', fn = function()
    out.client_before_restart = fim.client(0).id
    vim.cmd('FimLsp restart')
    return true
  end },
  { name = 'ready again', fn = function()
    local client = fim.client(0)
    return client ~= nil and client.id ~= out.client_before_restart and fim.state.status == 'ready'
  end },
  { name = 'checkhealth', fn = function()
    out.status_command = vim.api.nvim_exec2('FimLsp status', { output = true }).output
    vim.cmd('checkhealth fim_lsp')
    out.health = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\n')
    return true
  end },
})
