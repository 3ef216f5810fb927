"""Translations, text sanitising, addresses and remembered preferences (no display)."""

from __future__ import annotations

import ast
import gettext
import io
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import beseda.gui
from beseda.gui import i18n
from beseda.gui.network import parse_address
from beseda.gui.preferences import Preferences, SavedSession
from beseda.gui.text import format_time, sanitize, sanitize_name

GUI = Path(beseda.gui.__file__).parent
RU_PO = GUI / "locale/ru/LC_MESSAGES/beseda.po"


def source_messages() -> dict[str, str | None]:
    """Every msgid the client's code passes to ``_`` or ``ngettext`` (→ its plural)."""
    found: dict[str, str | None] = {}
    for path in GUI.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                args = node.args
                if node.func.id == "_" and args and isinstance(args[0], ast.Constant):
                    found[args[0].value] = None
                elif node.func.id == "ngettext":
                    assert isinstance(args[0], ast.Constant)
                    assert isinstance(args[1], ast.Constant)
                    found[args[0].value] = args[1].value
    return found


def test_every_string_has_a_russian_translation() -> None:
    catalogue = i18n.parse_po(RU_PO.read_text(encoding="utf-8"))
    missing = [
        msgid
        for msgid, plural in source_messages().items()
        if (msgid if plural is None else f"{msgid}\0{plural}") not in catalogue
    ]
    assert missing == []


def test_translations_keep_their_placeholders() -> None:
    catalogue = i18n.parse_po(RU_PO.read_text(encoding="utf-8"))
    for key, value in catalogue.items():
        if not key:
            continue
        wanted = sorted(
            p
            for p in ("{n}", "{user}", "{server}", "{reason}", "{name}", "{limit}")
            if p in key.split("\0")[0]
        )
        for form in value.split("\0"):
            assert sorted(p for p in wanted if p in form) == wanted, (key, form)


def test_russian_plurals() -> None:
    ru = i18n.translations("ru")
    forms = [
        ru.ngettext("Reconnecting in {n} second…", "Reconnecting in {n} seconds…", n)
        for n in (1, 3, 5, 21, 11)
    ]
    assert forms == [
        "Переподключение через {n} секунду…",
        "Переподключение через {n} секунды…",
        "Переподключение через {n} секунд…",
        "Переподключение через {n} секунду…",
        "Переподключение через {n} секунд…",
    ]


def test_english_is_the_source_text() -> None:
    en = i18n.translations("en")
    assert en.gettext("Sign in") == "Sign in"
    assert en.ngettext("{n} message waits to be sent.", "{n} messages wait to be sent.", 2) == (
        "{n} messages wait to be sent."
    )


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="gettext's msgfmt is not installed")
def test_the_in_memory_catalogue_matches_msgfmt(tmp_path: Path) -> None:
    compiled = tmp_path / "ru.mo"
    subprocess.run(["msgfmt", "-o", str(compiled), str(RU_PO)], check=True)
    reference = gettext.GNUTranslations(io.BytesIO(compiled.read_bytes()))
    ours = i18n.translations("ru")
    for msgid, plural in source_messages().items():
        if plural is None:
            assert ours.gettext(msgid) == reference.gettext(msgid)
        else:
            for n in (1, 2, 5):
                assert ours.ngettext(msgid, plural, n) == reference.ngettext(msgid, plural, n)


@pytest.mark.parametrize(
    ("requested", "environ", "chosen"),
    [
        ("ru", {"LANG": "en_US.UTF-8"}, "ru"),
        (None, {"LANG": "ru_RU.UTF-8"}, "ru"),
        (None, {"LANGUAGE": "ru:en", "LANG": "C"}, "ru"),
        (None, {"LC_ALL": "de_DE.UTF-8"}, "en"),
        ("en", {"LANG": "ru_RU.UTF-8"}, "en"),
        ("xx", {"LANG": "ru_RU"}, "ru"),
    ],
)
def test_the_language_follows_the_locale_unless_overridden(
    requested: str | None, environ: dict[str, str], chosen: str
) -> None:
    assert i18n.choose_language(requested, environ) == chosen


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain текст 😀", "plain текст 😀"),
        ("line\nbreak\ttab", "line\nbreak\ttab"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("\u2066isolate\u2069", "\\u2066isolate\\u2069"),
        ("bell\x07 esc\x1b[31m cr\r nul\x00", "bell\\x07 esc\\x1b[31m cr\\x0d nul\\x00"),
        ("c1\x85 del\x7f", "c1\\x85 del\\x7f"),
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
    ],
)
def test_sanitize_shows_hidden_characters(raw: str, shown: str) -> None:
    assert sanitize(raw) == shown


def test_names_stay_on_one_line() -> None:
    assert sanitize_name("a\nb\tc") == "a\\nb\\tc"


def test_times_are_local_and_dated_when_old() -> None:
    now = 1_700_000_000.0
    assert len(format_time(int(now * 1000), now)) == 5  # HH:MM
    assert format_time(int((now - 3 * 86400) * 1000), now).count("-") == 2


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("127.0.0.1:7992", ("127.0.0.1", 7992)),
        ("chat.example.org", ("chat.example.org", 7878)),
        ("[::1]:9000", ("::1", 9000)),
        (" localhost:1 ", ("localhost", 1)),
    ],
)
def test_addresses(address: str, parsed: tuple[str, int]) -> None:
    assert parse_address(address) == parsed


@pytest.mark.parametrize("address", ["", "host:0", "host:99999", "host:port", ":7878"])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_address(address)


def test_preferences_round_trip(tmp_path: Path) -> None:
    prefs = Preferences(tmp_path / "cfg")
    assert prefs.server == "127.0.0.1:7878"
    assert prefs.session() is None
    prefs.server = "10.1.1.1:7000"
    prefs.save_session(SavedSession("10.1.1.1:7000", "alice", "t0k"))
    prefs.save_read_positions("10.1.1.1:7000", "Alice", {"general": 4})
    again = Preferences(tmp_path / "cfg")
    assert again.server == "10.1.1.1:7000"
    assert again.session() == SavedSession("10.1.1.1:7000", "alice", "t0k")
    assert again.read_positions("10.1.1.1:7000", "alice") == {"general": 4}
    assert again.read_positions("10.1.1.1:7000", "bob") is None
    assert stat.S_IMODE((tmp_path / "cfg/session.json").stat().st_mode) == 0o600
    again.forget_session()
    assert again.session() is None


def test_damaged_preference_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "session.json").write_text("{not json")
    (tmp_path / "settings.json").write_text("[1, 2]")
    prefs = Preferences(tmp_path)
    assert prefs.session() is None
    assert prefs.server == "127.0.0.1:7878"
