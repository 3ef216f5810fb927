"""``beseda client``: the window, the network thread, and the queue between them.

The Tk thread never blocks on the network: the :class:`~.network.Network` thread puts events
on a queue, and :meth:`App.pump` drains it with ``after()`` in bounded batches (Thonny's way:
``event_generate`` across threads is unreliable), hands each to the presenter, then renders
once per batch.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import tkinter as tk
from typing import Any

from . import i18n, theme
from .events import Event
from .network import Network
from .preferences import Preferences
from .presenter import Presenter
from .views import MainWindow

log = logging.getLogger(__name__)

BATCH = 200
"""Most events handled per turn of the Tk loop, so typing stays fluid during a flood."""
PUMP_MS = 30
TICK_MS = 500


class App:
    """One client window with its network thread."""

    def __init__(
        self,
        root: tk.Tk,
        *,
        server: str | None = None,
        preferences: Preferences | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.events: queue.SimpleQueue[tuple[int, Event]] = queue.SimpleQueue()
        palette = theme.apply(root)
        self.network = Network(self._post, client_options=client_options)
        self.window = MainWindow(root, palette)
        self.presenter = Presenter(
            self.window, self.network, preferences or Preferences(), server=server
        )
        self.window.presenter = self.presenter
        self.closed = False
        root.protocol("WM_DELETE_WINDOW", self.close)
        self._pump_job = root.after(PUMP_MS, self.pump)
        self._tick_job = root.after(TICK_MS, self._tick)

    def _post(self, session: int, event: Event) -> None:
        # Called on the network thread: only the thread-safe queue is touched.
        self.events.put((session, event))

    def start(self) -> None:
        self.presenter.start()

    def pump(self) -> None:
        """Hand up to :data:`BATCH` queued events to the presenter, then render once."""
        handled = 0
        while handled < BATCH:
            try:
                session, event = self.events.get_nowait()
            except queue.Empty:
                break
            try:
                self.presenter.handle(session, event)
            except Exception:
                log.exception("failed to handle %r", event)
            handled += 1
        if handled:
            self.presenter.render()
        self._pump_job = self.root.after(1 if handled == BATCH else PUMP_MS, self.pump)

    def _tick(self) -> None:
        self.presenter.tick()
        self._tick_job = self.root.after(TICK_MS, self._tick)

    def close(self) -> None:
        """Close the window: save what is remembered, disconnect, stop the thread."""
        if self.closed:
            return
        self.closed = True
        for job in (self._pump_job, self._tick_job):
            self.root.after_cancel(job)
        self.presenter.close()
        self.network.close()
        self.root.destroy()


def run(server: str | None = None, lang: str | None = None) -> int:
    """Open the desktop client; returns the process exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    i18n.install(i18n.choose_language(lang))
    try:
        root = tk.Tk(className="beseda")
    except tk.TclError as exc:
        print(f"beseda: cannot open a window: {exc}", file=sys.stderr)
        return 1
    app = App(root, server=server)
    app.start()
    with contextlib.suppress(KeyboardInterrupt):
        root.mainloop()
    app.close()
    return 0
