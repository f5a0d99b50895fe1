// VS Code client for fim-lsp: starts the server, shows its ghost text, its state and its settings.
//
// Everything about completions happens in the server; this file only starts it, passes the
// `fimLsp.*` settings along, and turns its progress reports into a status bar item.

import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  LanguageClient,
  type LanguageClientOptions,
  MessageType,
  NotificationType,
  RequestType,
  type ServerOptions,
  ShowMessageNotification,
  type StaticFeature,
  State,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
  type WorkDoneProgressBegin,
  type WorkDoneProgressEnd,
  type WorkDoneProgressReport,
} from "vscode-languageclient/node";

import { SERVER_SETTINGS } from "./serverSettings";
import { ServerStatus } from "./status";

const SECTION = "fimLsp";
/** fim-lsp's notification of its model state (beside the standard work-done progress). */
const STATUS_NOTIFICATION = new NotificationType<ServerState>("fimLsp/status");
/**
 * The same state on request, for the moment the client has just connected. Sent with empty
 * params: pygls 2.1 fails on a request that has none.
 */
const STATUS_REQUEST = new RequestType<Record<string, never>, ServerState, void>("fimLsp/status");
/**
 * Settings that only take effect when the server starts: changing one restarts it. The others
 * go to the running server, which reloads the model itself when model, device or quantization
 * change.
 */
const STARTUP_SETTINGS = ["serverCommand", "serverArgs", "logFile", "enabledLanguages"];

let client: LanguageClient | undefined;
let status: ServerStatus;
let log: vscode.LogOutputChannel;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  // vscode-languageclient 11 needs a *log* output channel; a plain one fails activation.
  log = vscode.window.createOutputChannel("FIM LSP", { log: true });
  status = new ServerStatus(isEnabled());
  context.subscriptions.push(
    log,
    status,
    vscode.commands.registerCommand("fimLsp.restart", restart),
    vscode.commands.registerCommand("fimLsp.toggle", toggle),
    vscode.commands.registerCommand("fimLsp.showLog", () => log.show()),
    vscode.commands.registerCommand("fimLsp.menu", showMenu),
    vscode.workspace.onDidChangeConfiguration(onConfigurationChanged),
  );
  await start();
}

export async function deactivate(): Promise<void> {
  await stop();
}

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

function isEnabled(): boolean {
  return config().get<boolean>("enable", true);
}

/** The settings the server understands, without the empty values that mean "server default". */
export function serverSettings(): Record<string, unknown> {
  const settings: Record<string, unknown> = {};
  for (const key of SERVER_SETTINGS) {
    const value = config().get(key);
    if (value !== undefined && value !== null && value !== "") {
      settings[key] = value;
    }
  }
  return settings;
}

function documentSelector(): LanguageClientOptions["documentSelector"] {
  const languages = config().get<string[]>("enabledLanguages", ["*"]);
  const schemes = ["file", "untitled"];
  if (languages.length === 0 || languages.includes("*")) {
    return schemes.map((scheme) => ({ scheme }));
  }
  return languages.flatMap((language) => schemes.map((scheme) => ({ scheme, language })));
}

function serverOptions(): ServerOptions {
  const command = config().get<string>("serverCommand", "fim-lsp") || "fim-lsp";
  const args = config().get<string[]>("serverArgs", ["serve"]);
  // No `transport`: TransportKind.stdio would append `--stdio` to the arguments.
  return { command, args };
}

/**
 * Follows the server's work-done progress (model loading) in the status bar.
 * Registered after the built-in progress feature, so its handler for
 * `window/workDoneProgress/create` replaces the default notification popup.
 */
function progressFeature(languageClient: LanguageClient): StaticFeature {
  return {
    fillClientCapabilities: (capabilities) => {
      capabilities.window = { ...capabilities.window, workDoneProgress: true };
    },
    initialize: () => {
      languageClient.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
        const subscription = languageClient.onProgress(WorkDoneProgress.type, token, (value) => {
          onProgress(value);
          if (value.kind === "end") {
            subscription.dispose();
          }
        });
      });
    },
    getState: () => ({ kind: "static" }),
    clear: () => undefined,
  };
}

function onProgress(value: WorkDoneProgressBegin | WorkDoneProgressReport | WorkDoneProgressEnd): void {
  if (value.kind === "end") {
    status.progressEnded();
  } else {
    const title = value.kind === "begin" ? value.title : undefined;
    status.progress(title, value.message, value.percentage);
  }
}

/** The server's own state notification: starting, loading, ready or error, with a message. */
interface ServerState {
  state: string;
  message?: string;
  percentage?: number | null;
  /** Who answers: "local", or "team server" / "local (server down)" with a team server. */
  backend?: string | null;
}

function onServerState(params: ServerState): void {
  switch (params.state) {
    case "starting":
      status.starting();
      break;
    case "loading":
      status.progress(undefined, params.message, params.percentage ?? undefined);
      break;
    case "ready":
      status.ready(params.message, params.backend ?? undefined);
      break;
    case "error":
      status.error(params.message ?? "unknown error");
      break;
  }
}

