import pytest

from dynlora.decide.schedule import Schedule
from dynlora.errors import DynloraError


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


def test_fractions_of_the_run_and_bare_numbers():
    every = Schedule.parse("every:0.2").for_run(50)
    assert (every.n, every.warmup, every.stop) == (10, 0, 50)
    assert fired(every, 50) == [10, 20, 30, 40]
    assert fired(Schedule.parse(0.25, warmup=0.1).for_run(40), 40) == [14, 24, 34]
    assert Schedule.parse("10") == Schedule.parse("every:10") == Schedule.parse(10.0)
    assert Schedule.parse("every:0.001").for_run(100).n == 1  # a fraction is at least one step


@pytest.mark.parametrize("value", [0, -1, 2.5, 1.5])
def test_spans_are_whole_steps_or_fractions(value):
    with pytest.raises(DynloraError, match="a whole number of steps or a fraction below 1"):
        Schedule.parse(value, label="--interval")
    with pytest.raises(DynloraError, match="warm-up"):
        Schedule.parse(5, warmup=value - 10)


def test_one_message_names_the_option_and_the_run():
    with pytest.raises(DynloraError) as err:
        Schedule.parse("once:4", warmup=3, label="--schedule").for_run(6)
    assert str(err.value) == ("--schedule once:4 (warm-up 3) first fires at step 7, but a run of 6 steps ends first "
                              "(it acts before its last step)")
