--- fim-lsp for Neovim: starts the `fim-lsp` server and shows its suggestions as ghost text.
---
--- Neovim 0.12+ draws the ghost text with the built-in `vim.lsp.inline_completion`; on 0.11 the
--- `fim_lsp.ghost` module asks for `textDocument/inlineCompletion` itself and draws extmarks.
--- Everything else (what to suggest, where, how long) is the server's business.

local M = {}

local NAME = 'fim_lsp'

---@class fim_lsp.Keymaps
---@field accept string|false        accept the whole suggestion (falls back to the key itself)
---@field accept_word string|false   accept the next word
---@field accept_line string|false   accept the rest of the line
---@field dismiss string|false       hide the suggestion
---@field suggest string|false       ask for a suggestion now

---@class fim_lsp.Options
---@field cmd string[]               command that starts the server
---@field filetypes string[]|nil     filetypes to attach to; nil: every filetype
---@field root_markers string[]
---@field settings table             server settings (camelCase), sent as initializationOptions
---@field ghost 'auto'|'builtin'|'plugin'  who draws ghost text: auto = builtin on 0.12+, else plugin
---@field debounce integer           ms of typing pause before a request (plugin ghost text only)
---@field keymaps fim_lsp.Keymaps|false
---@field enabled boolean            suggestions on at start (`:FimLsp toggle` flips it)

---@type fim_lsp.Options
M.defaults = {
  cmd = { 'fim-lsp', 'serve' },
  filetypes = {
    'c', 'cpp', 'cs', 'css', 'go', 'html', 'java', 'javascript', 'javascriptreact', 'json',
    'kotlin', 'lua', 'markdown', 'php', 'python', 'ruby', 'rust', 'scala', 'sh', 'sql',
    'swift', 'toml', 'typescript', 'typescriptreact', 'vim', 'yaml', 'zig',
  },
  root_markers = { '.git' },
  -- e.g. { model = '/models/fim-neox-1.3b', device = 'cuda', quantization = 'int8',
  --        maxNewTokens = 64, multiline = 'auto', contextLength = 2048, temperature = 0 }
  settings = {},
  ghost = 'auto',
  debounce = 75,
  keymaps = {
    accept = '<Tab>',
    accept_word = '<M-Right>',
    accept_line = '<M-C-Right>',
    dismiss = '<C-]>',
    suggest = '<M-\\>',
  },
  enabled = true,
}

---@type fim_lsp.Options
M.options = vim.deepcopy(M.defaults)

--- What the server last told us: 'stopped' | 'starting' | 'loading' | 'ready' | 'error'.
M.state = { status = 'stopped', message = nil, percentage = nil }

local function uses_builtin()
  if M.options.ghost == 'plugin' then
    return false
  end
  return vim.lsp.inline_completion ~= nil
end

--- The running fim-lsp client for a buffer (or any buffer), if there is one.
---@param bufnr integer|nil
---@return vim.lsp.Client|nil
function M.client(bufnr)
  return vim.lsp.get_clients({ name = NAME, bufnr = bufnr })[1]
end

local function set_state(status, message, percentage, backend)
  M.state = { status = status, message = message, percentage = percentage, backend = backend }
  vim.api.nvim_exec_autocmds('User', { pattern = 'FimLspStatus', modeline = false })
end

--- Follows the server's work-done progress (model loading) into `M.state`.
local function on_progress(args)
  local client = vim.lsp.get_client_by_id(args.data.client_id)
  if not client or client.name ~= NAME then
    return
  end
  local value = args.data.params.value
  if value.kind == 'end' then
    if M.state.status ~= 'error' then
      set_state('ready', value.message)
    end
  else
    local message = value.message or value.title or (M.state.message)
    set_state('loading', message, value.percentage or M.state.percentage)
  end
end

--- Errors the server shows the user also become the status.
local function on_show_message(err, result, ctx)
  if result and result.type == vim.lsp.protocol.MessageType.Error then
    set_state('error', result.message)
  end
  return vim.lsp.handlers['window/showMessage'](err, result, ctx)
end

--- fim-lsp's own notification of its model state: starting, loading, ready or error.
local function on_server_status(_, params)
  if params and params.state then
    set_state(params.state, params.message ~= vim.NIL and params.message or nil,
      params.percentage ~= vim.NIL and params.percentage or nil,
      params.backend ~= vim.NIL and params.backend or nil)
  end
