"""projector.fold.connections: connection health as a pure, order-free fold."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import permutations

from hypothesis import given, settings
from hypothesis import strategies as st

from projector.events import ConnectionChange
from projector.fold.connections import ConnectionHealth, fold_connection

T0 = datetime(2023, 11, 7, 8, 38, 33, tzinfo=UTC)
STATUSES = ("connected", "expired", "deleted")
Key = tuple[str, str, str]


def change(
    status: str, at: datetime = T0, *, account: str = "12345", type_: str | None = "General"
) -> ConnectionChange:
    return ConnectionChange("live", account, "pipedrive", status, at, type_)


def fold_all(changes: Iterable[ConnectionChange]) -> ConnectionHealth:
    state: ConnectionHealth | None = None
    for item in changes:
        state = fold_connection(state, item)
    assert state is not None
    return state


def fold_by_key(changes: Iterable[ConnectionChange]) -> dict[Key, ConnectionHealth]:
    states: dict[Key, ConnectionHealth] = {}
    for item in changes:
        key = (item.environment, item.linked_account_id, item.slug)
        states[key] = fold_connection(states.get(key), item)
    return states


def test_created_makes_a_connected_connection() -> None:
    state = fold_connection(None, change("connected"))
    assert state == ConnectionHealth(
        "live", "12345", "pipedrive", "connected", T0, "General", T0, T0
    )
    assert not state.needs_reconnect


def test_expired_makes_an_expired_connection_that_needs_reconnect() -> None:
    state = fold_all([change("connected"), change("expired", T0 + timedelta(days=1))])
    assert state.status == "expired"
    assert state.status_since == T0 + timedelta(days=1)
    assert state.needs_reconnect


def test_deleted_makes_a_deleted_connection_that_needs_no_reconnect() -> None:
    state = fold_all([change("connected"), change("deleted", T0 + timedelta(hours=1))])
    assert state.status == "deleted"
    assert not state.needs_reconnect


def test_created_after_expired_means_reconnected() -> None:
    later = T0 + timedelta(days=2)
    state = fold_all(
        [change("connected"), change("expired", T0 + timedelta(days=1)), change("connected", later)]
    )
    assert state.status == "connected"
    assert state.status_since == later
    assert not state.needs_reconnect
    assert state.first_seen == T0


def test_an_older_event_keeps_the_status_but_widens_first_and_last_seen() -> None:
    expired = change("expired", T0)
    older = change("connected", T0 - timedelta(days=3))
    state = fold_all([expired, older])
    assert state.status == "expired"
    assert state.status_since == T0
    assert state.first_seen == T0 - timedelta(days=3)
    assert state.last_seen == T0


def test_a_newer_event_moves_last_seen_and_keeps_first_seen() -> None:
    state = fold_all([change("connected"), change("deleted", T0 + timedelta(minutes=5))])
    assert state.first_seen == T0
    assert state.last_seen == T0 + timedelta(minutes=5)


def test_an_older_event_does_not_change_the_type() -> None:
    state = fold_all(
        [change("expired", T0, type_="General"), change("connected", T0 - timedelta(1), type_="X")]
    )
    assert state.type == "General"


def test_same_second_ties_follow_deleted_then_expired_then_connected_in_any_order() -> None:
    for statuses in permutations(STATUSES):
        state = fold_all(change(status) for status in statuses)
        assert state.status == "deleted", statuses
    for statuses in permutations(("connected", "expired")):
        state = fold_all(change(status) for status in statuses)
        assert state.status == "expired", statuses


def test_a_later_connected_beats_an_earlier_deleted() -> None:
    state = fold_all([change("connected", T0 + timedelta(seconds=1)), change("deleted", T0)])
    assert state.status == "connected"


def test_same_second_types_none_and_empty_fold_alike_in_either_order() -> None:
    """Events differing only in a missing vs empty `type` must not depend on arrival order."""
    untyped, empty = change("expired", type_=None), change("expired", type_="")
    assert fold_all([untyped, empty]) == fold_all([empty, untyped])


def test_same_second_same_status_types_decide_alike_in_either_order() -> None:
    general, custom = change("expired", type_="General"), change("expired", type_="Custom")
    assert fold_all([general, custom]) == fold_all([custom, general])


def test_a_duplicate_event_changes_nothing() -> None:
    once = fold_all([change("expired")])
    assert fold_connection(once, change("expired")) == once


def test_the_identity_of_the_first_event_is_kept() -> None:
    state = fold_all([change("connected"), change("expired", T0 + timedelta(1))])
    assert (state.environment, state.linked_account_id, state.slug) == (
        "live",
        "12345",
        "pipedrive",
    )


# --- order independence -------------------------------------------------------------------

INSTANTS = [T0 + timedelta(seconds=s) for s in range(3)]

changes = st.builds(
    ConnectionChange,
    environment=st.sampled_from(["test", "live"]),
    linked_account_id=st.sampled_from(["1", "2"]),
    slug=st.sampled_from(["pipedrive", "hubspot"]),
    status=st.sampled_from(STATUSES),
    occurred_at=st.sampled_from(INSTANTS),
    type=st.sampled_from([None, "", "General", "Custom"]),
)


@st.composite
def shuffled_with_duplicates(
    draw: st.DrawFn,
) -> tuple[list[ConnectionChange], list[ConnectionChange]]:
    original = draw(st.lists(changes, min_size=1, max_size=12))
    extra = draw(st.lists(st.sampled_from(original), max_size=6))
    other = draw(st.permutations(original + extra))
    return original, list(other)


@settings(max_examples=300, deadline=None)
@given(shuffled_with_duplicates())
def test_any_permutation_with_any_duplicates_folds_to_the_same_states(
    lists: tuple[list[ConnectionChange], list[ConnectionChange]],
) -> None:
    original, other = lists
    assert fold_by_key(other) == fold_by_key(original)


@settings(max_examples=300, deadline=None)
@given(st.lists(changes, min_size=1, max_size=12))
def test_folding_states_matches_the_latest_event_by_time_then_precedence(
    items: list[ConnectionChange],
) -> None:
    for key, state in fold_by_key(items).items():
        mine = [c for c in items if (c.environment, c.linked_account_id, c.slug) == key]
        latest = max(c.occurred_at for c in mine)
        statuses = {c.status for c in mine if c.occurred_at == latest}
        expected = max(statuses, key=STATUSES.index)
        assert (state.status, state.status_since) == (expected, latest)
        assert state.first_seen == min(c.occurred_at for c in mine)
        assert state.last_seen == latest
        # The type comes from the deciding events only: the greatest, an absent one lowest.
        deciding = [c.type for c in mine if (c.occurred_at, c.status) == (latest, expected)]
        typed = [t for t in deciding if t is not None]
        assert state.type == (max(typed) if typed else None)
