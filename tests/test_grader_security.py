"""Hostile submissions, graded end to end by the instructor command's function, next to honest ones.

Every case is a submission of the small fixture assignment (tests/data/fixture_course: `lora_scale`, 1 point,
and `scaled_sum`, 2 points). All are graded in one sandboxed run with small limits; each test then checks that
the run completed, the attacker got no points it did not earn, the honest students' grades are right, the
gradebook and every file outside the sandbox are intact, and the feedback names the reason without
revealing the hidden tests.
"""
import csv
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import tempfile
from pathlib import Path

import nbformat
import pytest

from grader.batch import grade
from grader.gradebook import open_course, release
from grader.sandbox import Limits
from notebook_tools import ROOT, with_answers

FIXTURE = ROOT / "tests" / "data" / "fixture_course"
NAME = "00_fixture"
MARKER = "HIDDEN-MARKER-7f3a"
GOOD_SCALE = "def lora_scale(alpha, r):\n    return alpha / r"
GOOD_SUM = "def scaled_sum(x, y, alpha):\n    return x + alpha * y"
WRONG_SCALE = "def lora_scale(alpha, r):\n    return r / alpha"


def _answers(scale=GOOD_SCALE, total=GOOD_SUM):
    return {"lora_scale": scale, "scaled_sum": total}


# Attribute chains of 2,000 links: a static check that walks every chain from every node is quadratic (the old one
# took minutes and a gigabyte on these); a linear one takes seconds, and the kernel compiles them in about 2 s.
STATIC_BOMB = "".join(f"_{i} = lambda: (a" + ".a" * 2000 + ")\n" for i in range(80))
PROBE = "01_fixture_probe"  # a whole-component exercise (2 points), graded through a locked, given probe
LAYER = ("class ScaledLayer(nn.Module):\n    def __init__(self, alpha, r):\n        super().__init__()\n"
         "        self.scale = {}\n\n    def forward(self, x):\n        return x * self.scale")
GOOD_LAYER, WRONG_LAYER = LAYER.format("alpha / r"), LAYER.format("r / alpha")
STUB_LAYER = ("class ScaledLayer(nn.Module):\n    def __init__(self, alpha, r):\n        raise NotImplementedError()\n\n"
              "    def forward(self, x):\n        raise NotImplementedError()")
FAKE_PROBE = ("def scaled_layer_probe(x, alpha, r):\n    # computes what the tests expect, without the layer\n"
              "    return {'out': x * alpha / r, 'is_module': True}")


def _probe_cases() -> dict:
    """student -> (solution cell, (source for the probe cell or None), added cell or None, expected points, reason)."""
    return {
        "honest_correct": (GOOD_LAYER, None, None, 2, ""),
        "honest_wrong": (WRONG_LAYER, None, None, 0, "ScaledLayer(16, 8)"),
        # 11. a probe is trusted code: an edited copy is replaced, a rebound name is not the one the grader calls
        "probe_rewritten": (STUB_LAYER, FAKE_PROBE, None, 0, "locked"),
        "probe_rebound": (STUB_LAYER + "\n\n\n" + FAKE_PROBE, None, None, 0, "did not return"),
        "probe_rebound_later": (STUB_LAYER, None, FAKE_PROBE + "\nnn = None\ntorch = None", 0, "did not return"),
        "probe_uses_reference": ("import sys\nclass ScaledLayer(nn.Module):\n    def __init__(self, alpha, r):\n"
                                 "        super().__init__()\n        self.scale = getattr(sys.modules['course_lib.lora'], "
                                 "'lora_' + 'scaling')(alpha, r)\n\n    def forward(self, x):\n        return x * self.scale",
                                 None, None, 0, "reference implementation"),
    }


