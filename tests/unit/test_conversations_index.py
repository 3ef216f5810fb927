"""The conversation rules on their own: ids, mentions and the in-memory index, without I/O."""

from __future__ import annotations

import pytest

from beseda.protocol import errors
from beseda.protocol.errors import ProtocolError
from beseda.protocol.schema import GENERAL
from beseda.server.conversations import (
    ADMIN,
    CHANNEL,
    DIRECT,
    GROUP,
    MEMBER,
    OWNER,
    Conversation,
    Index,
    dm_conversation,
    dm_members,
    is_canonical_id,
    mentioned_names,
)
from beseda.storage import ConversationState, MembershipRecord

# -- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "conversation",
    ["general", "dm:1:2", "dm:3:3", "c:7", "c:123456789012345678", "dm:1:999999999999999999"],
)
def test_the_canonical_ids_are_accepted(conversation: str) -> None:
    assert is_canonical_id(conversation)


@pytest.mark.parametrize(
    "conversation",
    [
        "dm:2:1",  # the pair out of order
        "dm:01:2",  # a leading zero
        "dm:1:02",
        "dm:²:1",  # a superscript digit
        "dm:0:1",
        "c:0",
        "c:01",
        "c:①",  # a circled digit
        "c:-1",
        "c:+1",
        "c:1 ",  # trailing space
        " c:1",
        "c:1\n",
        "c:１",  # full-width digit
        "dm:１:２",
        "c:1234567890123456789",  # 19 digits
        "dm:1:1234567890123456789",
        "c:",
        "dm:1",
        "dm:1:2:3",
        "General",
        "GENERAL",
        "C:1",
        "",
    ],
)
def test_anything_but_the_canonical_form_names_no_conversation(conversation: str) -> None:
    assert not is_canonical_id(conversation)
    assert dm_members(conversation) is None


def test_a_direct_id_gives_its_two_members_and_notes_to_oneself_one() -> None:
    assert dm_members("dm:1:2") == (1, 2)
    assert dm_members("dm:3:3") == (3, 3)
    assert dm_members("general") is None
    assert dm_members("c:7") is None


def test_a_direct_id_is_the_same_whoever_writes_first() -> None:
    assert dm_conversation(9, 2) == dm_conversation(2, 9) == "dm:2:9"
    assert dm_conversation(4, 4) == "dm:4:4"
    assert is_canonical_id(dm_conversation(10, 9))


# -- mentions ---------------------------------------------------------------------------------


def test_mentions_find_unicode_names() -> None:
    assert mentioned_names("Привет, @Анна и @bob!", 50) == (["Анна", "bob"], False)
    assert mentioned_names("@日本 @Ελένη", 50) == (["日本", "Ελένη"], False)


def test_trailing_punctuation_is_not_part_of_a_name() -> None:
    names, _ = mentioned_names("ask @bob. or @carol-, @dave_ and @eve...", 50)
    assert names == ["bob", "carol", "dave", "eve"]


def test_inner_dots_and_dashes_are_part_of_a_name() -> None:
    names, _ = mentioned_names("@anna.k and @jean-luc", 50)
    assert names == ["anna.k", "jean-luc"]


@pytest.mark.parametrize("word", ["channel", "all", "everyone", "Channel", "ALL", "Everyone"])
def test_channel_all_and_everyone_mention_everybody_and_no_one_by_name(word: str) -> None:
    assert mentioned_names(f"heads up @{word}!", 50) == ([], True)


def test_a_message_without_mentions_has_none() -> None:
    assert mentioned_names("no one here", 50) == ([], False)
    assert mentioned_names("a lone @ sign", 50) == ([], False)


def test_an_email_address_is_not_a_mention() -> None:
    assert mentioned_names("write to anna@example.com", 50) == ([], False)
    assert mentioned_names("write to anna@example.com, @bob", 50) == (["bob"], False)


def test_a_name_mentioned_twice_counts_once() -> None:
    assert mentioned_names("@bob @bob @bob, ok @bob?", 50) == (["bob"], False)


def test_at_most_the_limit_of_names_is_kept_in_order() -> None:
    text = " ".join(f"@user{i}" for i in range(60))
    names, everyone = mentioned_names(text, 50)
    assert names == [f"user{i}" for i in range(50)]
    assert not everyone


def test_everyone_is_still_seen_after_the_limit_of_names() -> None:
    text = " ".join(f"@user{i}" for i in range(60)) + " @channel"
    names, everyone = mentioned_names(text, 50)
    assert len(names) == 50
    assert everyone


# -- the index --------------------------------------------------------------------------------


def channel(
    index: Index, cid: str = "c:1", *, public: bool = True, key: str = "team"
) -> Conversation:
    conversation = Conversation(cid, CHANNEL, name=key.title(), key=key, public=public)
    index.add_conversation(conversation)
    return conversation


