--- Ghost text without `vim.lsp.inline_completion` (Neovim 0.11): asks the server for
--- `textDocument/inlineCompletion` after a pause in typing and draws the suggestion with extmarks
--- in the `fim_lsp` namespace: the first line as inline virtual text at the cursor, the other
--- lines as virtual lines below it. Positions are byte columns, as the Neovim API wants them.

local M = {}

local api = vim.api
local METHOD = 'textDocument/inlineCompletion'
M.ns = api.nvim_create_namespace('fim_lsp')

---@class fim_lsp.Suggestion
---@field row integer        0-based row of the cursor, where the text goes
---@field col integer        byte column of the cursor
---@field text string        what is still to be inserted at (row, col)
---@field end_row integer    end of the buffer text the suggestion replaces (at or after the cursor)
---@field end_col integer
---@field tick integer       b:changedtick when it was drawn
---@field command table|nil  an LSP command to run after a full accept

---@class fim_lsp.BufferState
---@field client_id integer
---@field timer uv.uv_timer_t
---@field request_id integer|nil
---@field suggestion fim_lsp.Suggestion|nil
---@field own_tick integer|nil   changedtick of our own last edit (an accept), not the user's typing

---@type table<integer, fim_lsp.BufferState>
local buffers = {}

local function options()
  return require('fim_lsp').options
end

local function in_insert_mode()
  return api.nvim_get_mode().mode:sub(1, 1) == 'i'
end

local function cursor()
  local pos = api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

local function line_at(bufnr, row)
  return api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
end

