from taskplatform.models import TERMINAL, TRANSITIONS, TaskStatus, can_transition, sources_of


def test_statuses_are_exactly_the_documented_eight() -> None:
    assert [s.value for s in TaskStatus] == [
        "QUEUED",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "RETRYING",
        "DEAD_LETTER",
        "COMPLETED_WITH_ERRORS",
    ]
    assert set(TRANSITIONS) == set(TaskStatus)


def test_finished_tasks_never_move_back_to_running_or_queued() -> None:
    for status in (TaskStatus.COMPLETED, TaskStatus.COMPLETED_WITH_ERRORS, TaskStatus.CANCELLED):
        assert TRANSITIONS[status] == frozenset()
    assert not can_transition(TaskStatus.COMPLETED, TaskStatus.RUNNING)
    assert not can_transition(TaskStatus.DEAD_LETTER, TaskStatus.RUNNING)
    assert can_transition(TaskStatus.DEAD_LETTER, TaskStatus.QUEUED)  # operator replay


def test_sources_of_inverts_the_table() -> None:
    assert sources_of(TaskStatus.RUNNING) == {TaskStatus.QUEUED, TaskStatus.RETRYING, TaskStatus.RUNNING}
    assert sources_of(TaskStatus.COMPLETED) == {TaskStatus.RUNNING}
    for target in TaskStatus:
        for source in sources_of(target):
            assert can_transition(source, target)


def test_terminal_statuses() -> None:
    assert TERMINAL == {
        TaskStatus.COMPLETED,
        TaskStatus.COMPLETED_WITH_ERRORS,
        TaskStatus.CANCELLED,
        TaskStatus.FAILED,
        TaskStatus.DEAD_LETTER,
    }