def group(index: Index, cid: str = "c:2") -> Conversation:
    conversation = Conversation(cid, GROUP)
    index.add_conversation(conversation)
    return conversation


def error_of(call: object, *args: object) -> ProtocolError:
    assert callable(call)
    with pytest.raises(ProtocolError) as caught:
        call(*args)
    return caught.value


def test_general_is_there_from_the_start_and_readable_by_anyone() -> None:
    index = Index()
    general = index.get(GENERAL)
    assert general is not None
    assert general.everyone
    general.last_seq = 7
    assert index.readable(42, general) == (0, 7)
    assert index.require_member(42, GENERAL) is general
    assert index.require_readable(42, GENERAL) is general


def test_a_channel_member_reads_from_the_first_entry_even_joining_late() -> None:
    index = Index()
    team = channel(index)
    index.join(team, 1, OWNER, 1)
    team.last_seq = 10
    index.join(team, 2, MEMBER, 1)  # a channel: from its start
    assert index.readable(1, team) == (0, 10)
    assert index.readable(2, team) == (0, 10)


def test_a_group_member_reads_from_the_entry_that_added_them() -> None:
    index = Index()
    talk = group(index)
    for user_id in (1, 2, 3):
        index.join(talk, user_id, MEMBER, 1)
    talk.last_seq = 6
    index.join(talk, 4, MEMBER, None)  # queued: nothing readable until it commits
    assert index.readable(4, talk) is None
    membership = index.membership(4, talk.id)
    assert membership is not None
    membership.from_seq = 7  # as the core does at commit
    talk.last_seq = 9
    assert index.readable(4, talk) == (6, 9)
    assert index.readable(1, talk) == (0, 9)


def test_a_member_who_left_reads_up_to_the_leaving_entry_and_no_further() -> None:
    index = Index()
    talk = group(index)
    for user_id in (1, 2, 3):
        index.join(talk, user_id, MEMBER, 1)
    talk.last_seq = 4
    index.leave(talk, 3)
    membership = index.membership(3, talk.id)
    assert membership is not None
    assert not membership.active
    membership.until_seq = 5
    talk.last_seq = 12
    assert index.readable(3, talk) == (0, 5)
    assert 3 not in talk.members


def test_someone_never_in_a_conversation_reads_nothing_of_it() -> None:
    index = Index()
    team = channel(index)
    index.join(team, 1, OWNER, 1)
    assert index.readable(2, team) is None


def test_the_member_set_is_replaced_never_changed_in_place() -> None:
    index = Index()
    talk = group(index)
    index.join(talk, 1, MEMBER, 1)
    index.join(talk, 2, MEMBER, 1)
    before = talk.members
    index.join(talk, 3, MEMBER, None)
    assert before == {1, 2}
    assert talk.members == {1, 2, 3}
    during = talk.members
    index.leave(talk, 1)
    assert during == {1, 2, 3}
    assert talk.members == {2, 3}
    assert isinstance(talk.members, frozenset)


def test_joining_twice_keeps_one_membership_and_the_read_marker() -> None:
    index = Index()
    team = channel(index)
    index.join(team, 1, MEMBER, 1)
    membership = index.membership(1, team.id)
    assert membership is not None
    membership.read_seq = 3
    index.join(team, 1, MEMBER, 1)
    assert index.counted[1] == 1
    rejoined = index.membership(1, team.id)
    assert rejoined is not None
    assert rejoined.read_seq == 3


def test_channels_and_groups_are_counted_and_general_and_direct_chats_are_not() -> None:
    index = Index()
    team, talk = channel(index), group(index)
    direct = Conversation("dm:1:2", DIRECT)
    index.add_conversation(direct)
    index.join(team, 1, OWNER, 1)
    index.join(talk, 1, MEMBER, 1)
    index.join(direct, 1, MEMBER, 1)
    index.join(index.conversations[GENERAL], 1, MEMBER, 1)
    assert index.counted[1] == 2
    assert index.everyone == 1
    index.leave(team, 1)
    assert index.counted[1] == 1
    index.leave(team, 1)  # leaving again changes nothing
    assert index.counted[1] == 1
    index.join(team, 1, MEMBER, 1)
    assert index.counted[1] == 2


def test_a_role_change_shows_in_the_roles_and_the_membership() -> None:
    index = Index()
    team = channel(index)
    index.join(team, 1, OWNER, 1)
    index.join(team, 2, MEMBER, 1)
    index.set_role(team, 2, ADMIN)
    assert team.roles[2] == ADMIN
    membership = index.membership(2, team.id)
    assert membership is not None
    assert membership.role == ADMIN
    index.leave(team, 2)
    assert 2 not in team.roles


def test_a_renamed_channel_is_found_by_its_new_name_only() -> None:
    index = Index()
    team = channel(index, key="team")
    index.rename(team, "Crew", "crew")
    assert index.by_key == {"crew": team.id}
    assert (team.name, team.key) == ("Crew", "crew")