--- LSP position (in the client's offset encoding) -> 0-based row and byte column.
local function byte_position(bufnr, position, encoding)
  local line = line_at(bufnr, position.line)
  local ok, col = pcall(vim.str_byteindex, line, encoding, position.character, false)
  return position.line, ok and col or #line
end

local function draw(bufnr, suggestion)
  api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  local lines = vim.split(suggestion.text, '\n', { plain = true })
  local opts = { hl_mode = 'combine', priority = 1000 }
  if lines[1] ~= '' then
    opts.virt_text = { { lines[1], 'FimLspSuggestion' } }
    opts.virt_text_pos = 'inline'
  end
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      opts.virt_lines[#opts.virt_lines + 1] = { { lines[i], 'FimLspSuggestion' } }
    end
  end
  api.nvim_buf_set_extmark(bufnr, M.ns, suggestion.row, suggestion.col, opts)
  suggestion.tick = api.nvim_buf_get_changedtick(bufnr)
  buffers[bufnr].suggestion = suggestion
end

local function cancel_request(state)
  if state.request_id then
    local client = vim.lsp.get_client_by_id(state.client_id)
    if client then
      client:cancel_request(state.request_id)
    end
    state.request_id = nil
  end
end

--- Hides the suggestion of a buffer and forgets it.
function M.clear(bufnr)
  local state = buffers[bufnr]
  if state then
    state.suggestion = nil
    state.timer:stop()
    cancel_request(state)
  end
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
end

function M.clear_all()
  for bufnr in pairs(buffers) do
    M.clear(bufnr)
  end
end

--- The first usable item of an answer, as a suggestion anchored at the cursor (row, col).
local function to_suggestion(bufnr, result, encoding, row, col)
  local items = result.items or result
  for _, item in ipairs(items) do
    local text = item.insertText
    if type(text) == 'table' then
      text = text.value -- a snippet: shown and inserted as plain text
    end
    local start_row, start_col, end_row, end_col = row, col, row, col
    if item.range then
      start_row, start_col = byte_position(bufnr, item.range.start, encoding)
      end_row, end_col = byte_position(bufnr, item.range['end'], encoding)
    end
    -- The range may start before the cursor (text the user typed); it must not end before it.
    local typed = line_at(bufnr, row):sub(start_col + 1, col)
    local usable = start_row == row
      and start_col <= col
      and (end_row > row or (end_row == row and end_col >= col))
      and type(text) == 'string'
      and text:sub(1, #typed) == typed
      and #text > #typed
    if usable then
      return {
        row = row,
        col = col,
        text = text:sub(#typed + 1),
        end_row = end_row,
        end_col = end_col,
        command = item.command,
      }
    end
  end
end

--- Asks for a suggestion at the cursor. `invoked`: the user asked (vs. a pause in typing).
function M.request(bufnr, invoked)
  local state = buffers[bufnr]
  if not state or bufnr ~= api.nvim_get_current_buf() or not in_insert_mode() then
    return
  end
  if not invoked and not options().enabled then
    return
  end
  local client = vim.lsp.get_client_by_id(state.client_id)
  if not client then
    return
  end
  cancel_request(state)
  local row, col = cursor()
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = invoked and 1 or 2 } -- Invoked | Automatic
  local ok, request_id
  ok, request_id = client:request(METHOD, params, function(err, result)
    if state.request_id == request_id then
      state.request_id = nil
    end
    if err or not result or not api.nvim_buf_is_valid(bufnr) then
      return
    end
    -- Drop answers that no longer fit: the user typed or moved on meanwhile.
    local now_row, now_col = cursor()
    if
      api.nvim_get_current_buf() ~= bufnr
      or api.nvim_buf_get_changedtick(bufnr) ~= tick
      or now_row ~= row
      or now_col ~= col
      or not in_insert_mode()
    then
      return
    end
    local suggestion = to_suggestion(bufnr, result, client.offset_encoding, row, col)
    if suggestion then
      draw(bufnr, suggestion)
    end
  end, bufnr)
  if ok then
    state.request_id = request_id
  end
end

local function schedule_request(bufnr)
  local state = buffers[bufnr]
  state.timer:stop()
  state.timer:start(
    options().debounce,
    0,
    vim.schedule_wrap(function()
      M.request(bufnr, false)
    end)
  )
end

--- Typing the suggestion's own next characters keeps it (shortened) instead of asking again.
local function typed_ahead(bufnr, suggestion)
  local row, col = cursor()
  if row ~= suggestion.row or col <= suggestion.col then
    return nil
  end
  local typed = line_at(bufnr, row):sub(suggestion.col + 1, col)
  if suggestion.text:sub(1, #typed) ~= typed or #typed >= #suggestion.text then
    return nil
  end
  return {
    row = row,
    col = col,
    text = suggestion.text:sub(#typed + 1),
    end_row = suggestion.end_row,
    end_col = suggestion.end_row == row and suggestion.end_col + #typed or suggestion.end_col,
    command = suggestion.command,
  }
end

local function on_text_changed(bufnr)
  local state = buffers[bufnr]
  if state.own_tick == api.nvim_buf_get_changedtick(bufnr) then
    state.own_tick = nil
    if not state.suggestion then
      schedule_request(bufnr) -- after a full accept, offer what comes next
    end
    return
  end
  local kept = state.suggestion and typed_ahead(bufnr, state.suggestion)
  if kept then
    draw(bufnr, kept)
    return
  end
  M.clear(bufnr)
  schedule_request(bufnr)
end

local function on_cursor_moved(bufnr)
  local suggestion = buffers[bufnr].suggestion
  -- A text change moves the cursor too; on_text_changed decides about those.
  if not suggestion or api.nvim_buf_get_changedtick(bufnr) ~= suggestion.tick then
    return
  end
  local row, col = cursor()
  if row ~= suggestion.row or col ~= suggestion.col then
    M.clear(bufnr)
  end
end

--- The part of a suggestion that accept_word ('word') or accept_line ('line') inserts.
---@param text string
---@param kind 'word'|'line'
---@return string
function M.partial(text, kind)
  if kind == 'line' then
    return text:match('^\n[^\n]*') or text:match('^[^\n]*')
  end
  return text:match('^\n[ \t]*')
    or text:match('^[ \t]*[%w_]+')
    or text:match('^[ \t]*[^%w_%s]+')
    or text:match('^%s+')
    or text
end

--- Inserts the suggestion ('all') or its next word or line; the rest stays shown.
---@param kind 'all'|'word'|'line'
---@return boolean accepted
function M.accept(kind)
  local bufnr = api.nvim_get_current_buf()
  local state = buffers[bufnr]
  local suggestion = state and state.suggestion
  if not suggestion then
    return false
  end
  local part = kind == 'all' and suggestion.text or M.partial(suggestion.text, kind)
  local lines = vim.split(part, '\n', { plain = true })
  local row, col = suggestion.row, suggestion.col
  -- A full accept replaces the range the server gave; a partial one only inserts.
  local end_row, end_col = row, col
  if kind == 'all' then
    end_row, end_col = suggestion.end_row, suggestion.end_col
  end
  M.clear(bufnr)
  api.nvim_buf_set_text(bufnr, row, col, end_row, end_col, lines)
  state.own_tick = api.nvim_buf_get_changedtick(bufnr)
  local new_row = row + #lines - 1
  local new_col = (#lines == 1 and col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(0, { new_row + 1, new_col })

  local rest = suggestion.text:sub(#part + 1)
  if kind ~= 'all' and rest ~= '' then
    local moved_end_row = suggestion.end_row + (#lines - 1)
    local moved_end_col = suggestion.end_col
    if suggestion.end_row == row then
      moved_end_col = new_col + (suggestion.end_col - col)
    end
    draw(bufnr, {
      row = new_row,
      col = new_col,
      text = rest,
      end_row = moved_end_row,
      end_col = moved_end_col,
      command = suggestion.command,
    })
  elseif kind == 'all' and suggestion.command then
    local client = vim.lsp.get_client_by_id(state.client_id)
    if client then
      client:exec_cmd(suggestion.command, { bufnr = bufnr })
    end
  end
  return true
end

---@return boolean dismissed
function M.dismiss()
  local bufnr = api.nvim_get_current_buf()
  local state = buffers[bufnr]
  if not state or not state.suggestion then
    return false
  end
  M.clear(bufnr)
  return true
end

--- The suggestion shown in the current buffer: {row, col, text} (0-based row, byte col) or nil.
function M.current()
  local state = buffers[api.nvim_get_current_buf()]
  local suggestion = state and state.suggestion
  if suggestion then
    return { row = suggestion.row, col = suggestion.col, text = suggestion.text }
  end
end

function M.attach(bufnr, client_id)
  if buffers[bufnr] then
    buffers[bufnr].client_id = client_id
    return
  end
  buffers[bufnr] = { client_id = client_id, timer = assert(vim.uv.new_timer()) }
  local group = api.nvim_create_augroup('fim_lsp_ghost_' .. bufnr, { clear = true })
  local function on(events, callback)
    api.nvim_create_autocmd(events, {
      group = group,
      buffer = bufnr,
      callback = function()
        callback(bufnr)
      end,
    })
  end
  on('TextChangedI', on_text_changed)
  on('CursorMovedI', on_cursor_moved)
  on('InsertEnter', schedule_request)
  on({ 'InsertLeave', 'BufLeave' }, M.clear)
  api.nvim_create_autocmd('LspDetach', {
    group = group,
    buffer = bufnr,
    callback = function(args)
      if args.data.client_id == buffers[bufnr].client_id then
        M.detach(bufnr)
      end
    end,
  })
  api.nvim_create_autocmd('BufWipeout', {
    group = group,
    buffer = bufnr,
    callback = function()
      M.detach(bufnr)
    end,
  })
end

function M.detach(bufnr)
  local state = buffers[bufnr]
  if not state then
    return
  end
  M.clear(bufnr)
  state.timer:close()
  buffers[bufnr] = nil
  pcall(api.nvim_del_augroup_by_name, 'fim_lsp_ghost_' .. bufnr)
end

return M