end

local function on_attach(client, bufnr)
  if uses_builtin() then
    vim.lsp.inline_completion.enable(M.options.enabled, { bufnr = bufnr })
  else
    require('fim_lsp.ghost').attach(bufnr, client.id)
  end
end

local function on_exit(code, signal, client_id)
  vim.schedule(function()
    local current = M.client()
    if current and current.id ~= client_id then
      return -- an old client (restart): the new one reports for itself
    end
    if code ~= 0 and code ~= nil and M.state.status ~= 'error' then
      set_state('error', ('the server exited with code %d (signal %d); see :LspLog'):format(code, signal or 0))
    elseif M.state.status ~= 'error' then
      set_state('stopped')
    end
  end)
end

local function lsp_config()
  return {
    cmd = M.options.cmd,
    filetypes = M.options.filetypes,
    root_markers = M.options.root_markers,
    init_options = M.options.settings,
    settings = { fimLsp = M.options.settings },
    handlers = { ['window/showMessage'] = on_show_message, ['fimLsp/status'] = on_server_status },
    on_attach = on_attach,
    on_exit = on_exit,
    before_init = function()
      set_state('starting')
    end,
  }
end

--- Starts the server for buffers of the configured filetypes (`vim.lsp.config`/`vim.lsp.enable`
--- on 0.11+, a FileType autocmd before) and sets the keymaps.
---@param opts fim_lsp.Options|nil
function M.setup(opts)
  opts = opts or {}
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts)
  -- Lists replace the defaults (tbl_deep_extend would merge them index by index).
  for _, key in ipairs({ 'cmd', 'filetypes', 'root_markers' }) do
    if opts[key] ~= nil then
      M.options[key] = opts[key] ~= vim.NIL and opts[key] or nil
    end
  end
  if opts.keymaps == false then
    M.options.keymaps = false
  end
  local group = vim.api.nvim_create_augroup('fim_lsp', { clear = true })
  vim.api.nvim_create_autocmd('LspProgress', { group = group, callback = on_progress })
  vim.api.nvim_set_hl(0, 'FimLspSuggestion', { link = 'Comment', default = true })

  if vim.lsp.config and vim.lsp.enable then
    vim.lsp.config[NAME] = lsp_config() -- replaces what an earlier setup() registered
    vim.lsp.enable(NAME)
  else
    vim.api.nvim_create_autocmd('FileType', {
      group = group,
      pattern = M.options.filetypes or '*',
      callback = function(args)
        local config = lsp_config()
        config.name = NAME
        config.root_dir = vim.fs.root(args.buf, M.options.root_markers) or vim.fn.getcwd()
        vim.lsp.start(config, { bufnr = args.buf })
      end,
    })
  end
  M.set_keymaps()
end

-- Public actions. Each returns true when it did something, so keymaps can fall back to the key.

---@return boolean
function M.accept()
  if uses_builtin() then
    return vim.lsp.inline_completion.get() == true
  end
  return require('fim_lsp.ghost').accept('all')
end

--- On 0.12+, the built-in item is cut down to the part wanted before it is inserted.
local function builtin_partial(kind)
  return vim.lsp.inline_completion.get({
    on_accept = function(item)
      local text = item.insert_text
      if type(text) == 'table' then
        text = text.value
      end
      item.insert_text = require('fim_lsp.ghost').partial(text, kind)
      item.command = nil
      return item
    end,
  }) == true
end

---@return boolean
function M.accept_word()
  if uses_builtin() then
    return builtin_partial('word')
  end
  return require('fim_lsp.ghost').accept('word')
end

---@return boolean
function M.accept_line()
  if uses_builtin() then
    return builtin_partial('line')
  end
  return require('fim_lsp.ghost').accept('line')
end

---@return boolean
function M.dismiss()
  if uses_builtin() then
    return vim.lsp.inline_completion.get({ on_accept = function() end }) == true
  end
  return require('fim_lsp.ghost').dismiss()
end

--- Asks for a suggestion now, without waiting for a pause in typing.
function M.suggest()
  if uses_builtin() then
    vim.lsp.inline_completion.get()
  else
    require('fim_lsp.ghost').request(vim.api.nvim_get_current_buf(), true)
  end
  return true
end

