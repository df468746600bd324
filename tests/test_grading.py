"""course_lib.grading: failures say what differs; impostor objects never pass."""
import pytest
import torch

from course_lib.grading import GradingError, assert_number_close, assert_tensors_close, check


def test_close_tensors_pass():
    assert_tensors_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0 + 1e-7]))


def test_shape_mismatch_is_named():
    with pytest.raises(GradingError, match=r"W has shape \(3, 2\), expected \(2, 3\)"):
        assert_tensors_close(torch.zeros(3, 2), torch.zeros(2, 3), name="W")


def test_dtype_mismatch_is_named():
    with pytest.raises(GradingError, match="dtype torch.float64, expected torch.float32"):
        assert_tensors_close(torch.zeros(2, dtype=torch.float64), torch.zeros(2))


def test_value_mismatch_reports_index_and_errors():
    expected = torch.zeros(2, 3)
    actual = expected.clone()
    actual[1, 2] = 0.5
    with pytest.raises(GradingError) as err:
        assert_tensors_close(actual, expected, atol=1e-3, rtol=0, name="logits")
    text = str(err.value)
    assert "1 of 6 elements" in text and "(1, 2)" in text and "got 0.5" in text and "max abs error 0.5" in text


def test_nan_differs_from_number():
    with pytest.raises(GradingError):
        assert_tensors_close(torch.tensor([float("nan")]), torch.tensor([0.0]))


class AlwaysEqual:
    def __eq__(self, other):
        return True

    def __bool__(self):
        return True


@pytest.mark.parametrize("impostor", [AlwaysEqual(), [1.0, 2.0], None])
def test_non_tensors_rejected(impostor):
    with pytest.raises(GradingError, match="should be a torch.Tensor"):
        assert_tensors_close(impostor, torch.tensor([1.0, 2.0]))


def test_numbers():
    assert_number_close(0.1 + 0.2, 0.3)
    assert_number_close(torch.tensor(2.0), 2.0)
    with pytest.raises(GradingError, match="alpha is 2, expected 4"):
        assert_number_close(2, 4.0, name="alpha")
    for impostor in (AlwaysEqual(), True, "4", float("nan")):
        with pytest.raises(GradingError):
            assert_number_close(impostor, 4.0)
    with pytest.raises(GradingError) as err:  # no hint: a hidden test shows nothing of the comparison
        assert_number_close(2, 4.0)
    assert err.value.summary is None
    for value in (2, "4"):  # a hint is the message a hidden test may show, wrong value or wrong type
        with pytest.raises(GradingError, match="Average over classes") as err:
            assert_number_close(value, 4.0, hint="Average over classes.")
        assert err.value.summary == "Average over classes."


def test_check_needs_a_real_true():
    import numpy as np

    check(True, "unused")
    check(torch.tensor(True), "unused")
    check(np.bool_(True), "unused")  # what numpy comparisons return
    with pytest.raises(GradingError, match="numpy false"):
        check(np.bool_(False), "numpy false")
    for falsy in (False, AlwaysEqual(), 1, torch.tensor([True, True])):
        with pytest.raises(GradingError, match="B must start at zero"):
            check(falsy, "B must start at zero")
