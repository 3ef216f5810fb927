"""Error codes of the wire protocol and the exception that carries one.

Every error the server sends has a stable machine-readable ``code`` (one of the constants
below) and a human ``message``. Clients branch on the code, never on the message.

Exception tree::

    BesedaError                      root of everything beseda raises on purpose
    └── ProtocolError                carries a wire error code
        └── (the server sends it as {"type": "error", ...}; the client library raises it)
"""

from __future__ import annotations

from typing import Final


class BesedaError(Exception):
    """Root of all of beseda's own exceptions."""


class ProtocolError(BesedaError):
    """An error with a wire code: sent to the peer as an ``error`` reply."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        request_id: int | str | None = None,
        retry_after: float | None = None,
        fatal: bool = False,
    ) -> None:
        self.code = code
        self.message = message if message is not None else MESSAGES.get(code, code)
        self.request_id = request_id
        self.retry_after = retry_after
        self.fatal = fatal
        """True when the connection is closed after this error is sent."""
        super().__init__(f"{code}: {self.message}")


# Malformed traffic (the connection stays open unless noted).
BAD_JSON: Final = "bad_json"
BAD_REQUEST: Final = "bad_request"
UNKNOWN_TYPE: Final = "unknown_type"
LINE_TOO_LONG: Final = "line_too_long"  # fatal
# Authentication.
NOT_AUTHENTICATED: Final = "not_authenticated"
ALREADY_AUTHENTICATED: Final = "already_authenticated"
INVALID_USERNAME: Final = "invalid_username"
INVALID_PASSWORD: Final = "invalid_password"
NAME_TAKEN: Final = "name_taken"
BAD_CREDENTIALS: Final = "bad_credentials"
# Chat.
UNKNOWN_USER: Final = "unknown_user"
UNKNOWN_CONVERSATION: Final = "unknown_conversation"
EMPTY_MESSAGE: Final = "empty_message"
MESSAGE_TOO_LONG: Final = "message_too_long"
CLIENT_ID_REUSED: Final = "client_id_reused"
RATE_LIMITED: Final = "rate_limited"
TOO_MANY_SESSIONS: Final = "too_many_sessions"
# Conversations (version 3).
NOT_A_MEMBER: Final = "not_a_member"
NOT_ALLOWED: Final = "not_allowed"
INVALID_NAME: Final = "invalid_name"
TOPIC_TOO_LONG: Final = "topic_too_long"
GROUP_SIZE: Final = "group_size"
TOO_MANY_CONVERSATIONS: Final = "too_many_conversations"
ARCHIVED: Final = "archived"
# Messages (version 4).
UNKNOWN_MESSAGE: Final = "unknown_message"
INVALID_EMOJI: Final = "invalid_emoji"
TOO_MANY_REACTIONS: Final = "too_many_reactions"
BAD_QUERY: Final = "bad_query"
SEARCH_OFF: Final = "search_off"
# The server's side.
STORAGE_UNAVAILABLE: Final = "storage_unavailable"
INTERNAL_ERROR: Final = "internal_error"
# Reasons in a ``bye`` event, before the server closes the connection.
AUTH_TIMEOUT: Final = "auth_timeout"
TOO_MANY_CONNECTIONS: Final = "too_many_connections"
SLOW_CONSUMER: Final = "slow_consumer"
SERVER_SHUTDOWN: Final = "server_shutdown"
SERVER_FULL: Final = "server_full"
SERVER_BUSY: Final = "server_busy"
LINE_TIMEOUT: Final = "line_timeout"
SESSION_ENDED: Final = "session_ended"

MESSAGES: Final[dict[str, str]] = {
    BAD_JSON: "The line is not a valid UTF-8 JSON object.",
    BAD_REQUEST: "The request is missing a field or has a field of the wrong type.",
    UNKNOWN_TYPE: "Unknown request type.",
    LINE_TOO_LONG: "The line is longer than the server accepts.",
    NOT_AUTHENTICATED: "Log in or register first.",
    ALREADY_AUTHENTICATED: "This connection is already logged in; log out first.",
    INVALID_USERNAME: "That username is not allowed.",
    INVALID_PASSWORD: "That password is not allowed.",
    NAME_TAKEN: "That username is taken.",
    BAD_CREDENTIALS: "Wrong username or password.",
    UNKNOWN_USER: "No such user.",
    UNKNOWN_CONVERSATION: "No such conversation.",
    EMPTY_MESSAGE: "The message is empty.",
    MESSAGE_TOO_LONG: "The message is too long.",
    CLIENT_ID_REUSED: "This client_id was already used for a different message.",
    RATE_LIMITED: "Too many requests; slow down.",
    TOO_MANY_SESSIONS: "This account has the most connections allowed; close one first.",
    NOT_A_MEMBER: "You are not a member of this conversation.",
    NOT_ALLOWED: "Your role in this conversation does not allow that.",
    INVALID_NAME: "That channel name is not allowed.",
    TOPIC_TOO_LONG: "The topic is too long.",
    GROUP_SIZE: "A group has 3 to 32 members.",
    TOO_MANY_CONVERSATIONS: "You are in too many channels and groups.",
    ARCHIVED: "The channel is archived.",
    UNKNOWN_MESSAGE: "No such message (it may have been deleted).",
    INVALID_EMOJI: "A reaction is one emoji.",
    TOO_MANY_REACTIONS: "The message has the most different reactions allowed.",
    BAD_QUERY: "The search query cannot be understood.",
    SEARCH_OFF: "Search is switched off on this server.",
    STORAGE_UNAVAILABLE: "The server cannot store data right now; try again later.",
    INTERNAL_ERROR: "The server failed to handle the request.",
    AUTH_TIMEOUT: "No login within the time allowed.",
    TOO_MANY_CONNECTIONS: "Too many connections from your address.",
    SLOW_CONSUMER: "You are not reading fast enough; reconnect and sync.",
    SERVER_SHUTDOWN: "The server is shutting down.",
    SERVER_FULL: "The server has the most connections it accepts; try again later.",
    SERVER_BUSY: "The server holds too much unfinished input; send whole lines.",
    LINE_TIMEOUT: "A line took too long to arrive; send whole lines.",
    SESSION_ENDED: "The session was logged out; log in again.",
}
