"""course_lib.grading.wire: plain-data values only, round trips exact, anything else marked, malformed input refused."""
import math

import pytest
import torch
from torch import nn

from course_lib.grading import wire
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


def test_numpy_values_cross_as_python_numbers_and_tensors():
    import numpy as np

    back = _roundtrip([np.float64(0.25), np.float32(1.5), np.int64(7), np.bool_(True), np.arange(6.0).reshape(2, 3),
                       np.array([True, False]), np.array(3, dtype=np.int32), np.array(["a", "b"]),
                       np.array([object()], dtype=object)])
    assert back[:4] == [0.25, 1.5, 7, True] and [type(b) for b in back[:4]] == [float, float, int, bool]
    assert type(back[4]) is torch.Tensor and back[4].dtype == torch.float64 and back[4].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back[5].dtype == torch.bool and back[6].dtype == torch.int32 and back[6].shape == ()
    assert isinstance(back[7], wire.Unsupported) and isinstance(back[8], wire.Unsupported)
    strided = np.arange(12.0).reshape(3, 4)[:, ::2]  # a non-contiguous view travels as its values
    assert _roundtrip(strided).tolist() == strided.tolist()


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


def test_packed_messages_round_trip_and_anything_else_is_refused():
    tensors = {}
    message = {"value": wire.encode([torch.ones(3)], tensors)}
    data = wire.pack(message, tensors)
    read, read_tensors = wire.unpack(data)
    assert torch.equal(wire.decode(read["value"], read_tensors)[0], torch.ones(3))
    with pytest.raises(wire.WireError, match="larger"):
        wire.unpack(data, max_bytes=10)
    for bad in (data[:-5], b"XX" + data, data[:len(data) // 2], b"", "text", None):
        with pytest.raises(wire.WireError):
            wire.unpack(bad)
    text = wire.encode_answer(message, tensors)
    read, read_tensors = wire.decode_answer(text)
    assert torch.equal(wire.decode(read["value"], read_tensors)[0], torch.ones(3))
    for bad in (None, 3, "not base64!", text[:-3], "A" * (wire.MAX_MESSAGE_BYTES // 2)):
        with pytest.raises(wire.WireError):
            wire.decode_answer(bad, max_bytes=wire.MAX_MESSAGE_BYTES // 4)


def test_decoding_is_capped_however_the_message_repeats_itself():
    # One 1 MB tensor referenced 300 times is 300 MB once decoded; 200k tiny values are too many items.
    tensors = {"t0": torch.zeros(2**18)}
    many_copies = {"t": "list", "v": [{"t": "tensor", "k": "t0"}] * 300}
    with pytest.raises(wire.WireError, match="too large"):
        wire.decode(many_copies, tensors)
    assert len(wire.decode({"t": "list", "v": [{"t": "tensor", "k": "t0"}] * 200}, tensors)) == 200
    with pytest.raises(wire.WireError, match="too large"):
        wire.decode({"t": "list", "v": [{"t": "none"}] * (wire.MAX_ITEMS + 1)}, {})
    deep = {"t": "none"}
    for _ in range(wire.MAX_DEPTH + 2):
        deep = {"t": "list", "v": [deep]}
    with pytest.raises(wire.WireError):
        wire.decode(deep, {})


@pytest.mark.parametrize("bad", [{"t": "float", "v": "abc"}, {"t": "int", "v": "1.5"},
                                 {"t": "module", "cls": "Dropout", "p": 7.0}, {"t": "module", "cls": "Scale"}])
def test_malformed_scalars_and_modules_raise_wire_errors_not_others(bad):
    with pytest.raises(wire.WireError):
        wire.decode(bad, {})


def _serve(tmp_path, monkeypatch, namespace, name, args, probe=None):
    published = []
    monkeypatch.setattr("IPython.display.publish_display_data", published.append)
    tensors = {}
    request = {"name": name, "args": wire.encode(list(args), tensors), "kwargs": wire.encode({}, tensors)}
    if probe is not None:
        request["probe"] = probe
    (tmp_path / "request").write_bytes(wire.pack(request, tensors))
    wire.serve(str(tmp_path / "request"), namespace)
    (text,) = [p[wire.ANSWER_MIME] for p in published]
    return wire.decode_answer(text)


def test_serve_answers_with_data_and_reports_mutation_and_errors(tmp_path, monkeypatch):
    def honest(x):
        return x * 2

    def mutating(x):
        x.add_(1)
        return x

    def failing(x):
        raise KeyError("secret text that must not travel")

    namespace = {"honest": honest, "mutating": mutating, "failing": failing}
    answer, tensors = _serve(tmp_path, monkeypatch, namespace, "honest", [torch.ones(2)])
    assert answer["ok"] and answer["mutated"] == []
    assert torch.equal(wire.decode(answer["value"], tensors), torch.full((2,), 2.0))
    answer, _ = _serve(tmp_path, monkeypatch, namespace, "mutating", [torch.ones(2)])
    assert answer["mutated"] == ["0"]
    answer, _ = _serve(tmp_path, monkeypatch, namespace, "failing", [1])
    assert answer == {"ok": False, "error": "KeyError"}
    answer, _ = _serve(tmp_path, monkeypatch, namespace, "missing", [1])
    assert answer == {"ok": False, "error": "NameError"}


def test_a_probe_is_defined_from_the_request_in_a_namespace_of_its_own(tmp_path, monkeypatch):
    # The kernel's globals hold a rewritten probe and rebound helpers; only the learner's own class is taken.
    class Doubler:
        def __call__(self, x):
            return x * 2

    fake = lambda x: torch.full_like(x, 99.0)  # noqa: E731
    namespace = {"Doubler": Doubler, "doubler_probe": fake, "torch": None, "helper": fake, "secret": 1}
    probe = {"setup": "import torch\ndef helper(x):\n    return x + 1",
             "source": "def doubler_probe(x):\n    return helper(Doubler()(x)), 'secret' in globals()",
             "learner": ["Doubler"]}
    answer, tensors = _serve(tmp_path, monkeypatch, namespace, "doubler_probe", [torch.ones(2)], probe)
    value, saw_secret = wire.decode(answer["value"], tensors)
    assert torch.equal(value, torch.full((2,), 3.0)) and saw_secret is False
    assert namespace["doubler_probe"] is fake  # the kernel's own names are left as they were
