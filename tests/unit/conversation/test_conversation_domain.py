"""The membership rules, without any I/O."""

from __future__ import annotations

import pytest
from conversation_support import T0, group

from services.common.errors import Forbidden, InvalidRequest, NotFound
from services.conversation import domain
from services.conversation.domain import ConversationType, Role

OWNER, ADMIN, MEMBER = Role.OWNER, Role.ADMIN, Role.MEMBER


def test_direct_conversation_has_both_users_as_plain_members() -> None:
    conversation = domain.open_direct("c1", "alice", "bob", now=T0, large_group_threshold=500)

    assert conversation.type is ConversationType.DIRECT
    assert dict(conversation.members) == {"alice": MEMBER, "bob": MEMBER}
    assert conversation.title is None
    assert conversation.large is False


def test_direct_conversation_with_yourself_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="yourself"):
        domain.open_direct("c1", "alice", "alice", now=T0, large_group_threshold=500)


def test_pair_key_is_the_same_whoever_opens_the_conversation() -> None:
    one = domain.open_direct("c1", "alice", "bob", now=T0, large_group_threshold=500)
    other = domain.open_direct("c2", "bob", "alice", now=T0, large_group_threshold=500)

    assert domain.pair_key(one) == domain.pair_key(other)


def test_pair_key_tells_apart_pairs_whose_ids_concatenate_alike() -> None:
    one = domain.open_direct("c1", "a", "bc", now=T0, large_group_threshold=500)
    other = domain.open_direct("c2", "ab", "c", now=T0, large_group_threshold=500)

    assert domain.pair_key(one) != domain.pair_key(other)


def test_groups_have_no_pair_key() -> None:
    assert domain.pair_key(group(("alice", OWNER))) is None


def test_group_creator_is_owner_and_duplicates_are_dropped() -> None:
    conversation = domain.open_group(
        "c1", "alice", "  team  ", ["bob", "carol", "bob", "alice"], now=T0, large_group_threshold=500
    )

    assert list(conversation.members.items()) == [("alice", OWNER), ("bob", MEMBER), ("carol", MEMBER)]
    assert conversation.title == "team"


@pytest.mark.parametrize("title", ["", "   ", "x" * 101])
def test_group_title_must_have_one_to_a_hundred_characters(title: str) -> None:
    with pytest.raises(InvalidRequest, match="title"):
        domain.open_group("c1", "alice", title, [], now=T0, large_group_threshold=500)


def test_group_title_of_exactly_a_hundred_characters_is_accepted() -> None:
    assert domain.open_group("c1", "alice", "x" * 100, [], now=T0, large_group_threshold=500).title == "x" * 100


def test_group_is_large_above_the_threshold_only() -> None:
    at = domain.open_group("c1", "a", "t", ["b", "c"], now=T0, large_group_threshold=3)
    above = domain.open_group("c1", "a", "t", ["b", "c", "d"], now=T0, large_group_threshold=3)

    assert (at.large, above.large) == (False, True)


def test_members_cannot_be_changed_in_place() -> None:
    conversation = group(("alice", OWNER))

    with pytest.raises(TypeError):
        conversation.members["mallory"] = OWNER  # type: ignore[index]


def test_admin_adds_members_and_existing_ones_keep_their_role() -> None:
    conversation = group(("alice", OWNER), ("bob", ADMIN))

    after = domain.add_members(conversation, "bob", ["carol", "alice", "carol"], large_group_threshold=500)

    assert list(after.members.items()) == [("alice", OWNER), ("bob", ADMIN), ("carol", MEMBER)]


def test_plain_member_cannot_add_members() -> None:
    conversation = group(("alice", OWNER), ("bob", MEMBER))

    with pytest.raises(Forbidden):
        domain.add_members(conversation, "bob", ["carol"], large_group_threshold=500)


def test_stranger_gets_not_found_for_every_member_operation() -> None:
    conversation = group(("alice", OWNER), ("bob", MEMBER))

    with pytest.raises(NotFound, match=conversation.conversation_id):
        domain.add_members(conversation, "eve", ["carol"], large_group_threshold=500)
    with pytest.raises(NotFound, match=conversation.conversation_id):
        domain.remove_member(conversation, "eve", "bob", large_group_threshold=500)
    with pytest.raises(NotFound, match=conversation.conversation_id):
        domain.change_role(conversation, "eve", "bob", ADMIN)