def test_loading_rebuilds_members_roles_and_counts() -> None:
    index = Index()
    index.load(
        [
            ConversationState(GENERAL, CHANNEL, "General", "general", public=True, last_seq=3),
            ConversationState("c:1", CHANNEL, "Team", "team", public=True, last_seq=5),
            ConversationState("dm:1:2", DIRECT, last_seq=2),
        ],
        [
            MembershipRecord(GENERAL, 1, MEMBER, 1, None),
            MembershipRecord(GENERAL, 2, MEMBER, 1, None),
            MembershipRecord("c:1", 1, OWNER, 1, None, read_seq=4),
            MembershipRecord("c:1", 2, MEMBER, 1, 3),
            MembershipRecord("dm:1:2", 1, MEMBER, 1, None),
            MembershipRecord("dm:1:2", 2, MEMBER, 1, None),
            MembershipRecord("c:404", 1, MEMBER, 1, None),  # of no conversation: ignored
        ],
    )
    team = index.conversations["c:1"]
    assert team.members == {1}
    assert team.roles == {1: OWNER}
    assert index.by_key == {"team": "c:1"}
    assert index.counted == {1: 1}
    assert index.everyone == 2
    assert index.readable(2, team) == (0, 3)
    assert index.conversations["dm:1:2"].members == {1, 2}


# -- rules ------------------------------------------------------------------------------------


def test_a_private_channel_is_unknown_exactly_like_a_made_up_id() -> None:
    index = Index()
    secret = channel(index, "c:1", public=False, key="secret")
    index.join(secret, 1, OWNER, 1)
    talk = group(index, "c:2")
    index.join(talk, 1, MEMBER, 1)
    made_up = Index()
    for check in ("require_member", "require_readable"):
        for cid in ("c:1", "c:2"):
            hidden = error_of(getattr(index, check), 2, cid)
            absent = error_of(getattr(made_up, check), 2, cid)
            assert hidden.code == absent.code == errors.UNKNOWN_CONVERSATION
            assert hidden.message == absent.message


def test_a_public_channel_tells_a_non_member_to_join() -> None:
    index = Index()
    team = channel(index)
    index.join(team, 1, OWNER, 1)
    assert error_of(index.require_member, 2, team.id).code == errors.NOT_A_MEMBER
    assert error_of(index.require_readable, 2, team.id).code == errors.NOT_A_MEMBER
    assert index.require_member(1, team.id) is team


def test_a_former_member_still_reads_but_is_no_longer_a_member() -> None:
    index = Index()
    talk = group(index)
    for user_id in (1, 2, 3):
        index.join(talk, user_id, MEMBER, 1)
    index.leave(talk, 3)
    assert index.require_readable(3, talk.id) is talk
    assert error_of(index.require_member, 3, talk.id).code == errors.NOT_A_MEMBER


def test_only_owners_and_admins_manage_a_channel() -> None:
    index = Index()
    team = channel(index)
    index.join(team, 1, OWNER, 1)
    index.join(team, 2, ADMIN, 1)
    index.join(team, 3, MEMBER, 1)
    index.require_manager(1, team)
    index.require_manager(2, team)
    assert error_of(index.require_manager, 3, team).code == errors.NOT_ALLOWED
    assert error_of(index.require_manager, 4, team).code == errors.NOT_ALLOWED


def test_nobody_manages_general_a_group_or_a_direct_chat() -> None:
    index = Index()
    talk = group(index)
    index.join(talk, 1, OWNER, 1)  # even a stray owner role gives nothing outside a channel
    direct = Conversation("dm:1:2", DIRECT)
    index.add_conversation(direct)
    for conversation in (index.conversations[GENERAL], talk, direct):
        assert error_of(index.require_manager, 1, conversation).code == errors.NOT_ALLOWED


def test_any_group_member_adds_people_but_only_managers_add_to_a_channel() -> None:
    index = Index()
    talk, team = group(index), channel(index)
    index.join(talk, 1, MEMBER, 1)
    index.join(team, 1, MEMBER, 1)
    index.may_add(1, talk)
    assert error_of(index.may_add, 1, team).code == errors.NOT_ALLOWED


def test_who_may_mention_everyone() -> None:
    index = Index()
    team, talk = channel(index), group(index)
    direct = Conversation("dm:1:2", DIRECT)
    index.add_conversation(direct)
    index.join(team, 1, OWNER, 1)
    index.join(team, 2, ADMIN, 1)
    index.join(team, 3, MEMBER, 1)
    index.join(talk, 3, MEMBER, 1)
    assert index.may_mention_all(1, team)
    assert index.may_mention_all(2, team)
    assert not index.may_mention_all(3, team)
    assert index.may_mention_all(3, talk)
    assert not index.may_mention_all(1, index.conversations[GENERAL])
    assert not index.may_mention_all(1, direct)
