"""projector.fold.workflows: workflow run status as a pure, order-free fold."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import permutations

from hypothesis import given, settings
from hypothesis import strategies as st

from projector.events import WorkflowOutcome
from projector.fold.workflows import WorkflowRun, fold_workflow_run

Key = tuple[str, str]
RANKED = ("ERRORED", "TIMED_OUT", "STOPPED", "PAUSED")  # strongest first; PAUSED is unknown


def outcome(
    status: str,
    *,
    config_id: str | None = None,
    workflow_id: str | None = "wf-1",
    workflow_name: str | None = "Get Response",
    account: str = "dev",
) -> WorkflowOutcome:
    return WorkflowOutcome("live", "run-1", account, status, workflow_id, workflow_name, config_id)


def fold_all(outcomes: Iterable[WorkflowOutcome]) -> WorkflowRun:
    state: WorkflowRun | None = None
    for item in outcomes:
        state = fold_workflow_run(state, item)
    assert state is not None
    return state


def fold_by_key(outcomes: Iterable[WorkflowOutcome]) -> dict[Key, WorkflowRun]:
    states: dict[Key, WorkflowRun] = {}
    for item in outcomes:
        key = (item.environment, item.instance_id)
        states[key] = fold_workflow_run(states.get(key), item)
    return states


def test_the_first_outcome_becomes_the_run() -> None:
    state = fold_workflow_run(None, outcome("ERRORED", config_id="cfg"))
    assert state == WorkflowRun("live", "run-1", "dev", "ERRORED", "wf-1", "Get Response", "cfg")


def test_completed_stays_final_when_errored_arrives_after_it() -> None:
    assert fold_all([outcome("COMPLETED"), outcome("ERRORED")]).status == "COMPLETED"


def test_errored_then_completed_ends_completed() -> None:
    assert fold_all([outcome("ERRORED"), outcome("COMPLETED")]).status == "COMPLETED"


def test_completed_beats_every_other_status_in_any_order() -> None:
    for statuses in permutations(("COMPLETED", *RANKED)):
        assert fold_all(outcome(s) for s in statuses).status == "COMPLETED", statuses


def test_among_non_completed_errored_beats_timed_out_beats_stopped_beats_unknown() -> None:
    for stronger_index, stronger in enumerate(RANKED):
        for weaker in RANKED[stronger_index + 1 :]:
            for statuses in ((stronger, weaker), (weaker, stronger)):
                state = fold_all(outcome(s) for s in statuses)
                assert state.status == stronger, statuses


def test_all_non_completed_statuses_in_any_order_end_errored() -> None:
    for statuses in permutations(RANKED):
        assert fold_all(outcome(s) for s in statuses).status == "ERRORED", statuses


def test_an_unknown_status_replaces_nothing_known() -> None:
    assert fold_all([outcome("STOPPED"), outcome("RESUMED")]).status == "STOPPED"


def test_a_missing_config_id_keeps_the_present_one_in_either_order() -> None:
    with_config, without = outcome("ERRORED", config_id="cfg-1"), outcome("COMPLETED")
    assert fold_all([with_config, without]).config_id == "cfg-1"
    assert fold_all([without, with_config]).config_id == "cfg-1"


def test_missing_workflow_id_and_name_keep_the_present_ones_in_either_order() -> None:
    full = outcome("ERRORED")
    bare = outcome("COMPLETED", workflow_id=None, workflow_name=None)
    for order in ([full, bare], [bare, full]):
        state = fold_all(order)
        assert (state.workflow_id, state.workflow_name) == ("wf-1", "Get Response")


def test_two_different_present_config_ids_resolve_alike_in_either_order() -> None:
    a, b = outcome("ERRORED", config_id="cfg-a"), outcome("ERRORED", config_id="cfg-b")
    assert fold_all([a, b]) == fold_all([b, a])


def test_a_duplicate_outcome_changes_nothing() -> None:
    once = fold_all([outcome("TIMED_OUT", config_id="cfg")])
    assert fold_workflow_run(once, outcome("TIMED_OUT", config_id="cfg")) == once


# --- order independence -------------------------------------------------------------------

optional_text = st.sampled_from([None, "", "a", "b"])
outcomes = st.builds(
    WorkflowOutcome,
    environment=st.sampled_from(["test", "live"]),
    instance_id=st.sampled_from(["run-1", "run-2"]),
    linked_account_id=st.sampled_from(["dev", "ops"]),
    status=st.sampled_from(["COMPLETED", "ERRORED", "TIMED_OUT", "STOPPED", "PAUSED", "ODD"]),
    workflow_id=optional_text,
    workflow_name=optional_text,
    config_id=optional_text,
)


@st.composite
def shuffled_with_duplicates(
    draw: st.DrawFn,
) -> tuple[list[WorkflowOutcome], list[WorkflowOutcome]]:
    original = draw(st.lists(outcomes, min_size=1, max_size=12))
    extra = draw(st.lists(st.sampled_from(original), max_size=6))
    other = draw(st.permutations(original + extra))
    return original, list(other)


@settings(max_examples=300, deadline=None)
@given(shuffled_with_duplicates())
def test_any_permutation_with_any_duplicates_folds_to_the_same_states(
    lists: tuple[list[WorkflowOutcome], list[WorkflowOutcome]],
) -> None:
    original, other = lists
    assert fold_by_key(other) == fold_by_key(original)


@settings(max_examples=300, deadline=None)
@given(st.lists(outcomes, min_size=1, max_size=12))
def test_a_run_is_completed_exactly_when_one_of_its_outcomes_is(
    items: list[WorkflowOutcome],
) -> None:
    for key, state in fold_by_key(items).items():
        statuses = {o.status for o in items if (o.environment, o.instance_id) == key}
        assert (state.status == "COMPLETED") == ("COMPLETED" in statuses)
        assert state.status in statuses


def _greatest(values: Iterable[str | None]) -> str | None:
    present = [value for value in values if value is not None]
    return max(present) if present else None


@settings(max_examples=300, deadline=None)
@given(st.lists(outcomes, min_size=1, max_size=12))
def test_each_run_follows_the_written_rule_for_its_status_and_every_descriptive_field(
    items: list[WorkflowOutcome],
) -> None:
    """README: COMPLETED, else errored > timed_out > stopped > others (ties by name);
    each descriptive field the greatest value any event carries."""
    known = ("COMPLETED", "ERRORED", "TIMED_OUT", "STOPPED")
    states = fold_by_key(items)
    assert set(states) == {(o.environment, o.instance_id) for o in items}
    for (environment, instance), state in states.items():
        mine = [o for o in items if (o.environment, o.instance_id) == (environment, instance)]
        statuses = {o.status for o in mine}
        ranked = [s for s in known if s in statuses]
        status = ranked[0] if ranked else max(statuses)
        assert state == WorkflowRun(
            environment,
            instance,
            max(o.linked_account_id for o in mine),
            status,
            _greatest(o.workflow_id for o in mine),
            _greatest(o.workflow_name for o in mine),
            _greatest(o.config_id for o in mine),
        )
