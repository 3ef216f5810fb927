// The entry point: one WebSocket session to the server that served this page.

import { App } from "./app.js";
import { Translator, chooseLanguage } from "./i18n.js";
import { Session } from "./session.js";

function socketUrl(): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

const root = document.getElementById("app");
if (root !== null) {
  const language = chooseLanguage(
    navigator.languages.length > 0 ? navigator.languages : [navigator.language],
  );
  const app = new App(
    root,
    () => new Session(socketUrl(), { socket: (url) => new WebSocket(url) }),
    new Translator(language),
  );
  app.start();
}

if ("serviceWorker" in navigator && location.protocol !== "file:") {
  // The app shell only: the WebSocket and /health never go through it.
  void navigator.serviceWorker.register("sw.js").catch(() => undefined);
}
