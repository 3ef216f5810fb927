"""What the desktop client remembers between runs, in the user's config directory.

``settings.json`` holds the last server address and whether it is reached over TLS;
``trusted-servers.json`` the fingerprints of the self-signed certificates the user trusted
(mode 0600, see :class:`~beseda.tls.PinStore`); ``session.json`` the token of a "keep me
signed in" session, readable by its owner alone (mode 0600); ``read.json`` how far the user has
read each conversation, per server and user, so unread counts survive a restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from ..tls import PinStore

log = logging.getLogger(__name__)

DEFAULT_SERVER = "127.0.0.1:7878"


def config_dir() -> Path:
    """``$BESEDA_CONFIG_DIR``, else the platform's user config directory for beseda."""
    override = os.environ.get("BESEDA_CONFIG_DIR")
    return Path(override) if override else Path(platformdirs.user_config_dir("beseda"))


@dataclass(frozen=True, slots=True)
class SavedSession:
    server: str
    user: str
    token: str


class Preferences:
    """Small JSON files in one directory; unreadable files count as absent."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else config_dir()

    # -- files ---------------------------------------------------------------------------------

    def _read(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, name: str, data: dict[str, Any], *, private: bool = False) -> None:
        path = self.directory / name
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            # Created with its final mode, so a token is never readable by others even briefly.
            fd = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644
            )
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(data, file, ensure_ascii=False)
            if private:
                os.chmod(temporary, 0o600)
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("cannot save %s: %s", path, exc)

    # -- the server address --------------------------------------------------------------------

    @property
    def server(self) -> str:
        value = self._read("settings.json").get("server")
        return value if isinstance(value, str) and value else DEFAULT_SERVER

    @server.setter
    def server(self, address: str) -> None:
        settings = self._read("settings.json")
        settings["server"] = address
        self._write("settings.json", settings)

    @property
    def tls(self) -> bool:
        """Whether the server is reached over TLS (off unless the user turned it on)."""
        return self._read("settings.json").get("tls") is True

    @tls.setter
    def tls(self, on: bool) -> None:
        settings = self._read("settings.json")
        settings["tls"] = bool(on)
        self._write("settings.json", settings)

    @property
    def trusted_servers(self) -> PinStore:
        """The fingerprints of the certificates the user trusted, by ``host:port``."""
        return PinStore(self.directory / "trusted-servers.json")

    # -- the kept session ----------------------------------------------------------------------

    def session(self) -> SavedSession | None:
        data = self._read("session.json")
        server, user, token = (data.get(k) for k in ("server", "user", "token"))
        if isinstance(server, str) and isinstance(user, str) and isinstance(token, str):
            return SavedSession(server, user, token) if server and user and token else None
        return None

    def save_session(self, session: SavedSession) -> None:
        data = {"server": session.server, "user": session.user, "token": session.token}
        self._write("session.json", data, private=True)

    def forget_session(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "session.json").unlink()

    # -- read positions ------------------------------------------------------------------------

    def read_positions(self, server: str, user: str) -> dict[str, int] | None:
        """Conversation id → last seq read, or None when this user never ran here."""
        positions = self._read("read.json").get(f"{user.casefold()}@{server}")
        if not isinstance(positions, dict):
            return None
        return {k: v for k, v in positions.items() if isinstance(v, int)}

    def save_read_positions(self, server: str, user: str, positions: dict[str, int]) -> None:
        data = self._read("read.json")
        data[f"{user.casefold()}@{server}"] = positions
        self._write("read.json", data)
