"""course_lib.tripwire: a declared reference is seen however it is reached; nothing else is."""
import json
import sys
import threading
import types

import torch

from course_lib import lora
from course_lib.tripwire import TAMPERING, Tripwire

NAMES = ["lora.lora_scaling", "lora.LoRALinear", "json", "torch.add", "memory.NF4_DQ_BITS", "no.such.thing"]


def _hits(function) -> set[str]:
    with Tripwire(NAMES) as tripwire:
        function()
    return tripwire.hits


def test_own_code_and_unrelated_library_calls_are_not_hits():
    assert _hits(lambda: 16 / 8) == set()
    assert _hits(lambda: torch.mul(torch.ones(2), 2)) == set()
    assert _hits(lambda: lora.count_parameters(torch.nn.Linear(2, 2))) == set()


def test_a_declared_function_is_seen_under_any_name():
    alias = getattr(sys.modules["course_lib.lora"], "lora_" + "scaling")
    copy = types.FunctionType(alias.__code__, dict(alias.__globals__), "mine", alias.__defaults__)
    for call in (lambda: lora.lora_scaling(16, 8), lambda: alias(16, 8), lambda: copy(16, 8),
                 lambda: exec("from course_lib.lora import lora_scaling as f; f(16, 8)")):
        assert _hits(call) == {"lora.lora_scaling"}


def test_a_class_package_and_builtin_are_seen():
    assert "lora.LoRALinear" in _hits(lambda: lora.LoRALinear(torch.nn.Linear(4, 4), r=2, alpha=4))
    assert _hits(lambda: json.dumps({"a": 1}, indent=1)) == {"json"}
    assert _hits(lambda: torch.add(torch.ones(1), 1)) == {"torch.add"}


def test_a_reference_run_on_a_thread_started_during_the_call_is_seen():
    def threaded():
        worker = threading.Thread(target=lora.lora_scaling, args=(16, 8))
        worker.start()
        worker.join()

    assert _hits(threaded) == {"lora.lora_scaling"}


def test_switching_the_hook_off_is_itself_recorded():
    def untrace():
        sys.setprofile(None)
        lora.lora_scaling(16, 8)

    assert TAMPERING in _hits(untrace)
    assert TAMPERING in _hits(lambda: threading.setprofile(None))
    assert TAMPERING in _hits(lambda: setattr(threading, "_profile_hook", None))
    assert sys.getprofile() is None  # the hook is gone after the block either way


def test_a_decorated_reference_is_told_apart_from_other_decorated_functions():
    """torch.inference_mode-decorated functions share their wrapper's code object: watching the wrapper would
    flag every such call. The function under the decorator is watched instead."""
    from course_lib import align, dpo
    from course_lib.data import load_preferences
    from course_lib.models import tiny_model

    model, tokenizer = tiny_model(seed=0)
    pairs = load_preferences("test")[:1]
    with Tripwire(["dpo.pair_logprobs"]) as tripwire:
        align.generate_replies(model, tokenizer, ["Hi"], max_new_tokens=2, progress=False)
    assert tripwire.hits == set()
    with Tripwire(["dpo.pair_logprobs"]) as tripwire:
        dpo.pair_logprobs(model, tokenizer, pairs, progress=False)
    assert tripwire.hits == {"dpo.pair_logprobs"}
