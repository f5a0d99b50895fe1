// Written by `python -m fim_lsp.settings_docs --write` from fim_lsp/settings.py: edit there.

/** The server's settings, forwarded as initializationOptions and workspace/didChangeConfiguration. */
export const SERVER_SETTINGS = [
  "model",
  "device",
  "quantization",
  "contextLength",
  "maxNewTokens",
  "temperature",
  "multiline",
  "maxTimeMs",
  "debounceMs",
  "draftTokens",
  "cacheReuse",
  "cacheMemoryMb",
  "coldBudgetMs",
  "logFile",
  "backend",
  "apiKey",
  "fallback",
  "cacheSalt",
];
