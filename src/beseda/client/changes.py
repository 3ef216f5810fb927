"""Applying change entries to messages: plain code, no I/O (protocol 4).

A client keeps the messages it shows; ``edited``, ``deleted``, ``reacted`` and ``unreacted``
entries arrive (live or by ``sync``, exactly once, in order) and change one of them, named by
``ref``. Each change carries the resulting state (the whole new text, the emoji's new count),
not a difference, so applying it to a message loaded later by ``history`` (which already shows
the change) gives the same result: nothing is counted twice.

>>> message = apply_change(message, entry, me="alice")  # None: the message was deleted
"""

from __future__ import annotations

import msgspec

from ..protocol import schema


def apply_change(message: schema.Entry, change: schema.Entry, *, me: str) -> schema.Entry | None:
    """``message`` after ``change`` (a new struct; None once deleted). ``me`` is the
    reader's name, for the ``me`` flag of reactions. A change about another message, or an
    entry that is no change, returns ``message`` as it was."""
    if (
        change.kind not in schema.CHANGE_KINDS
        or change.ref != message.seq
        or change.conversation != message.conversation
    ):
        return message
    if change.kind == "deleted":
        return None
    if change.kind == "edited":
        return msgspec.structs.replace(message, text=change.text, edited=change.ts)
    assert change.emoji is not None
    count = change.count or 0
    reactions: list[schema.Reaction] = []
    found = False
    for reaction in message.reactions:
        if reaction.emoji != change.emoji:
            reactions.append(reaction)
            continue
        found = True
        mine = (change.kind == "reacted") if change.sender == me else reaction.me
        if count > 0:
            reactions.append(schema.Reaction(emoji=reaction.emoji, count=count, me=mine))
    if not found and count > 0:
        reactions.append(
            schema.Reaction(
                emoji=change.emoji,
                count=count,
                me=change.kind == "reacted" and change.sender == me,
            )
        )
    return msgspec.structs.replace(message, reactions=reactions)


def quote_deleted(message: schema.Entry, deleted_seq: int) -> schema.Entry:
    """``message`` with its quote marked deleted when it answers ``deleted_seq`` (a client
    applies a ``deleted`` entry to the replies it shows, too)."""
    reply = message.reply
    if reply is None or reply.seq != deleted_seq or reply.deleted:
        return message
    quote = schema.Quote(seq=reply.seq, sender=reply.sender, text="", deleted=True)
    return msgspec.structs.replace(message, reply=quote)
