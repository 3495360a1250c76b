import pytest

from dynlora.errors import DynloraError
from dynlora.decide.schedule import Schedule


def fired(schedule: Schedule, total: int) -> list[int]:
    return [s for s in range(1, total + 1) if schedule.fires(s, stop=total)]


def test_once_and_every():
    assert fired(Schedule.parse("once:5"), 20) == [5]
    assert fired(Schedule.parse("every:5"), 20) == [5, 10, 15]  # not at the last step
    assert fired(Schedule.parse("every:4", warmup=6), 20) == [10, 14, 18]
    assert fired(Schedule.parse("once:4", warmup=6), 20) == [10]


@pytest.mark.parametrize("text", ["never:3", "every:x", "every:0", "once:-2"])
def test_bad_schedules(text):
    with pytest.raises(DynloraError):
        Schedule.parse(text)


def test_schedule_longer_than_the_run():
    with pytest.raises(DynloraError, match="first fires"):
        Schedule.parse("every:30").check(20)
