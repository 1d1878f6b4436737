"""scripts/choice_timings.py, the command behind docs/convolution.md's "Smaller choices": every
choice and the alternative it is timed against compute the same result, so the comparison
stays a fair one as the code changes."""
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import choice_timings as T  # noqa: E402


@pytest.mark.parametrize("name", sorted(T.COMPARISONS))
def test_a_choice_and_its_alternative_agree(name):
    groups = T.COMPARISONS[name](3)
    assert groups
    for contenders in groups:
        assert len(contenders) >= 2
        first = np.asarray(next(iter(contenders.values()))())
        assert first.size > 0 and np.any(first != 0)
        T.same(contenders)   # raises on a mismatch


def test_the_agreement_check_fails_on_a_different_result():
    with pytest.raises(AssertionError):
        T.same({"a": lambda: np.ones(3), "b": lambda: np.array([1.0, 1.0, 1.5])})


def test_timing_gives_a_median_and_spread_per_contender():
    res = T.interleaved({"a": lambda: None, "b": lambda: sum(range(100))}, reps=3, warmup=1)
    assert set(res) == {"a", "b"} and all(med >= 0 and iqr >= 0 for med, iqr in res.values())
