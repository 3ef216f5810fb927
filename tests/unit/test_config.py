"""Each limit is declared once; its flag, variable, help and hello entry derive from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from beseda import cli
from beseda.server import config
from beseda.server.config import Limits

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_configurable_limit_has_a_flag_a_variable_and_documentation() -> None:
    parser = cli._parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {flag for action in serve._actions for flag in action.option_strings}
    docs = (DOCS / "protocol.md").read_text() + (DOCS / "operations.md").read_text()
    options = config.limit_options()
    assert options
    for option in options:
        assert option.flag in flags, option.flag
        assert option.variable in option.help
        assert f"`{option.flag}`" in docs, f"{option.flag} is not documented"
        assert f"`{option.variable}`" in docs, f"{option.variable} is not documented"


def test_every_field_of_limits_is_declared() -> None:
    declared = {name for name, _, _ in config.declared_limits()}
    assert declared == set(Limits.__dataclass_fields__)


def test_existing_flags_and_variables_keep_their_names() -> None:
    names = {option.flag for option in config.limit_options()}
    assert {
        "--auth-timeout",
        "--max-connections-per-address",
        "--message-rate",
        "--message-burst",
        "--message-max-delay",
        "--send-buffer-bytes",
        "--registrations-per-minute",
        "--hash-workers",
        "--hash-queue",
    } <= names


def test_variables_and_flags_set_limits(tmp_path: Path) -> None:
    settings = config.from_environment(
        {"BESEDA_LINE_TIMEOUT": "2.5", "BESEDA_REGISTRATIONS_PER_MINUTE": "60"},
        max_connections_per_user=3,  # as a flag gives it, parsed
        db=tmp_path / "db",
    )
    assert settings.limits.line_timeout == 2.5
    assert settings.limits.max_connections_per_user == 3
    assert settings.limits.registrations_per_address == (1.0, 180.0)
    args = cli._parser().parse_args(["serve", "--max-connections", "5", "--line-timeout", "1"])
    assert (args.max_connections, args.line_timeout) == (5, 1.0)


def test_a_bad_variable_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="0 or more"):
        config.from_environment({"BESEDA_HASH_QUEUE": "-1"}, db=tmp_path / "db")


def test_hello_advertises_the_declared_limits() -> None:
    advertised = config.advertised_limits(Limits(auth_timeout=3.0))
    assert advertised == {
        "max_line_bytes": 262_144,
        "max_reply_bytes": 1_000_000,
        "auth_timeout": 3.0,
        "message_rate": 20.0,
        "message_burst": 100,
        "max_text_chars": 16_384,
    }


def test_the_http_port_is_a_port_zero_or_off(tmp_path: Path) -> None:
    assert config.from_environment({}, db=tmp_path / "db").http_port == config.DEFAULT_HTTP_PORT
    for text, port in (("off", None), ("OFF", None), ("0", 0), ("8080", 8080)):
        assert config.from_environment({"BESEDA_HTTP_PORT": text}, db=tmp_path).http_port == port
        args = cli._parser().parse_args(["serve", "--http-port", text])
        assert config.from_environment({}, http_port=args.http_port).http_port == port
    # A flag wins over the variable.
    settings = config.from_environment({"BESEDA_HTTP_PORT": "off"}, http_port=9000)
    assert settings.http_port == 9000
    for bad in ("70000", "-1", "web"):
        with pytest.raises(SystemExit):
            cli._parser().parse_args(["serve", "--http-port", bad])


def test_allowed_origins_are_checked_origins() -> None:
    args = cli._parser().parse_args(
        ["serve", "--allowed-origins", "https://chat.example.org, http://10.0.0.5:7879/"]
    )
    assert args.allowed_origins == ("https://chat.example.org", "http://10.0.0.5:7879")
    env = {"BESEDA_ALLOWED_ORIGINS": "https://a.example"}
    assert config.from_environment(env).allowed_origins == ("https://a.example",)
    for bad in ("chat.example.org", "https://chat.example.org/app", "ftp://x.example"):
        with pytest.raises(ValueError, match="not an origin"):
            config.origin_list(bad)


def test_the_web_flags_are_documented() -> None:
    docs = (DOCS / "operations.md").read_text()
    for name in ("--http-port", "BESEDA_HTTP_PORT", "--allowed-origins", "BESEDA_ALLOWED_ORIGINS"):
        assert f"`{name}`" in docs, name
    assert "`--web-root`" in docs


def test_the_search_index_is_on_unless_switched_off(tmp_path: Path) -> None:
    assert config.from_environment({}, db=tmp_path / "db").search_index is True
    for text, on in (("on", True), ("off", False), ("OFF", False), (" On ", True)):
        assert config.from_environment({"BESEDA_SEARCH_INDEX": text}).search_index is on
        args = cli._parser().parse_args(["serve", "--search-index", text])
        assert config.from_environment({}, search_index=args.search_index).search_index is on
    # A flag wins over the variable.
    settings = config.from_environment({"BESEDA_SEARCH_INDEX": "off"}, search_index=True)
    assert settings.search_index is True
    for bad in ("yes", "1", ""):
        with pytest.raises(SystemExit):
            cli._parser().parse_args(["serve", "--search-index", bad])
