import math

import pytest

from bermo_prune.pruning.schedules import SHAPES, Schedule, ramp


@pytest.mark.parametrize(
    "shape, expected",
    [
        ("cubic", 0.875),
        ("linear", 0.5),
        ("cosine", 0.5),
        ("exponential", (1 - math.exp(-2.5)) / (1 - math.exp(-5))),
        ("one_shot", 1.0),
        ("constant", 1.0),
    ],
)
def test_ramp_at_half_progress(shape, expected):
    assert ramp(shape, 0.5) == pytest.approx(expected)


@pytest.mark.parametrize("shape", ["cubic", "linear", "cosine", "exponential"])
def test_ramp_ends(shape):
    assert ramp(shape, 0.0) == 0.0
    assert ramp(shape, 1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_ramp_is_monotone_and_clamped(shape):
    values = [ramp(shape, i / 100) for i in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert ramp(shape, -0.5) == 0.0
    assert ramp(shape, 1.5) == pytest.approx(1.0)


def test_ramp_rejects_unknown_shape():
    with pytest.raises(ValueError, match="unknown schedule shape"):
        ramp("quadratic", 0.5)


def test_cubic_schedule_values():
    s = Schedule("cubic", initial=0.0, final=0.8, start_step=100, end_step=300)
    assert s(0) == 0.0
    assert s(99) == 0.0  # dense warm-up
    assert s(100) == 0.0
    assert s(200) == pytest.approx(0.875 * 0.8)
    assert s(300) == pytest.approx(0.8)
    assert s(10_000) == pytest.approx(0.8)  # cool-down


def test_linear_and_cosine_schedules_from_nonzero_initial():
    linear = Schedule("linear", initial=0.2, final=0.6, start_step=0, end_step=100)
    assert linear(25) == pytest.approx(0.3)
    cosine = Schedule("cosine", initial=0.2, final=0.6, start_step=0, end_step=100)
    assert cosine(25) == pytest.approx(0.2 + 0.4 * (1 - math.cos(math.pi / 4)) / 2)


def test_exponential_schedule_uses_rate_five():
    s = Schedule("exponential", initial=0.0, final=1.0, start_step=0, end_step=10)
    assert s(2) == pytest.approx((1 - math.exp(-1)) / (1 - math.exp(-5)))


def test_one_shot_jumps_at_start():
    s = Schedule("one_shot", initial=0.0, final=0.9, start_step=50, end_step=50)
    assert s(49) == 0.0
    assert s(50) == 0.9
    assert not s.in_window(50)
    wide = Schedule("one_shot", initial=0.0, final=0.9, start_step=50, end_step=80)
    assert wide(50) == wide(79) == 0.9


def test_constant_is_final_everywhere():
    s = Schedule("constant", initial=0.0, final=0.5, start_step=10, end_step=20)
    assert [s(step) for step in (0, 10, 15, 20, 99)] == [0.5] * 5


@pytest.mark.parametrize("shape", SHAPES)
def test_schedules_are_monotone(shape):
    s = Schedule(shape, initial=0.1, final=0.9, start_step=10, end_step=90)
    values = [s(step) for step in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(0.9)


def test_in_window():
    s = Schedule("cubic", 0.0, 0.9, start_step=10, end_step=20)
    assert [s.in_window(step) for step in (9, 10, 19, 20)] == [False, True, True, False]


def test_from_fractions_rounds_to_steps():
    s = Schedule.from_fractions("cubic", 0.0, 0.9, start=0.1, end=0.7, total_steps=1001)
    assert (s.start_step, s.end_step) == (100, 701)
    assert s.final == 0.9


def test_invalid_windows_are_rejected():
    with pytest.raises(ValueError, match="before start_step"):
        Schedule("linear", 0.0, 0.5, start_step=20, end_step=10)
    with pytest.raises(ValueError, match="start_step"):
        Schedule("linear", 0.0, 0.5, start_step=-1, end_step=10)
    with pytest.raises(ValueError, match="unknown schedule shape"):
        Schedule("step", 0.0, 0.5, start_step=0, end_step=10)
