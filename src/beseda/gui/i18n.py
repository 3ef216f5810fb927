"""Translations: gettext catalogues shipped as ``.po`` sources, compiled in memory on load.

Shipping the sources only means no build step: ``pip install -e .`` and a wheel behave the
same, and a translator edits one file.
"""

from __future__ import annotations

import ast
import gettext
import io
import locale
import os
import struct
from collections.abc import Mapping
from importlib import resources

DOMAIN = "beseda"
LANGUAGES = ("en", "ru")

_translations: gettext.NullTranslations = gettext.NullTranslations()


def _(message: str) -> str:
    """Translate ``message`` into the installed language."""
    return _translations.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _translations.ngettext(singular, plural, n)


def install(language: str) -> str:
    """Make ``language`` (``en``, ``ru``) the language of :func:`_`; returns it."""
    global _translations
    _translations = translations(language)
    return language


def choose_language(requested: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """``--lang`` when given, else the system locale's language; English by default."""
    candidates = [requested] if requested else []
    for variable in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(variable)
        if value:
            candidates.extend(value.split(":"))
            break
    else:
        with_locale = locale.getlocale()[0]
        if with_locale:
            candidates.append(with_locale)
    for candidate in candidates:
        code = candidate.replace("-", "_").split("_")[0].split(".")[0].lower()
        if code in LANGUAGES:
            return code
    return "en"


def translations(language: str) -> gettext.NullTranslations:
    """The catalogue of ``language``; untranslated text falls back to English."""
    source = resources.files(__package__).joinpath(f"locale/{language}/LC_MESSAGES/{DOMAIN}.po")
    try:
        text = source.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return gettext.NullTranslations()
    return gettext.GNUTranslations(io.BytesIO(compile_po(parse_po(text))))


def parse_po(text: str) -> dict[str, str]:
    """``msgid`` → ``msgstr`` of a ``.po`` file, in the keys ``.mo`` files use.

    A plural entry's key is ``singular\\0plural`` and its value the forms joined by ``\\0``;
    the header is the entry with the empty ``msgid``. Fuzzy and untranslated entries are
    left out, so their English text shows.
    """
    entries: dict[str, str] = {}
    fields: dict[str, str] = {}
    current: str | None = None
    fuzzy = False

    def finish() -> None:
        nonlocal fuzzy
        if "msgid" in fields and not fuzzy:
            key = fields["msgid"]
            if "msgid_plural" in fields:
                key += "\0" + fields["msgid_plural"]
                forms = sorted(k for k in fields if k.startswith("msgstr["))
                value = "\0".join(fields[k] for k in forms)
            else:
                value = fields.get("msgstr", "")
            if value.strip("\0") or key == "":
                entries[key] = value
        fields.clear()
        fuzzy = False

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#,") and "fuzzy" in line:
            finish()
            fuzzy = True
        elif not line or line.startswith("#"):
            if current is not None and not line:
                finish()
                current = None
        elif line.startswith('"'):
            if current is not None:
                fields[current] += ast.literal_eval(line)
        else:
            keyword, _space, rest = line.partition(" ")
            if keyword == "msgid" and "msgid" in fields:
                finish()
            current = keyword
            fields[current] = ast.literal_eval(rest)
    finish()
    return entries


def compile_po(entries: Mapping[str, str]) -> bytes:
    """A GNU ``.mo`` file holding ``entries`` (the format of CPython's Tools/i18n/msgfmt.py)."""
    keys = sorted(entries)
    ids = strs = b""
    offsets: list[tuple[int, int, int, int]] = []
    for key in keys:
        encoded_id, encoded_str = key.encode(), entries[key].encode()
        offsets.append((len(ids), len(encoded_id), len(strs), len(encoded_str)))
        ids += encoded_id + b"\0"
        strs += encoded_str + b"\0"
    start_ids = 7 * 4 + 16 * len(keys)
    start_strs = start_ids + len(ids)
    table_ids: list[int] = []
    table_strs: list[int] = []
    for id_offset, id_length, str_offset, str_length in offsets:
        table_ids += [id_length, start_ids + id_offset]
        table_strs += [str_length, start_strs + str_offset]
    header = struct.pack("Iiiiiii", 0x950412DE, 0, len(keys), 7 * 4, 7 * 4 + 8 * len(keys), 0, 0)
    tables = struct.pack(f"{len(table_ids)}i", *table_ids)
    tables += struct.pack(f"{len(table_strs)}i", *table_strs)
    return header + tables + ids + strs