def _cases(paths: dict) -> dict:
    """student -> (answers or raw bytes or None for a notebook edited by a function, expected total, reason)."""
    secrets = [paths["gradebook"], paths["solution"], paths["other"], paths["canary"], paths["other_course"],
               "/etc/shadow"]
    read_code = ("import os\ndef lora_scale(alpha, r):\n    found = []\n"
                 f"    for p in {[str(p) for p in secrets]!r}:\n"
                 "        try:\n            found.append(open(p, 'rb').read(200))\n        except OSError:\n            pass\n"
                 f"    found += [v for v in os.environ.values() if {SECRET!r} in v]\n"
                 "    print('FOUND', found)\n    return alpha / r if not found else -1.0\n"
                 "for name in ('/proc/1/cmdline', '/proc/1/environ', '/proc/self/environ'):\n"
                 "    try:\n        print(name, open(name, 'rb').read().replace(b'\\0', b' ')[:3000])\n"
                 "    except OSError as err:\n        print(name, err)\n"
                 "print(dict(os.environ))\nlora_scale(16, 8)  # the tests' calls print nowhere: look once here")
    write_code = ("import os\ndef lora_scale(alpha, r):\n"
                  f"    for p in {[str(p) for p in secrets]!r}:\n"
                  "        for attempt in (lambda: open(p, 'wb').write(b'pwned'), lambda: os.remove(p)):\n"
                  "            try:\n                attempt()\n            except OSError:\n                pass\n"
                  "    return alpha / r")
    # Links planted wherever the kernel can write or see a grader folder, named like call requests and
    # answers, pointing at files outside the sandbox: the grader must never write or read through them.
    plant = ("import glob, os\n"
             f"TARGETS = {[str(p) for p in secrets[:4]]!r}\n"
             "def plant():\n"
             "    for d in ['.', '/tmp', '/dev/shm'] + glob.glob('/tmp/cg-*/*/*') + glob.glob('/tmp/cg-*/*'):\n"
             "        for i in range(1, 25):\n"
             "            for suffix in ('', '.json', '.safetensors', '.answer', '.answer.json', '.answer.safetensors'):\n"
             "                try:\n                    os.symlink(TARGETS[i % len(TARGETS)], os.path.join(d, f'c{i}{suffix}'))\n"
             "                except OSError:\n                    pass\n"
             "        for name in os.listdir(d) if os.path.isdir(d) else []:\n"
             "            try:\n                os.unlink(os.path.join(d, name)); os.symlink(TARGETS[0], os.path.join(d, name))\n"
             "            except OSError:\n                pass\n"
             "plant()\n"
             "def lora_scale(alpha, r):\n    plant()\n    return alpha / r")
    leak = ("from IPython.display import display, update_display\n"
            "def lora_scale(alpha, r):\n"
            "    if (alpha, r) == (16, 8):\n        display('placeholder', display_id='leak')\n        return alpha / r\n"
            "    update_display(f'HIDDENCALL alpha={alpha} r={r}', display_id='leak')\n"
            "    print(f'HIDDENCALL printed {alpha} {r}')\n"
            "    raise type(f'HIDDENCALL_{alpha}_{r}', (Exception,), {})()")
    bomb = ("import torch, course_lib.grading.wire as w\n_encode = w.encode\nclass Bomb:\n    pass\n"
            "def _bomb(value, tensors, refs=None, depth=0):\n"
            "    if isinstance(value, Bomb):\n        tensors['t0'] = torch.zeros(2**21)\n"
            "        return {'t': 'list', 'v': [{'t': 'tensor', 'k': 't0'}] * 50_000}\n"
            "    return _encode(value, tensors, refs, depth)\n"
            "w.encode = _bomb\ndef lora_scale(alpha, r):\n    return Bomb()")
    disk = ("import os\ndef lora_scale(alpha, r):\n    written = 0\n    for i in range(64):\n        try:\n"
            "            with open(f'/tmp/fill{i}', 'wb') as f:\n                f.write(b'0' * (32 * 2**20))\n"
            "            written += 32\n        except OSError:\n            break\n"
            "    print('WROTE', written)\n    return alpha / r if written < 1024 else -1.0\nlora_scale(16, 8)")
    computed = "getattr(sys.modules['course_lib.lora'], 'lora_' + 'scaling')"
    return {
        "honest_correct": (_answers(), 3, ""),
        "honest_wrong": (_answers(scale=WRONG_SCALE), 2, "lora_scale(16, 8) is 0.5, expected 2"),
        "honest_counts_threads": (_answers(scale=GOOD_SCALE + "\nimport torch\nprint('THREADS', torch.get_num_threads())"),
                                  3, ""),
        "honest_says_the_name": (_answers(scale='def lora_scale(alpha, r):\n    """Unlike lora.lora_scaling, mine."""\n'
                                          '    print("lora_scaling", "lora.lora_scaling")\n    return alpha / r'), 3, ""),
        "honest_numpy": (_answers(scale="import numpy as np\ndef lora_scale(alpha, r):\n    return np.float64(alpha) / np.int64(r)"),
                         3, ""),
        "infinite_loop": (_answers(scale="def lora_scale(alpha, r):\n    while True:\n        pass"), 2,
                          "no answer within"),
        "endless_print": (_answers(scale=GOOD_SCALE + "\nwhile True:\n    print('spam' * 100)"), 0, "was stopped"),
        "sys_exit": (_answers(scale="import sys\ndef lora_scale(alpha, r):\n    sys.exit(0)"), 2, "did not return"),
        "raise_systemexit": (_answers(scale="def lora_scale(alpha, r):\n    raise SystemExit"), 2, "did not return"),
        "os_exit": (_answers(total="import os\ndef scaled_sum(x, y, alpha):\n    os._exit(0)"), 1, "did not return"),
        "segfault": (_answers(total="import ctypes\ndef scaled_sum(x, y, alpha):\n    return ctypes.string_at(0)"),
                     1, "did not return"),
        "memory_bomb": (_answers(scale="def lora_scale(alpha, r):\n    x = bytearray(64 * 2**30)\n"
                                 "    return alpha / r"), 2, "did not return"),
        "fork_bomb": (_answers(scale="import os, time\nfor _ in range(2000):\n    try:\n        if os.fork() == 0:\n"
                               "            time.sleep(20)\n            os._exit(0)\n    except OSError:\n        break\n"
                               + WRONG_SCALE), 2, "is 0.5, expected 2"),
        "big_file": (_answers(scale="def lora_scale(alpha, r):\n    with open('big.bin', 'wb') as f:\n"
                              "        for _ in range(1024):\n            f.write(b'0' * 2**20)\n    return alpha / r"),
                     None, "did not return"),
        # 1. writes that would escape through links
        "plant_links": (_answers(scale=plant), 3, ""),
        "write_secrets": (_answers(scale=write_code), 3, ""),
        # 2. an allowlist: nothing of the machine to read, no secret in the environment
        "read_secrets": (_answers(scale=read_code), 3, ""),
        "network": (_answers(total="import socket\ndef scaled_sum(x, y, alpha):\n"
                             f"    for host in ('127.0.0.1', '1.1.1.1'):\n        s = socket.socket()\n"
                             "        s.settimeout(1)\n        try:\n"
                             f"            s.connect((host, {paths['port']}))\n            return x\n"
                             "        except OSError:\n            pass\n    return x + alpha * y"), 3, ""),
        # 3. texts no writer accepts, code no parser survives
        "surrogates": (_answers(scale=GOOD_SCALE + "\nprint('\\ud800 lone surrogate')\n"
                                "raise ValueError('\\udcff\\x00\\x1b[31m')"), 3, ""),
        "deep_nesting": (None, 3, ""),
        # 4. hidden inputs must not come back through display updates, printing or exception names
        "hidden_leak": (_answers(scale=leak), 2, "on a hidden test input"),
        # 5. what an instructor's browser would run
        "html_output": (_answers(scale=GOOD_SCALE + "\nfrom IPython.display import HTML, Javascript, SVG, Markdown, display\n"
                                 "display(HTML('<script>alert(1)</script><b>x</b>'), Javascript('alert(2)'), "
                                 "SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(3)\"/>'), "
                                 "Markdown('<img src=x onerror=alert(4)>'))"), 3, ""),
        # 6. limits that limit
        "display_flood": (_answers(scale=GOOD_SCALE + "\nfrom IPython.display import display\n"
                                   "h = display('x', display_id='flood')\nfor _ in range(300):\n"
                                   "    h.update('y' * 100_000)"), 3, ""),
        "widget_output": (_answers(scale=GOOD_SCALE + "\nimport ipywidgets\nbox = ipywidgets.Output()\n"
                                   "display(box)\nwith box:\n    print('inside a widget')"), 3, ""),
        "slow_everything": (_answers(scale="import time\nfor _ in range(9):\n    time.sleep(8)\n"
                                     "def lora_scale(alpha, r):\n    time.sleep(7)\n    return alpha / r"), None, ""),
        "disk_fill": (_answers(scale=disk), 3, ""),
        "wire_bomb": (_answers(scale=bomb), 2, ""),
        # 8. references reached in ways a static check cannot see
        "ref_computed": (_answers(scale=f"import sys\ndef lora_scale(alpha, r):\n    return {computed}(alpha, r)"), 2,
                         "reference implementation"),
        "ref_exec": (_answers(scale="exec('from course_lib import lora as _l')\ndef lora_scale(alpha, r):\n"
                              "    return _l.lora_scaling(alpha, r)"), 2, "reference implementation"),
        "ref_other_cell": (_answers(total=f"import sys\nF = {computed}\n" + GOOD_SUM,
                                    scale="def lora_scale(alpha, r):\n    return F(alpha, r)"), 2,
                           "reference implementation"),
        "ref_code_copy": (_answers(scale=f"import sys, types\n_f = {computed}\n"
                                     "lora_scale = types.FunctionType(_f.__code__, dict(_f.__globals__), 'lora_scale', "
                                     "_f.__defaults__)"),
                          2, "did not return"),  # the stub has no code to copy: the cell fails, lora_scale is missing
        "ref_magic": (_answers(scale="%time from course_lib.lora import lora_scaling as _f\n"
                               "def lora_scale(alpha, r):\n    return _f(alpha, r)"), 2, "reference implementation"),
        "ref_only_under_grader": (_answers(scale="import inspect, sys\ndef lora_scale(alpha, r):\n"
                                          "    if any(f.function == 'serve' for f in inspect.stack()):\n"
                                          f"        return {computed}(alpha, r)\n    return alpha / r"), 2,
                                  "reference implementation"),
        "ref_untrace": (_answers(scale="import sys\ndef lora_scale(alpha, r):\n    sys.setprofile(None)\n"
                                 f"    return {computed}(alpha, r)"), 2, "reference implementation"),
        # 8b. the references do not exist in the kernel: no thread, child, hook trick, handler or copy finds them
        "ref_thread": (_answers(scale=f"import queue, sys, threading\nF = {computed}\n_in, _out = queue.Queue(), queue.Queue()\n"
                                "def _work():\n    while True:\n        a, r = _in.get()\n        try:\n"
                                "            _out.put(F(a, r))\n        except Exception as err:\n            _out.put(err)\n"
                                "threading.Thread(target=_work, daemon=True).start()\n"
                                "def lora_scale(alpha, r):\n    _in.put((alpha, r))\n    v = _out.get()\n"
                                "    if isinstance(v, Exception):\n        raise v\n    return v"), 2, "reference implementation"),
        "ref_fork": (_answers(scale=f"import os, pickle, sys\nF = {computed}\ndef lora_scale(alpha, r):\n"
                              "    rd, wr = os.pipe()\n    if os.fork() == 0:\n        try:\n            v = F(alpha, r)\n"
                              "        except Exception as err:\n            v = type(err).__name__\n"
                              "        os.write(wr, pickle.dumps(v))\n        os._exit(0)\n    os.close(wr)\n"
                              "    v = pickle.loads(os.read(rd, 1 << 16))\n    os.wait()\n"
                              "    if isinstance(v, str):\n        raise RuntimeError(v)\n    return v"), 2, "did not return"),
        "ref_ctypes": (_answers(scale="import ctypes, sys\ndef lora_scale(alpha, r):\n"
                                "    ctypes.pythonapi.PyEval_SetProfile(None, None)\n    ctypes.pythonapi.PyEval_SetTrace(None, None)\n"
                                f"    return {computed}(alpha, r)"), 2, "reference implementation"),
        "ref_handler": (_answers(scale=f"import sys\nimport course_lib.grading.wire as _w\n_real = _w.serve\n"
                                 "def _serve(path, namespace):\n"
                                 f"    F = {computed}\n"
                                 "    return _real(path, dict(namespace, lora_scale=lambda a, r: F(a, r)))\n"
                                 "_w.serve = _serve\ndef lora_scale(alpha, r):\n    return 0.0"), 2, "reference implementation"),
        "ref_source_copy": (_answers(scale="import ast, glob, marshal, os, sys\n_mod = sys.modules['course_lib.' + 'lora']\n"
                                     "_ns = {}\n"
                                     "for _pyc in glob.glob(os.path.join(os.path.dirname(_mod.__file__), '__pycache__', 'lora*.pyc')):\n"
                                     "    try:\n        exec(marshal.loads(open(_pyc, 'rb').read()[16:]), _ns)\n"
                                     "    except Exception:\n        pass\n"
                                     "_tree = ast.parse(open(_mod.__file__).read())\n"
                                     "for _n in _tree.body:\n    if isinstance(_n, ast.FunctionDef) and _n.name == 'lora_' + 'scaling':\n"
                                     "        exec(compile(ast.Module([_n], []), 'mine.py', 'exec'), _ns)\n"
                                     "def lora_scale(alpha, r):\n    return _ns['lora_' + 'scaling'](alpha, r)"), 2, "did not return"),
        # 10. the grader's own work on learner text and answers is bounded
        "static_bomb": (_answers(total=GOOD_SUM + "\n" + STATIC_BOMB), 3, ""),
        "broadcast_bomb": (_answers(total="import torch\ndef scaled_sum(x, y, alpha):\n"
                                    "    return torch.zeros(2**22, 1) if x.numel() > 2 else x + alpha * y"), 1,
                           "could not use what your function returned"),
        # 9. nothing flows back into the grader's own state
        "mutate_inputs": (_answers(total="import torch\ndef scaled_sum(x, y, alpha):\n    out = x + alpha * y\n"
                                   "    x.zero_()\n    torch.manual_seed(0)\n    return out"), 1, "in place"),
        "monkeypatch": (_answers(scale="import torch, numpy, course_lib.grading as g\n"
                                 "torch.allclose = torch.equal = numpy.allclose = lambda *a, **k: True\n"
                                 "g.check = g.assert_tensors_close = g.assert_number_close = lambda *a, **k: None\n"
                                 "check = assert_number_close = assert_tensors_close = g.check\n"
                                 "def lora_scale(alpha, r):\n    return 0.0",
                                 total="def scaled_sum(x, y, alpha):\n    return x"), 0, "differs"),
        "input_transformer": (_answers(scale="get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])\n"
                                       "def lora_scale(alpha, r):\n    return 0.0",
                                       total="def scaled_sum(x, y, alpha):\n    return x"), 0, "did not return"),
        "showtraceback": (_answers(scale="get_ipython().showtraceback = lambda *a, **k: None\n"
                                   "def lora_scale(alpha, r):\n    return 0.0",
                                   total="def scaled_sum(x, y, alpha):\n    return x"), 0, ""),
        "always_equal": (_answers(scale="class Yes(float):\n    def __eq__(self, other): return True\n"
                                  "    def __ne__(self, other): return False\n"
                                  "def lora_scale(alpha, r):\n    return Yes(0.0)",
                                  total="class T:\n    def __eq__(self, o): return True\n    shape = (5,)\n"
                                  "def scaled_sum(x, y, alpha):\n    return T()"), 0, ""),
        "edit_locked_tests": (None, 0, "locked"),
        "delete_locked_tests": (None, 0, "missing"),
        "odd_metadata": (None, 3, ""),  # a cell whose nbgrader grade_id is a list: an own cell, not a crash
        "reference_call": (_answers(scale="def lora_scale(alpha, r):\n    return lora.lora_scaling(alpha, r)"), 2,
                           "reference implementation"),
        "blank": (None, 0, "NotImplementedError"),
        "invalid_json": (b"{ this is not json", 0, "not a valid notebook"),
        "not_utf8": (b"\xff\xfe\x00\x01 not text", 0, "not UTF-8"),
        "huge": (b'{"cells": [], "pad": "' + b"x" * (21 * 2**20) + b'"}', 0, "MB"),
    }


