"""Take docs/screenshot.png: a real server, a sample conversation, the real client under Xvfb.

    .venv/bin/python scripts/screenshot.py [--out docs/screenshot.png] [--lang en|ru]

Needs Xvfb (unless DISPLAY is set) and ImageMagick's ``import`` (or ``xwd`` + ``convert``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tkinter as tk
from pathlib import Path

from beseda.client import Client
from beseda.gui import i18n
from beseda.gui.app import App
from beseda.gui.preferences import Preferences
from beseda.gui.presenter import dm_key
from beseda.gui.xvfb import start_xvfb

WIDTH, HEIGHT = 1000, 660
PASSWORD = "password123"

GENERAL = [
    ("bob", "Morning all! The build is green again 😀"),
    ("elena", "Привет! Кто-нибудь уже смотрел новый релиз?"),
    (
        "carol",
        "Yes — the reconnect is much smoother now. I restarted the server twice and "
        "nothing got lost or shown twice.",
    ),
    ("alice", "That was the cursor work. Every message has a seq, the client resums after it."),
    ("bob", "Lunch at 12:30?"),
    ("bob", "The menu: https://example.org/cafe/today"),
]
"""General's messages, in order; then replies, an edit and reactions (see ``populate``)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_display() -> subprocess.Popen[bytes] | None:
    if os.environ.get("DISPLAY"):
        return None
    started = start_xvfb(range(120, 220), size=f"{WIDTH}x{HEIGHT}")
    if started is None:
        sys.exit("screenshot: set DISPLAY or install Xvfb (it did not start)")
    proc, os.environ["DISPLAY"] = started
    return proc


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "beseda",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db",
            str(workdir / "beseda.db"),
        ],
        stdout=log,
        stderr=log,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    sys.exit("screenshot: the server did not start")


class Others:
    """The other people, on a loop of their own, staying online while the picture is taken."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.clients: dict[str, Client] = {}

    def run(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)  # type: ignore[arg-type]

    async def join(self, name: str) -> Client:
        client = Client("127.0.0.1", self.port)
        await client.connect()
        await client.register(name, PASSWORD)
        self.clients[name] = client
        return client

    async def populate(self) -> None:
        for name in ("alice", "bob", "carol", "dmitry", "elena", "frank", "grace"):
            await self.join(name)
        sent = [await self.clients[sender].send(text) for sender, text in GENERAL]
        seq = {text.split()[0]: m.seq for (_s, text), m in zip(GENERAL, sent, strict=True)}
        dmitry, alice = self.clients["dmitry"], self.clients["alice"]
        await dmitry.post("general", "Смотрел, всё работает ☕", reply_to=seq["Привет!"])
        await alice.edit("general", seq["That"], GENERAL[3][1].replace("resums", "resumes"))
        for name, emoji, on in (
            ("bob", "👍", "Yes"),
            ("elena", "👍", "Yes"),
            ("alice", "👍", "Yes"),
            ("dmitry", "🎉", "Yes"),
            ("carol", "❤️", "That"),
        ):
            await self.clients[name].react("general", seq[on], emoji)
        await alice.post("general", "Sure, see you there.", reply_to=seq["Lunch"])
        await self.clients["carol"].dm("alice", "Can you review my patch later?")
        await self.clients["alice"].dm("carol", "Sure, after lunch.")
        await self.clients["dmitry"].dm("alice", "Спасибо за помощь вчера!")
        releases = await self.clients["bob"].create_channel(
            "releases", topic="0.9 goes out on Friday"
        )
        for name in ("alice", "carol"):
            await self.clients[name].join(releases.conversation)
        await self.clients["bob"].post(releases.conversation, "@alice can you check the changelog?")
        await self.clients["carol"].create_channel("design", public=False, members=["alice"])
        group = await self.clients["elena"].create_group(["alice", "frank"])
        await self.clients["frank"].post(group.conversation, "Lunch at one?")
        await self.clients["alice"].close()
        for name in ("dmitry", "grace"):
            await self.clients.pop(name).close()

    async def later(self) -> None:
        await self.clients["bob"].dm("alice", "Are you coming to the demo? 😀")
        await self.clients["bob"].dm("alice", "It starts in 10 minutes")


def capture(root: tk.Tk, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    window = hex(root.winfo_id())
    if shutil.which("import"):
        subprocess.run(["import", "-window", "root", str(out)], check=True)
    elif shutil.which("xwd") and shutil.which("convert"):
        dump = subprocess.run(["xwd", "-root", "-silent"], check=True, capture_output=True).stdout
        subprocess.run(["convert", "xwd:-", str(out)], input=dump, check=True)
    else:
        sys.exit(f"screenshot: install ImageMagick to capture window {window}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot.png"))
    parser.add_argument("--lang", default="en")
    args = parser.parse_args()
    display = start_display()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server, port = start_server(workdir)
        try:
            others = Others(port)
            others.run(others.populate())
            i18n.install(args.lang)
            root = tk.Tk(className="beseda")
            app = App(root, server=f"127.0.0.1:{port}", preferences=Preferences(workdir / "cfg"))
            root.geometry(f"{WIDTH}x{HEIGHT}+0+0")
            app.start()

            def pump(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    root.update()
                    time.sleep(0.01)

            pump(0.3)
            form = app.window.sign_in_screen
            form.username.set("alice")
            form.password.set(PASSWORD)
            form.sign_in_button.invoke()
            pump(1.5)
            others.run(others.later())
            pump(0.5)
            app.presenter.open_dm("carol")
            pump(0.3)
            app.presenter.select("#general")
            pump(0.8)
            lunch = next(
                row.id for row in app.presenter._shown_rows if row.text == "Lunch at 12:30?"
            )
            app.presenter.reply(lunch)
            pump(0.3)
            chat = app.window.chat.composer
            chat.insert("1.0", "On my way! ")
            pump(0.3)
            assert dm_key("bob") in app.presenter.conversations
            capture(root, args.out)
            app.close()
        finally:
            server.terminate()
            server.wait(10)
            if display is not None:
                display.terminate()
                display.wait(10)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