--- The suggestion being shown, as {text = string} (plugin ghost text only; nil otherwise).
function M.current()
  if uses_builtin() then
    return nil
  end
  return require('fim_lsp.ghost').current()
end

function M.toggle()
  M.options.enabled = not M.options.enabled
  if uses_builtin() then
    vim.lsp.inline_completion.enable(M.options.enabled)
  elseif not M.options.enabled then
    require('fim_lsp.ghost').clear_all()
  end
  vim.notify('fim-lsp suggestions ' .. (M.options.enabled and 'on' or 'off'))
end

--- One line on the server's state, as `:FimLsp status` prints it.
function M.status_line()
  local client = M.client()
  if not client then
    if M.state.status == 'error' then
      return 'fim-lsp: error: ' .. (M.state.message or '?')
    end
    return 'fim-lsp: not running (cmd: ' .. table.concat(M.options.cmd, ' ') .. ')'
  end
  local state = M.state.status
  if M.state.message then
    state = state .. ': ' .. M.state.message
  end
  if M.state.percentage and M.state.status == 'loading' then
    state = state .. (' (%d%%)'):format(M.state.percentage)
  end
  if M.state.backend and M.state.backend ~= 'local' then
    state = state .. '; answers: ' .. M.state.backend -- "team server", "local (server down)"
  end
  return ('fim-lsp: %s; client %d, %s, suggestions %s, ghost text: %s'):format(
    state,
    client.id,
    client.offset_encoding,
    M.options.enabled and 'on' or 'off',
    uses_builtin() and 'vim.lsp.inline_completion' or 'fim_lsp extmarks'
  )
end

--- Stops the server and starts it again for the buffers it served.
function M.restart()
  if vim.lsp.enable then
    vim.lsp.enable(NAME, false) -- stops the clients
  else
    for _, client in ipairs(vim.lsp.get_clients({ name = NAME })) do
      client:stop()
    end
  end
  if not uses_builtin() then
    require('fim_lsp.ghost').clear_all()
  end
  local waited = 0
  -- A stopping client could be reused for the new start: wait until it is gone.
  local function start_again()
    if #vim.lsp.get_clients({ name = NAME }) > 0 and waited < 5000 then
      if waited == 3000 then
        for _, client in ipairs(vim.lsp.get_clients({ name = NAME })) do
          client:stop(true)
        end
      end
      waited = waited + 100
      vim.defer_fn(start_again, 100)
      return
    end
    set_state('stopped')
    if vim.lsp.enable then
      vim.lsp.enable(NAME) -- attaches again to every open buffer of the filetypes
    else
      vim.cmd('silent doautoall fim_lsp FileType')
    end
  end
  start_again()
end

function M.set_keymaps()
  local keys = M.options.keymaps
  if not keys then
    return
  end
  -- Not <expr> maps: accepting edits the buffer, which textlock forbids during <expr>.
  local function map(lhs, action, desc)
    if not lhs then
      return
    end
    vim.keymap.set('i', lhs, function()
      if not M[action]() then
        vim.api.nvim_feedkeys(vim.keycode(lhs), 'n', false)
      end
    end, { desc = desc, silent = true })
  end
  map(keys.accept, 'accept', 'fim-lsp: accept the suggestion')
  map(keys.accept_word, 'accept_word', 'fim-lsp: accept the next word of the suggestion')
  map(keys.accept_line, 'accept_line', 'fim-lsp: accept the next line of the suggestion')
  map(keys.dismiss, 'dismiss', 'fim-lsp: dismiss the suggestion')
  map(keys.suggest, 'suggest', 'fim-lsp: ask for a suggestion')
end

--- `:FimLsp status|restart|toggle`
function M.command(args)
  local sub = args.fargs[1] or 'status'
  if sub == 'status' then
    print(M.status_line())
  elseif sub == 'restart' then
    M.restart()
  elseif sub == 'toggle' then
    M.toggle()
  else
    vim.notify('FimLsp: unknown subcommand ' .. sub .. ' (status, restart, toggle)', vim.log.levels.ERROR)
  end
end

vim.api.nvim_create_user_command('FimLsp', function(args)
  M.command(args)
end, {
  nargs = '?',
  complete = function()
    return { 'status', 'restart', 'toggle' }
  end,
  desc = 'fim-lsp: status, restart or toggle suggestions',
})

return M