LIMITS = Limits(memory_mb=2048, processes=128, file_size_mb=64, disk_mb=256, cell_timeout_s=10, call_timeout_s=8,
                notebook_timeout_s=90, output_bytes=200_000, examine_s=45, grader_memory_mb=1024)
SECRET = "SECRET-TOKEN-5c1e"
INJECTED = ['=HYPERLINK("evil.example","x")', "mallory\n00_fixture,mallory,8.0", "<img src=x onerror=alert(1)>",
            os.fsdecode(b"bad\xffname")]


def _digest(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (compiled-bytecode caches left out)."""
    out = {}
    for root in paths:
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("security")
    # Outside /tmp, /home and /root: a canary file and another copy of a course (its solutions and gradebook).
    outside = Path(tempfile.mkdtemp(prefix="course-canary-", dir="/var/tmp"))
    (outside / "canary.txt").write_text("canary")
    shutil.copytree(FIXTURE, outside / "other_course" / "solutions")
    (outside / "other_course" / "gradebook.db").write_bytes(b"SQLite format 3\0other course")
    solutions = tmp / "solutions"
    shutil.copytree(FIXTURE, solutions)
    released = nbformat.read(release(open_course(tmp / "release"), [NAME], solutions)[NAME], as_version=4)
    course, out, subs = tmp / "course", tmp / "out", tmp / "submissions"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    paths = {"gradebook": course / "gradebook.db", "solution": solutions / f"{NAME}.ipynb",
             "other": subs / "honest_correct" / f"{NAME}.ipynb", "port": listener.getsockname()[1],
             "canary": outside / "canary.txt", "other_course": outside / "other_course" / "solutions" / f"{NAME}.ipynb"}
    # A first, honest run creates the gradebook the attackers then try to read and write.
    _write(subs, "honest_correct", released, _answers())
    grade(subs, out, course=course, solutions=solutions, limits=LIMITS, progress=False)
    protected = {p: p.read_bytes() for p in (paths["solution"], paths["other"])}
    machine = [outside, ROOT / "solutions", ROOT / "notebooks", ROOT / "course_lib", ROOT / "grader"]
    before = _digest(machine)
    cases = _cases(paths)
    for student, (content, _, _) in cases.items():
        if isinstance(content, bytes):
            (subs / student).mkdir(parents=True)
            (subs / student / f"{NAME}.ipynb").write_bytes(content)
        elif content is not None:
            _write(subs, student, released, content)
    wrong = {"lora_scale": "def lora_scale(alpha, r):\n    return 0.0", "scaled_sum": "def scaled_sum(x, y, alpha):\n    return x"}
    edited = with_answers(released, wrong)
    for cell in edited.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            cell.source = "pass"
    _save(subs, "edit_locked_tests", edited)
    deleted = with_answers(released, wrong)
    deleted.cells = [c for c in deleted.cells if not c.metadata.get("nbgrader", {}).get("grade")]
    _save(subs, "delete_locked_tests", deleted)
    odd = with_answers(released, _answers())
    odd.cells.append(nbformat.v4.new_code_cell("x = 1", metadata={"nbgrader": {"grade_id": ["lora_scale"]}}))
    _save(subs, "odd_metadata", odd)
    deep = with_answers(released, _answers())
    deep.cells.append(nbformat.v4.new_code_cell("x = " + "1+" * 100_000 + "1"))
    _save(subs, "deep_nesting", deep)
    slow = with_answers(released, _answers(scale="import time\ndef lora_scale(alpha, r):\n    time.sleep(7)\n    return alpha / r"))
    first_test = next(i for i, c in enumerate(slow.cells) if c.metadata.get("nbgrader", {}).get("grade"))
    slow.cells[first_test:first_test] = [nbformat.v4.new_code_cell("import time\ntime.sleep(9)") for _ in range(8)]
    _save(subs, "slow_everything", slow)
    _save(subs, "blank", released)
    _save(subs, "renamed", with_answers(released, _answers()), f"{NAME} (1).ipynb")
    (subs / "removed").mkdir()
    (subs / "removed" / "notes.txt").write_text("I forgot the notebook")
    os.symlink(solutions, subs / "linked_to_solutions")  # a link to the solutions is not a student
    for name in INJECTED:
        _save(subs, name, with_answers(released, _answers()))
    released_probe = nbformat.read(release(open_course(tmp / "release"), [PROBE], solutions)[PROBE], as_version=4)
    for student, (answer, probe, added, _, _) in _probe_cases().items():
        nb = with_answers(released_probe, {"scaled_layer": answer})
        at = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "scaled_layer_probe")
        if probe is not None:
            nb.cells[at].source = probe
        if added is not None:
            nb.cells.insert(at + 1, nbformat.v4.new_code_cell(added))
        _save(subs, student, nb, f"{PROBE}.ipynb")
    env_before = os.environ.get("COURSE_SECRET")
    os.environ["COURSE_SECRET"] = SECRET  # the instructor's environment holds a secret
    try:
        results = grade(subs, out, course=course, solutions=solutions, limits=LIMITS, jobs=2, progress=False)
    finally:
        os.environ.pop("COURSE_SECRET") if env_before is None else os.environ.update(COURSE_SECRET=env_before)
    connections = []
    try:
        connections.append(listener.accept())
    except BlockingIOError:
        pass
    listener.close()
    after = _digest(machine)
    shutil.rmtree(outside)
    return {"results": {r.student: r for r in results if r.notebook == NAME},
            "probe_results": {r.student: r for r in results if r.notebook == PROBE}, "cases": cases, "out": out, "course": course,
            "protected": protected, "connections": connections, "tmp": tmp, "before": before, "after": after,
            "outside": outside}


def _write(subs, student, released, answers):
    _save(subs, student, with_answers(released, answers))


def _save(subs, student, nb, filename=f"{NAME}.ipynb"):
    (subs / student).mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, subs / student / filename)


def _executed_text(graded, student) -> str:
    """Everything the kernel printed or displayed in the executed notebook (not the source, which the test wrote)."""
    executed = nbformat.read(graded["course"] / "autograded" / student / NAME / f"{NAME}.ipynb", 4)
    return json.dumps([c.outputs for c in executed.cells if c.cell_type == "code"])


CASES = list(_cases({k: "x" for k in ("gradebook", "solution", "other", "canary", "other_course", "port")}))


@pytest.mark.parametrize("student", CASES)
def test_each_submission_gets_what_it_earned_and_is_told_why(graded, student):
    result = graded["results"][student]
    _, expected, reason = graded["cases"][student]
    if expected is not None:
        assert result.score == expected, (student, [(e.grade_id, e.points, e.message) for e in result.exercises],
                                          result.notes, result.problem)
    else:
        assert result.score < 3
    # one clock for the whole submission: its notebook, restarts and the tests' calls
    assert result.seconds < LIMITS.notebook_timeout_s + 30, result.seconds
    feedback = (graded["out"] / "feedback" / student / f"{NAME}.html").read_text(encoding="utf-8")
    assert reason in feedback
    for leak in (MARKER, "HIDDENCALL", SECRET, "SQLite format", "BEGIN SOLUTION", "canary", "<script", "onerror"):
        assert leak not in feedback, f"{leak!r} reached the feedback of {student}"
    assert len(feedback) < 1_000_000


@pytest.mark.parametrize("student", list(_probe_cases()))
def test_a_given_probe_is_the_graders_own_code(graded, student):
    # The probe the tests call is the release's text, defined by the kernel's call handler in a namespace of its
    # own: editing it, or binding its name (or the names it uses) to something else, earns nothing.
    result = graded["probe_results"][student]
    *_, expected, reason = _probe_cases()[student]
    assert result.score == expected, (student, [(e.grade_id, e.points, e.message) for e in result.exercises], result.notes)
    feedback = (graded["out"] / "feedback" / student / f"{PROBE}.html").read_text(encoding="utf-8")
    assert reason in feedback and MARKER not in feedback


def test_the_graders_own_memory_is_bounded(graded):
    # The broadcast bomb's answer (16 MB) would need gigabytes in the hidden test's comparison (unbounded, the
    # comparison runs and the shape check reports a difference): the bound on the grader's process refuses it, so
    # that test fails on the allocation, and the grading of everyone else goes on.
    message = next(e.message for e in graded["results"]["broadcast_bomb"].exercises if e.name == "scaled_sum")
    assert "RuntimeError" in message or "MemoryError" in message, message


def test_the_honest_students_grades_are_right_and_in_the_csv_and_gradebook(graded):
    rows = {r["student"]: r for r in csv.DictReader((graded["out"] / "grades.csv").open())}
    assert rows["honest_correct"]["total"] == "5" and rows["honest_correct"][f"{NAME}:lora_scale"] == "1"
    assert rows["honest_correct"][f"{PROBE}:scaled_layer"] == "2"
    assert rows["honest_wrong"]["total"] == "2" and rows["honest_wrong"][f"{NAME}:scaled_sum"] == "2"
    assert set(rows) >= set(CASES) | {"renamed", "removed"}
    assert rows["renamed"][NAME] == "" and rows["removed"][NAME] == ""
    db = sqlite3.connect(graded["course"] / "gradebook.db")
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    exported = {r["student_id"]: r for r in csv.DictReader((graded["out"] / "nbgrader_grades.csv").open())
                if r["assignment"] == NAME}
    assert float(exported["honest_correct"]["score"]) == 3.0 and float(exported["honest_wrong"]["score"]) == 2.0
    assert float(exported["monkeypatch"]["score"]) == 0.0


def test_nothing_outside_the_sandbox_was_touched(graded):
    for path, content in graded["protected"].items():
        assert path.read_bytes() == content, f"{path} was modified"
    assert graded["after"] == graded["before"], "a file of the machine's course or the canary changed"
    assert graded["connections"] == [], "a submission reached a socket outside its sandbox"
    assert not list(graded["tmp"].rglob("big.bin")) and not list(Path("/tmp").glob("fill*")), \
        "a submission's file reached the machine's disk"
    summary = (graded["out"] / "summary.md").read_text()
    assert "Exercises most often failed" in summary and (graded["out"] / "score_distribution.png").stat().st_size > 0


def test_the_kernel_sees_an_allowlist_and_no_secret(graded):
    printed = _executed_text(graded, "read_secrets")
    assert "FOUND []" in printed
    assert SECRET not in printed and "COURSE_SECRET" not in printed
    for hidden in (str(graded["tmp"]), str(graded["outside"]), str(ROOT / "solutions")):
        assert hidden not in printed, f"the kernel saw {hidden}"


def test_display_updates_count_against_the_output_budget(graded):
    path = graded["course"] / "autograded" / "display_flood" / NAME / f"{NAME}.ipynb"
    assert path.stat().st_size < 3 * LIMITS.output_bytes
    assert "output stopped by the grader" in path.read_text()


def test_the_kernels_disk_is_a_capped_tmpfs(graded):
    printed = _executed_text(graded, "disk_fill")
    written = int(printed.split("WROTE ")[1].split("\\n")[0].split('"')[0])
    assert 0 < written <= LIMITS.disk_mb


def test_what_an_instructors_browser_would_run_is_not_stored(graded):
    for student in ("html_output", "honest_correct"):
        executed = nbformat.read(graded["course"] / "autograded" / student / NAME / f"{NAME}.ipynb", 4)
        kinds = {mime for c in executed.cells if c.cell_type == "code" for o in c.outputs for mime in o.get("data", {})}
        assert kinds <= {"text/plain", "image/png", "image/jpeg"}, kinds
        assert "alert(" not in json.dumps([c.outputs for c in executed.cells if c.cell_type == "code"])
    assert "widgets" not in executed.metadata


def test_unsafe_student_names_are_problems_not_rows(graded):
    grades = (graded["out"] / "grades.csv").read_text(encoding="utf-8")
    exported = (graded["out"] / "nbgrader_grades.csv").read_text(encoding="utf-8")
    for text in (grades, exported):
        assert "mallory" not in text and "HYPERLINK" not in text and "onerror" not in text
        assert not any(cell.startswith(("=", "+", "-", "@")) for row in csv.reader(io.StringIO(text)) for cell in row)
    assert len(list(csv.DictReader(io.StringIO(grades)))) == len(set(CASES) | {"renamed", "removed"} | set(_probe_cases()))
    problems = (graded["out"] / "problems.html").read_text(encoding="utf-8")
    assert "not a valid student id" in problems and "<img" not in problems and "HYPERLINK" in problems
    assert "linked_to_solutions" in problems and "a link" in problems
    summary = (graded["out"] / "summary.md").read_text(encoding="utf-8")
    assert "\\<img" in summary and re.search(r"(?<!\\)<", summary) is None
    assert not (graded["out"] / "feedback" / "linked_to_solutions").exists()


def test_kernels_graded_side_by_side_share_the_cores(graded):
    # --jobs 2: each kernel gets half the cores (not all of them each, which would oversubscribe the machine).
    printed = _executed_text(graded, "honest_counts_threads")
    assert f"THREADS {max(1, (os.cpu_count() or 1) // 2)}\\n" in printed


def test_nothing_is_left_behind(graded):
    pid = os.getpid()
    assert not list(Path("/tmp").glob(f"cg-{pid}-*")), "a run folder was left behind"
    for parent in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/pids")):
        if parent.is_dir():
            assert not list(parent.glob(f"course-grader-{pid}-*")), "a cgroup was left behind"


def test_renamed_or_missing_notebooks_are_reported(graded):
    assert "renamed" not in graded["results"] and "removed" not in graded["results"]
    renamed = (graded["out"] / "feedback" / "renamed" / "problems.html").read_text()
    assert "not a course notebook" in renamed
    removed = graded["out"] / "feedback" / "removed" / "problems.html"
    assert removed.is_file()


def test_reading_a_submission_past_its_bounds_is_a_problem_entry(tmp_path):
    # The grader's reading and static checks of a submission run in a child with a time limit: past it, the
    # submission is reported, not graded, and the grader goes on (no kernel was started).
    import dataclasses

    from grader.run import Task, grade_one
    from grader.sandbox import run_folder

    solutions = tmp_path / "solutions"
    shutil.copytree(FIXTURE, solutions)
    released_path = release(open_course(tmp_path / "course"), [NAME], solutions)[NAME]
    _write(tmp_path / "subs", "bomb", nbformat.read(released_path, 4), _answers(total=GOOD_SUM + "\n" + STATIC_BOMB * 3))
    run_root = run_folder()
    try:
        result = grade_one(Task("bomb", NAME, tmp_path / "subs" / "bomb" / f"{NAME}.ipynb", released_path,
                                solutions / f"{NAME}.ipynb", run_root, dataclasses.replace(LIMITS, examine_s=1), True))
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    assert result.score == 0 and "could not read this notebook within its limits" in result.problem, result.problem
    assert result.seconds < 10


def test_raw_writes_to_stdout_never_reach_the_instructors_terminal(tmp_path, capfd):
    # Writes below IPython (os.write on fd 1 and 2) bypass the notebook's output budget; they must go nowhere.
    from grader.run import Task, grade_one
    from grader.sandbox import run_folder

    solutions = tmp_path / "solutions"
    shutil.copytree(FIXTURE, solutions)
    released_path = release(open_course(tmp_path / "course"), [NAME], solutions)[NAME]
    flood = GOOD_SCALE + "\nimport os\nfor _ in range(64):\n    os.write(1, b'LEAK' * 2**18)\n    os.write(2, b'LEAK' * 2**18)"
    _write(tmp_path / "subs", "flood", nbformat.read(released_path, 4), _answers(scale=flood))
    capfd.readouterr()
    run_root = run_folder()
    try:
        result = grade_one(Task("flood", NAME, tmp_path / "subs" / "flood" / f"{NAME}.ipynb", released_path,
                                solutions / f"{NAME}.ipynb", run_root, LIMITS, True))
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    captured = capfd.readouterr()
    assert result.score == 3
    assert "LEAK" not in captured.out and "LEAK" not in captured.err
