// The status bar item: the server's state as its progress reports and errors tell it.

import * as vscode from "vscode";

type State =
  | { kind: "starting" }
  | { kind: "busy"; title: string; message?: string; percentage?: number }
  | { kind: "ready"; message?: string; backend?: string }
  | { kind: "error"; message: string };

export class ServerStatus implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;
  private state: State = { kind: "starting" };
  private pending = 0;

  constructor(private enabled: boolean) {
    this.item = vscode.window.createStatusBarItem("fimLsp.status", vscode.StatusBarAlignment.Right, 100);
    this.item.name = "FIM LSP";
    this.item.command = "fimLsp.menu";
    this.render();
    this.item.show();
  }

  starting(): void {
    this.set({ kind: "starting" });
  }

  /** The client is connected; the model may still be loading (its progress says so). */
  started(): void {
    if (this.state.kind === "starting") {
      this.set({ kind: "ready" });
    }
  }

  progress(title: string | undefined, message: string | undefined, percentage: number | undefined): void {
    const previous = this.state.kind === "busy" ? this.state : undefined;
    this.set({
      kind: "busy",
      title: title ?? previous?.title ?? "fim-lsp",
      message: message ?? previous?.message,
      percentage: percentage ?? previous?.percentage,
    });
  }

  /**
   * The model is loaded; `message` says which and where (e.g. "… ready on cuda (int8)"), and
   * `backend` who answers: "local", or with a team server "team server" / "local (server down)".
   */
  ready(message?: string, backend?: string): void {
    this.set({ kind: "ready", message, backend });
  }

  progressEnded(): void {
    if (this.state.kind !== "error") {
      this.set({ kind: "ready" });
    }
  }

  /** Counts requests in flight, so overlapping requests show "generating" until the last ends. */
  generating(active: boolean): void {
    this.pending = Math.max(0, this.pending + (active ? 1 : -1));
    this.render();
  }

  error(message: string): void {
    this.set({ kind: "error", message });
  }

  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    this.render();
  }

  summary(): string {
    return this.describe().tooltip;
  }

  dispose(): void {
    this.item.dispose();
  }

  private set(state: State): void {
    this.state = state;
    this.render();
  }

  private describe(): { text: string; tooltip: string } {
    const state = this.state;
    switch (state.kind) {
      case "starting":
        return { text: "$(loading~spin) FIM", tooltip: "fim-lsp: starting the server" };
      case "busy": {
        const percent = state.percentage !== undefined ? ` ${Math.round(state.percentage)}%` : "";
        const what = state.message ?? state.title;
        return { text: `$(loading~spin) FIM${percent}`, tooltip: `fim-lsp: ${what}${percent}` };
      }
      case "error":
        return { text: "$(error) FIM", tooltip: `fim-lsp error: ${state.message}` };
      case "ready":
        if (!this.enabled) {
          return { text: "$(circle-slash) FIM", tooltip: "fim-lsp: suggestions are off" };
        }
        if (this.pending > 0) {
          return { text: "$(sync~spin) FIM", tooltip: "fim-lsp: generating a suggestion" };
        }
        if (state.backend && state.backend !== "local") {
          const down = state.backend.includes("down");
          return {
            text: `${down ? "$(warning)" : "$(sparkle)"} FIM: ${state.backend}`,
            tooltip: `fim-lsp: ${state.backend}${state.message ? ` (${state.message})` : ""}`,
          };
        }
        return {
          text: "$(sparkle) FIM",
          tooltip: state.message ? `fim-lsp: ready (${state.message})` : "fim-lsp: ready",
        };
    }
  }

  private render(): void {
    const { text, tooltip } = this.describe();
    this.item.text = text;
    this.item.tooltip = `${tooltip}\n\nClick for FIM LSP commands.`;
    this.item.backgroundColor =
      this.state.kind === "error" ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
    this.item.accessibilityInformation = { label: tooltip };
  }
}