def test_direct_conversations_refuse_membership_changes() -> None:
    direct = domain.open_direct("c1", "alice", "bob", now=T0, large_group_threshold=500)

    with pytest.raises(InvalidRequest, match="direct"):
        domain.add_members(direct, "alice", ["carol"], large_group_threshold=500)
    with pytest.raises(InvalidRequest, match="direct"):
        domain.remove_member(direct, "alice", "bob", large_group_threshold=500)
    with pytest.raises(InvalidRequest, match="direct"):
        domain.remove_member(direct, "alice", "alice", large_group_threshold=500)
    with pytest.raises(InvalidRequest, match="direct"):
        domain.change_role(direct, "alice", "bob", ADMIN)


def test_adding_recomputes_large() -> None:
    conversation = group(("a", OWNER), ("b", MEMBER), threshold=2)

    assert domain.add_members(conversation, "a", ["c"], large_group_threshold=2).large is True


def test_removing_recomputes_large() -> None:
    conversation = group(("a", OWNER), ("b", MEMBER), ("c", MEMBER), threshold=2)

    assert domain.remove_member(conversation, "a", "c", large_group_threshold=2).large is False


@pytest.mark.parametrize(
    ("actor", "target", "allowed"),
    [
        ("owner", "admin", True),
        ("owner", "member", True),
        ("admin", "member", True),
        ("admin", "admin2", False),
        ("admin", "owner", False),
        ("member", "member2", False),
        ("member", "admin", False),
        ("member", "owner", False),
    ],
)
def test_who_may_remove_whom(actor: str, target: str, allowed: bool) -> None:
    conversation = group(("owner", OWNER), ("admin", ADMIN), ("admin2", ADMIN), ("member", MEMBER), ("member2", MEMBER))

    if allowed:
        after = domain.remove_member(conversation, actor, target, large_group_threshold=500)
        assert target not in after.members
    else:
        with pytest.raises(Forbidden):
            domain.remove_member(conversation, actor, target, large_group_threshold=500)


@pytest.mark.parametrize("who", ["admin", "member"])
def test_anyone_may_leave(who: str) -> None:
    conversation = group(("owner", OWNER), ("admin", ADMIN), ("member", MEMBER))

    assert who not in domain.remove_member(conversation, who, who, large_group_threshold=500).members


def test_removing_someone_not_in_the_conversation_is_not_found() -> None:
    conversation = group(("owner", OWNER))

    with pytest.raises(NotFound, match="not a member"):
        domain.remove_member(conversation, "owner", "nobody", large_group_threshold=500)


def test_leaving_owner_hands_over_to_longest_standing_admin() -> None:
    conversation = group(("o", OWNER), ("m1", MEMBER), ("a1", ADMIN), ("a2", ADMIN))

    after = domain.remove_member(conversation, "o", "o", large_group_threshold=500)

    assert after.owner == "a1"
    assert list(after.members.items()) == [("m1", MEMBER), ("a1", OWNER), ("a2", ADMIN)]


def test_leaving_owner_without_admins_hands_over_to_longest_standing_member() -> None:
    conversation = group(("o", OWNER), ("m1", MEMBER), ("m2", MEMBER))

    assert domain.remove_member(conversation, "o", "o", large_group_threshold=500).owner == "m1"


def test_last_member_leaving_keeps_an_empty_conversation() -> None:
    conversation = group(("o", OWNER))

    after = domain.remove_member(conversation, "o", "o", large_group_threshold=500)

    assert dict(after.members) == {}
    assert after.owner is None


def test_owner_promotes_and_demotes() -> None:
    conversation = group(("o", OWNER), ("m", MEMBER))

    promoted = domain.change_role(conversation, "o", "m", ADMIN)
    demoted = domain.change_role(promoted, "o", "m", MEMBER)

    assert (promoted.role_of("m"), demoted.role_of("m")) == (ADMIN, MEMBER)


def test_only_the_owner_changes_roles() -> None:
    conversation = group(("o", OWNER), ("a", ADMIN), ("m", MEMBER))

    with pytest.raises(Forbidden):
        domain.change_role(conversation, "a", "m", ADMIN)


def test_the_owner_role_is_neither_given_nor_taken_by_change_role() -> None:
    conversation = group(("o", OWNER), ("m", MEMBER))

    with pytest.raises(InvalidRequest):
        domain.change_role(conversation, "o", "m", OWNER)
    with pytest.raises(InvalidRequest):
        domain.change_role(conversation, "o", "o", MEMBER)


def test_changing_the_role_of_a_non_member_is_not_found() -> None:
    with pytest.raises(NotFound, match="not a member"):
        domain.change_role(group(("o", OWNER)), "o", "nobody", ADMIN)