function onShowMessage(params: { type: MessageType; message: string }): void {
  const text = params.message.startsWith("fim-lsp") ? params.message : `fim-lsp: ${params.message}`;
  switch (params.type) {
    case MessageType.Error:
      status.error(params.message);
      void vscode.window.showErrorMessage(text, "Show Log").then((choice) => {
        if (choice) log.show();
      });
      break;
    case MessageType.Warning:
      void vscode.window.showWarningMessage(text);
      break;
    default:
      void vscode.window.showInformationMessage(text);
  }
}

async function start(): Promise<void> {
  const clientOptions: LanguageClientOptions = {
    documentSelector: documentSelector(),
    outputChannel: log,
    initializationOptions: serverSettings(),
    middleware: {
      // Ghost text only: the server's classic completion item would repeat it in the menu.
      provideCompletionItem: () => undefined,
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        if (!isEnabled()) {
          return undefined;
        }
        status.generating(true);
        try {
          return await next(document, position, context, token);
        } finally {
          status.generating(false);
        }
      },
      workspace: {
        // A server that pulls its settings gets the same view as initializationOptions.
        configuration: (params, _token, next) =>
          params.items.some((item) => item.section === SECTION)
            ? params.items.map((item) => (item.section === SECTION ? serverSettings() : null))
            : next(params, _token),
      },
    },
  };
  const languageClient = new LanguageClient("fimLsp", "FIM LSP", serverOptions(), clientOptions);
  languageClient.registerFeature(progressFeature(languageClient));
  languageClient.onNotification(ShowMessageNotification.type, onShowMessage);
  languageClient.onNotification(STATUS_NOTIFICATION, onServerState);
  languageClient.onDidChangeState(({ newState }) => {
    if (newState === State.Starting) {
      status.starting();
    } else if (newState === State.Stopped && client === languageClient) {
      status.error("the server stopped; run “FIM LSP: Restart Server”");
    }
  });
  client = languageClient;
  status.starting();
  try {
    await languageClient.start();
  } catch (error) {
    await startFailed(error);
    return;
  }
  // Notifications tell what changes from now on; ask where the server is at the start.
  try {
    onServerState(await languageClient.sendRequest(STATUS_REQUEST, {}));
  } catch {
    status.started(); // a server without fimLsp/status: trust its progress reports alone
  }
}

async function startFailed(error: unknown): Promise<void> {
  const message = error instanceof Error ? error.message : String(error);
  status.error(message);
  log.error(`could not start ${serverOptionsText()}: ${message}`);
  const choice = await vscode.window.showErrorMessage(
    `fim-lsp could not start (${message}). Is \`fim-lsp\` installed, or \`fimLsp.serverCommand\` set?`,
    "Open Settings",
    "Show Log",
  );
  if (choice === "Open Settings") {
    void vscode.commands.executeCommand("workbench.action.openSettings", SECTION);
  } else if (choice === "Show Log") {
    log.show();
  }
}

function serverOptionsText(): string {
  const options = serverOptions() as { command: string; args?: string[] };
  return [options.command, ...(options.args ?? [])].join(" ");
}

async function stop(): Promise<void> {
  const old = client;
  client = undefined;
  if (old?.isRunning()) {
    await old.stop();
  }
  await old?.dispose();
}

async function restart(): Promise<void> {
  await stop();
  await start();
}

/** Flips `fimLsp.enable` in the user settings (a workspace setting, if any, still wins). */
async function toggle(): Promise<void> {
  const enable = !isEnabled();
  try {
    await config().update("enable", enable, vscode.ConfigurationTarget.Global);
  } catch (error) {
    log.error(`could not turn suggestions ${enable ? "on" : "off"}: ${error}`);
    void vscode.window.showErrorMessage(`fim-lsp: could not change fimLsp.enable (${error})`);
    return;
  }
  log.info(`suggestions ${enable ? "on" : "off"}`);
}

async function showMenu(): Promise<void> {
  const items: (vscode.QuickPickItem & { command: string })[] = [
    { label: isEnabled() ? "Turn suggestions off" : "Turn suggestions on", command: "fimLsp.toggle" },
    { label: "Restart server", command: "fimLsp.restart" },
    { label: "Show log", command: "fimLsp.showLog" },
    { label: "Settings", command: "fimLsp.openSettings" },
  ];
  const choice = await vscode.window.showQuickPick(items, { title: status.summary() });
  if (choice?.command === "fimLsp.openSettings") {
    await vscode.commands.executeCommand("workbench.action.openSettings", SECTION);
  } else if (choice) {
    await vscode.commands.executeCommand(choice.command);
  }
}

async function onConfigurationChanged(event: vscode.ConfigurationChangeEvent): Promise<void> {
  if (!event.affectsConfiguration(SECTION)) {
    return;
  }
  status.setEnabled(isEnabled());
  if (STARTUP_SETTINGS.some((key) => event.affectsConfiguration(`${SECTION}.${key}`))) {
    await restart();
  } else if (client?.isRunning()) {
    await client.sendNotification(DidChangeConfigurationNotification.type, {
      settings: { [SECTION]: serverSettings() },
    });
  }
}
