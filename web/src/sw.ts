// The service worker: caches the app shell (HTML, script, styles, icons, manifest) so the app
// opens without the network, and nothing else. Messages never go through it: they travel on
// the WebSocket, which a service worker does not see. The build fills in SHELL and VERSION.

const sw = self as unknown as ServiceWorkerGlobalScope;
declare const SHELL: string[];
declare const VERSION: string;

const CACHE = `beseda-shell-${VERSION}`;

sw.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(SHELL))
      .then(() => sw.skipWaiting()),
  );
});

sw.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) =>
        Promise.all(keys.filter((key) => key !== CACHE).map((key) => caches.delete(key))),
      )
      .then(() => sw.clients.claim()),
  );
});

sw.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== sw.location.origin) return;
  const path = url.pathname.replace(/^\//, "");
  const shell = path === "" ? "./" : path;
  if (!SHELL.includes(shell)) return; // not the shell: the network, untouched
  if (shell === "./" || shell === "index.html") {
    // The page: the network first (a new build), the cache when offline.
    event.respondWith(
      fetch(request)
        .then((response) => {
          const copy = response.clone();
          void caches.open(CACHE).then((cache) => cache.put(request, copy));
          return response;
        })
        .catch(() => caches.match(request).then((hit) => hit ?? Response.error())),
    );
    return;
  }
  // Hashed assets never change: the cache first.
  event.respondWith(caches.match(request).then((hit) => hit ?? fetch(request)));
});
