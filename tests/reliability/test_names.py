"""Prove 7: a name cannot pose as another. Width and case variants collide with the
existing name; control, zero-width and bidi characters and mixed scripts are refused."""

from __future__ import annotations

import string
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beseda.client import Client
from beseda.protocol import errors
from beseda.protocol.errors import ProtocolError
from beseda.server import accounts
from beseda.server.app import Server
from conftest import SOAK, report, sizes


def fullwidth(name: str) -> str:
    """ASCII letters and digits as their fullwidth forms (ａ is U+FF41)."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in name)


COLLIDING = {
    "upper case": "ALICE_1",
    "mixed case": "Alice_1",
    "fullwidth": fullwidth("alice_1"),
    "fullwidth upper case": fullwidth("ALICE_1"),
    "mathematical bold (NFKC)": "\U0001d41a\U0001d425\U0001d422\U0001d41c\U0001d41e_1",
}

REFUSED = {
    "NUL": "ali\x00ce",
    "newline": "ali\nce",
    "escape": "ali\x1bce",
    "DEL": "alice\x7f",
    "C1 control": "ali\x85ce",
    "zero-width space": "ali\u200bce",
    "zero-width joiner": "ali\u200dce",
    "zero-width non-joiner": "ali\u200cce",
    "word joiner": "ali\u2060ce",
    "byte-order mark": "\ufeffalice",
    "soft hyphen": "ali\u00adce",
    "right-to-left override": "\u202eecila",
    "left-to-right override": "ali\u202dce",
    "right-to-left isolate": "ali\u2067ce",
    "pop directional isolate": "alice\u2069",
    "right-to-left mark": "alice\u200f",
    "space": "ali ce",
    "no-break space": "ali\u00a0ce",
    "Cyrillic а in a Latin name": "\u0430lice",
    "Cyrillic е in a Latin name": "alic\u0435",
    "Greek ο in a Latin name": "b\u03bfb",
    "Latin a in a Cyrillic name": "\u043f\u0440\u0438\u0432\u0435\u0442a",
}


async def register_error(port: int, name: str) -> str | None:
    client = Client("127.0.0.1", port, reconnect=False)
    await client.connect()
    try:
        await client.register(name, "password123")
    except ProtocolError as exc:
        return exc.code
    finally:
        await client.close()
    return None


@pytest.mark.timeout(60)
async def test_look_alike_names_collide_or_are_refused(server: Server, connect: Any) -> None:
    await connect("alice_1")
    outcomes = {}
    for label, name in COLLIDING.items():
        outcomes[label] = await register_error(server.port, name)
        # ... and the variant logs in as the one account.
        client = await connect()
        assert (await client.login(name, "password123")).user == "alice_1"
    for label, name in REFUSED.items():
        outcomes[label] = await register_error(server.port, name)
    report("names", {f"{label} ({name!r})": outcomes[label] for label, name in COLLIDING.items()})
    report("names", {f"{label} ({name!r})": outcomes[label] for label, name in REFUSED.items()})
    assert {outcomes[label] for label in COLLIDING} == {errors.NAME_TAKEN}
    assert {outcomes[label] for label in REFUSED} == {errors.INVALID_USERNAME}
    # Names in one other script are fine.
    assert await register_error(server.port, "\u043f\u0440\u0438\u0432\u0435\u0442") is None
    assert await register_error(server.port, "東京") is None


ASCII_NAMES = st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=32)
# Characters no name may hold: controls, format characters (zero-width, bidi), separators.
FORBIDDEN = st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"])


def check(name: str) -> tuple[str, str] | None:
    try:
        return accounts.check_username(name)
    except ProtocolError as exc:
        if exc.code != errors.INVALID_USERNAME:
            raise
        return None


def variant(name: str, data: st.DataObject) -> str:
    """The same name with each character's case and width chosen at random."""
    out = []
    for c in name:
        c = data.draw(st.sampled_from([c, c.upper(), c.lower()]))
        if data.draw(st.booleans()):
            c = fullwidth(c)
        out.append(c)
    return "".join(out)


@pytest.mark.parametrize("examples", sizes(500, 20_000, fast_timeout=120, soak_timeout=900))
def test_name_rules_hold_for_any_input(examples: int) -> None:
    counts = {"variants": 0, "forbidden": 0, "mixed": 0}

    @settings(max_examples=examples, deadline=None, database=None)
    @given(ASCII_NAMES, st.data())
    def variants_collide(name: str, data: st.DataObject) -> None:
        checked = check(name)
        assert checked is not None
        counts["variants"] += 1
        other = check(variant(name, data))
        assert other is not None
        assert other[1] == checked[1]

    @settings(max_examples=examples, deadline=None, database=None)
    @given(ASCII_NAMES, FORBIDDEN, st.integers(min_value=0, max_value=32))
    def forbidden_refused(name: str, bad: str, at: int) -> None:
        counts["forbidden"] += 1
        assert check(name[:at] + bad + name[at:]) is None

    @settings(max_examples=examples, deadline=None, database=None)
    @given(ASCII_NAMES.filter(lambda n: sum(c.isalpha() for c in n) >= 2), st.data())
    def mixed_scripts_refused(name: str, data: st.DataObject) -> None:
        # Replace one of its Latin letters with a letter of another script.
        counts["mixed"] += 1
        letters = [i for i, c in enumerate(name) if c.isalpha()]
        i = data.draw(st.sampled_from(letters))
        foreign = data.draw(st.sampled_from("аеорсухіјԁԛԝΑΒΕΖΗΙΚΜΝΟΡΤΥΧοαν"))
        assert unicodedata.name(foreign).split()[0] != "LATIN"
        assert check(name[:i] + foreign + name[i + 1 :]) is None

    variants_collide()
    forbidden_refused()
    mixed_scripts_refused()
    report("names: properties", {**counts, "soak": SOAK})
