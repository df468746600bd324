"""course_lib.wire: plain-data values only, round trips exact, anything else marked, malformed input refused."""
import math

import pytest
import torch
from torch import nn

from course_lib import wire
from course_lib.grading import Scale


def _roundtrip(value, refs=None, named=None):
    tensors = {}
    encoded = wire.encode(value, tensors, refs)
    return wire.decode(encoded, tensors, named)


def test_plain_values_round_trip_exactly():
    value = (None, True, 3, 2**80, -0.5, float("inf"), "text", [1, 2.5], {"a": torch.arange(6).view(2, 3)},
             torch.tensor([1.0, float("nan")], dtype=torch.float64))
    back = _roundtrip(value)
    assert type(back) is tuple and back[:9] == value[:8] + (back[8],)
    assert torch.equal(back[8]["a"], value[8]["a"]) and back[8]["a"].dtype == torch.int64
    assert back[9].dtype == torch.float64 and back[9][0] == 1.0 and math.isnan(back[9][1])
    grad = _roundtrip(torch.ones(2, requires_grad=True))
    assert grad.requires_grad and type(grad) is torch.Tensor


def test_objects_that_are_not_data_come_back_as_unsupported_markers():
    class Liar:
        def __eq__(self, other):
            return True

    back = _roundtrip([Liar(), torch.nn.Linear(2, 2), lambda x: x, (i for i in range(3))])
    assert all(isinstance(b, wire.Unsupported) for b in back)
    assert "Liar" in back[0].type_name
    assert back[0] != 0.0  # an Unsupported marker is never equal to a value


def test_named_objects_and_known_modules_cross_by_description():
    tokenizer = object()
    back = _roundtrip([tokenizer, nn.Identity(), nn.Dropout(0.25), Scale(2.0)], refs={id(tokenizer): "tokenizer"},
                      named={"tokenizer": "the kernel's tokenizer"})
    assert back[0] == "the kernel's tokenizer"
    assert isinstance(back[1], nn.Identity) and back[2].p == 0.25 and back[3](torch.ones(1)).item() == 2.0


@pytest.mark.parametrize("bad", [{"t": "pickle", "v": "..."}, {"t": "tensor", "k": "missing"}, [], {"t": 3},
                                 {"t": "list", "v": "not a list"}])
def test_malformed_messages_are_refused(bad):
    with pytest.raises(wire.WireError):
        wire.decode(bad, {})


def test_files_round_trip_and_oversized_answers_are_refused(tmp_path):
    tensors = {}
    message = {"value": wire.encode([torch.ones(3)], tensors)}
    wire.write(tmp_path / "m", message, tensors)
    read, read_tensors = wire.read(tmp_path / "m")
    assert torch.equal(wire.decode(read["value"], read_tensors)[0], torch.ones(3))
    with pytest.raises(wire.WireError, match="larger"):
        wire.read(tmp_path / "m", max_bytes=10)
    with pytest.raises(wire.WireError, match="no answer"):
        wire.read(tmp_path / "missing")
