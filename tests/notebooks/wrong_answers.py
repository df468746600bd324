"""Plausible wrong answers, per (notebook, exercise): each must fail that exercise's tests (tests/notebooks/
test_answers.py). A table, not tests: ``WRONG[name, exercise][mistake]`` maps function names to a wrong version."""
import math

import torch
import torch.nn.functional as F

from course_lib.batching import IGNORE_INDEX

_I = torch.nn.Identity()
_levels = lambda: __import__("course_lib.quant", fromlist=["NF4_LEVELS"]).NF4_LEVELS


def _int8(round_fn=torch.round, use_max=False, qmax=127, dtype=torch.int8, scale_fn=None):
    def quantize(w):
        scale = (scale_fn(w) if scale_fn else w.max() if use_max else w.abs().max()) / qmax
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


def _lora_layer(scale=lambda alpha, r: alpha / r, base_dropout=False, ignore_dropout=False, no_bias=False,
                frozen=True, b_init="zeros", a_init="kaiming", merge_scaled=True, twice=False, fresh_base=False):
    """A MyLoRALinear with one mistake (for topic 3's exercise 5)."""
    nn = torch.nn

    class Wrong(nn.Module):
        def __init__(self, base, r, alpha, dropout=nn.Identity()):
            super().__init__()
            self.base = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None) if fresh_base else base
            if frozen:
                self.base.requires_grad_(False)
            self.scaling, self.dropout = scale(alpha, r), dropout
            A = torch.empty(r, base.in_features)
            if a_init == "kaiming":
                nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            elif a_init == "normal":
                A.normal_()
            else:
                A.zero_()
            self.lora_A = nn.Parameter(A)
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, r) if b_init == "zeros"
                                       else torch.randn(base.out_features, r) * 0.01)

        def forward(self, x):
            base = (self.dropout(x) @ self.base.weight.T if base_dropout else x @ self.base.weight.T)
            if self.base.bias is not None and not no_bias:
                base = base + self.base.bias
            update = (x if ignore_dropout else self.dropout(x)) @ self.lora_A.T @ self.lora_B.T
            return base + update * self.scaling * (self.scaling if twice else 1)

        def merged_weight(self):
            return self.base.weight + (self.scaling if merge_scaled else 1) * (self.lora_B @ self.lora_A)

    return {"MyLoRALinear": Wrong}


def _qlora_layer(divide=True, use_max=False, per_row=False, columns=False, search=False, codes_dtype=torch.uint8,
                 keep_weight=False, cache=False, scale=lambda alpha, r: alpha / r, no_bias=False, b_zero=True,
                 interleave=True, keep_dtype=True):
    """A MyQLoRALinear with one mistake (topic 4's exercise 4)."""
    nn = torch.nn

    class Wrong(nn.Module):
        def __init__(self, base, r, alpha, block_size=64):
            super().__init__()
            w = base.weight.detach().float()
            self.shape, self.block_size = w.shape, (w.shape[1] if per_row else block_size)
            blocks = (w.T if columns else w).reshape(-1, self.block_size)
            absmax = blocks.amax(dim=1) if use_max else blocks.abs().amax(dim=1)
            scaled = blocks / absmax.unsqueeze(1) if divide else blocks
            if search:
                codes = torch.searchsorted(_levels(), scaled.contiguous()).clamp(max=15)
            else:
                codes = (scaled.unsqueeze(-1) - _levels()).abs().argmin(dim=-1)
            codes = codes.view(w.T.shape).T if columns else codes.view(w.shape)
            self.register_buffer("codes", codes.to(codes_dtype).contiguous())
            self.register_buffer("absmax", absmax)
            if keep_weight:
                self.register_buffer("weight", w.clone())
            self.scaling = scale(alpha, r)
            self.bias = None if base.bias is None or no_bias else nn.Parameter(base.bias.detach().clone(), requires_grad=False)
            self.lora_A = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(r, w.shape[1]), a=math.sqrt(5)))
            self.lora_B = nn.Parameter(torch.zeros(w.shape[0], r) if b_zero else torch.randn(w.shape[0], r) * 0.01)
            self.cached = self.dequantized_weight() if cache else None

        def dequantized_weight(self):
            codes = self.codes.T if columns else self.codes
            spread = self.absmax.repeat_interleave(self.block_size) if interleave else self.absmax.repeat(self.block_size)
            w = (_levels()[codes.reshape(-1).long()] * spread[:codes.numel()]).view(codes.shape)
            return w.T if columns else w

        def forward(self, x):
            w = self.weight if keep_weight else self.cached if cache else self.dequantized_weight()
            xf = x.float()
            out = xf @ w.T + (0 if self.bias is None else self.bias) + self.scaling * (xf @ self.lora_A.T @ self.lora_B.T)
            return out.to(x.dtype) if keep_dtype else out

    return {"MyQLoRALinear": Wrong}


def _inject(every_linear=False, freeze=True, fixed_targets=False, returns=True, last_component=False):
    """An inject_my_lora with one mistake; it wraps with the reference MyLoRALinear of the namespace."""
    def inject_my_lora(model, r, alpha, targets=("q_proj", "v_proj")):
        if freeze:
            model.requires_grad_(False)
        wanted = ("q_proj", "v_proj") if fixed_targets else tuple(targets)
        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                 and (every_linear and n != "lm_head" or (n.split(".")[-1] in wanted if last_component
                                                           else n.endswith(wanted)))]
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, REFERENCE_LAYER[0](getattr(parent, child), r=r, alpha=alpha))
        return model if returns else None
    return {"inject_my_lora": inject_my_lora}


REFERENCE_LAYER = []  # filled by _run_tests: the solution's MyLoRALinear


def _dpo_step(frozen=True, shift=True, reply_only=True, average=False, swapped=False, same_model=False,
              beta_outside=False, detach=True, log_softmax=True, pass_mask=True):
    """A dpo_step with one mistake (topic 5's exercise 5)."""
    def dpo_step(policy, reference, batch, n_pairs, beta):
        def logprobs(model):
            mask = {"attention_mask": batch["attention_mask"]} if pass_mask else {}
            logits = model(input_ids=batch["input_ids"], **mask).logits
            targets = batch["labels"][:, 1:] if shift else batch["labels"][:, :-1]
            if not reply_only:
                targets = torch.where(batch["attention_mask"][:, 1:] == 1, batch["input_ids"][:, 1:], IGNORE_INDEX)
            mask = targets != IGNORE_INDEX
            scores = torch.log_softmax(logits[:, :-1].float(), -1) if log_softmax else logits[:, :-1].float()
            token = scores.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask
            return token.sum(-1) / mask.sum(-1) if average else token.sum(-1)

        pol = logprobs(policy)
        if same_model:
            ref = pol.detach()
        elif frozen:
            with torch.no_grad():
                ref = logprobs(reference)
        else:
            ref = logprobs(reference)
        c, r = pol[:n_pairs] - ref[:n_pairs], pol[n_pairs:] - ref[n_pairs:]
        if swapped:
            c, r = r, c
        loss = (-beta * F.logsigmoid(c - r) if beta_outside else -F.logsigmoid(beta * (c - r))).mean()
        return loss, (beta * c.detach() if detach else beta * c), (beta * r.detach() if detach else beta * r)
    return {"dpo_step": dpo_step}


def _sft(start_at_header=False, stop_offset=1, last_only=False, all_tokens=False, truncate="both"):
    from course_lib.sft import render_chat

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
        if shift == "roll":
            targets, scores = torch.roll(labels, -1, dims=1), logits
        else:
            targets, scores = (labels[:, 1:], logits[:, :-1]) if shift else (labels, logits)
        keep = (targets != IGNORE_INDEX) if mask else torch.ones_like(targets, dtype=torch.bool)
        if log == "log of softmax":
            probs = torch.log(torch.softmax(scores.float(), -1))
        else:
            probs = torch.log_softmax(scores.float(), -1) if log else torch.softmax(scores.float(), -1)
        token = probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) * keep
        if average_mode == "mean over every position" and average:
            return token.sum(-1) / targets.shape[-1]
        mean = average if average_mode in ("flag", "mean over every position") else average_mode == "always mean"
        return token.sum(-1) / keep.sum(-1) if mean else token.sum(-1)
    return {"response_logprob": response_logprob}


def _dpo(swap=False, beta_outside=False, no_ref=False, sigmoid=False, reward_beta=True, detach=True, total=False,
         unstable=False):
    def dpo_loss(pc, pr, rc, rr, beta):
        if swap:
            pc, pr, rc, rr = pr, pc, rr, rc
        cl, rl = (pc, pr) if no_ref else (pc - rc, pr - rr)
        h = cl - rl
        per_pair = -beta * F.logsigmoid(h) if beta_outside else (
            -torch.sigmoid(beta * h) if sigmoid else
            -torch.log(torch.sigmoid(beta * h)) if unstable else -F.logsigmoid(beta * h))
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
        if kind == "empty system dropped" and not system:
            return _few_shot("no system")(system, examples, query)
        if kind == "capped at 8 examples":
            examples = examples[:8]
        if kind == "a dict keyed by text":
            examples = list(dict(examples).items())
        if kind == "contents stripped":
            system, query, examples = system.strip(), query.strip(), [(t.strip(), a.strip()) for t, a in examples]
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


EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
CARD = r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"


def _redact(email=r"[\w.]+@\w+\.\w+", card=CARD, cards_first=False):
    import re

    def redact_pii(text):
        if cards_first:
            return re.sub(email, "[EMAIL]", re.sub(card, "[CARD]", text))
        return re.sub(card, "[CARD]", re.sub(email, "[EMAIL]", text))
    return redact_pii


def _shingle_set(text, n, multiset=False, normalise=True, ascii_only=False, word_set=False):
    import re
    pattern = r"[^a-z0-9_\s]" if ascii_only else r"[^\w\s]"
    words = (re.sub(pattern, " ", text.lower()) if normalise else text).split()
    if word_set:
        return set(words)
    grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)] if len(words) > n else \
        ([" ".join(words)] if words else [])
    return grams if multiset else set(grams)


def _jaccard(multiset=False, normalise=True, empty=1.0, ascii_only=False, word_set=False):
    from collections import Counter

    def shingle_jaccard(a, b, n=3):
        sa, sb = (_shingle_set(t, n, multiset, normalise, ascii_only, word_set) for t in (a, b))
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


def _leaks(exact=False, strict=False, same_position=False, default_threshold=0.7, per_match=False,
           ascii_only=False, word_set=False, within_test=False):
    def leaked_items(train_texts, test_texts, threshold=default_threshold, n=3):
        def sim(a, b):
            sa, sb = _shingle_set(a, n, ascii_only=ascii_only, word_set=word_set), \
                _shingle_set(b, n, ascii_only=ascii_only, word_set=word_set)
            return 1.0 if not sa | sb else len(sa & sb) / len(sa | sb)
        out = []
        for i, t in enumerate(test_texts):
            pool = train_texts[i:i + 1] if same_position else train_texts
            if within_test:
                pool = list(pool) + list(test_texts[:i])
            if per_match:
                out += [i for s in pool if sim(t, s) >= threshold]
                continue
            if exact:
                hit = t in pool
            else:
                hit = any((sim(t, s) > threshold) if strict else (sim(t, s) >= threshold) for s in pool)
            if hit:
                out.append(i)
        return out
    return leaked_items


def _macro(kind):
    def macro_f1(matrix):
        m = torch.as_tensor(matrix).double()
        tp, pred, true = m.diag(), m.sum(0), m.sum(1)
        if kind == "micro":
            return float(tp.sum() / m.sum())
        p = torch.where(pred > 0, tp / pred, torch.zeros_like(tp))
        r = torch.where(true > 0, tp / true, torch.zeros_like(tp))
        if kind == "f1 of averages":
            return float(2 * p.mean() * r.mean() / (p.mean() + r.mean()))
        if kind == "nan":
            return float((2 * tp / pred * (tp / true) / (tp / pred + tp / true)).mean())
        f1 = torch.where(pred + true > 0, 2 * tp / (pred + true).clamp_min(1e-300), torch.zeros_like(tp))
        if kind == "weighted":
            return float((f1 * true / true.sum()).sum())
        if kind == "skip empty":
            return float(f1[pred + true > 0].mean())
        if kind == "floor":
            return float((2 * tp // (pred + true).clamp_min(1)).mean())
        raise ValueError(kind)
    return macro_f1


def _bootstrap(kind):
    def bootstrap_interval(values, confidence=0.95, resamples=2000, seed=0):
        data = torch.as_tensor(list(values), dtype=torch.float64)
        n = len(data)
        g = torch.Generator().manual_seed(seed)
        if kind == "normal":
            half = 1.959964 * data.std(unbiased=False).item() / math.sqrt(n)
            return data.mean().item() - half, data.mean().item() + half
        if kind == "without replacement":
            idx = torch.stack([torch.randperm(n, generator=g) for _ in range(resamples)])
        elif kind == "half samples":
            idx = torch.randint(0, n, (resamples, max(1, n // 2)), generator=g)
        elif kind == "global rng":
            idx = torch.randint(0, n, (resamples, n))
        elif kind == "resamples ignored":
            idx = torch.randint(0, n, (2000, n), generator=g)
        else:
            idx = torch.randint(0, n, (resamples, n), generator=g)
        means = data[idx].mean(1)
        alpha = {"not halved": 1 - confidence, "confidence ignored": 0.025}.get(kind, (1 - confidence) / 2)
        return torch.quantile(means, alpha).item(), torch.quantile(means, 1 - alpha).item()
    return bootstrap_interval


def _mcnemar(kind):
    def mcnemar_p(correct_a, correct_b):
        if kind == "python and on tensors":
            ta, tb = torch.as_tensor(correct_a).bool(), torch.as_tensor(correct_b).bool()
            b, c = int((ta and ~tb).sum()), int((tb and ~ta).sum())
            return min(1.0, 2 * sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c))
        a, b_ = [bool(x) for x in correct_a], [bool(x) for x in correct_b]
        b = sum(x and not y for x, y in zip(a, b_))
        c = sum(y and not x for x, y in zip(a, b_))
        n = b + c
        if kind == "unpaired":
            pa, pb, m = sum(a) / len(a), sum(b_) / len(b_), len(a)
            pool = (sum(a) + sum(b_)) / (2 * m)
            se = math.sqrt(2 * pool * (1 - pool) / m) or 1.0
            return math.erfc(abs(pa - pb) / se / math.sqrt(2))
        if n == 0:
            return 1.0
        if kind in ("chi2", "chi2 corrected"):
            stat = (abs(b - c) - (kind == "chi2 corrected")) ** 2 / n
            return math.erfc(math.sqrt(stat / 2))
        if kind == "floats":
            tail = sum(math.comb(n, i) * 0.5 ** n for i in range(min(b, c) + 1))
        else:
            tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
        if kind == "one-sided":
            return tail
        return 2 * tail if kind == "uncapped" else min(1.0, 2 * tail)
    return mcnemar_p


def _rouge(kind):
    import re
    from functools import lru_cache

    def lcs(x, y):
        t = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
        for i, a in enumerate(x):
            for j, b in enumerate(y):
                t[i + 1][j + 1] = t[i][j] + 1 if a == b else max(t[i][j + 1], t[i + 1][j])
        return t[-1][-1]

    def substring(x, y):
        best = 0
        for i in range(len(x)):
            for j in range(len(y)):
                k = 0
                while i + k < len(x) and j + k < len(y) and x[i + k] == y[j + k]:
                    k += 1
                best = max(best, k)
        return best

    def recursive(x, y):
        @lru_cache(maxsize=None)
        def f(i, j):
            if i == len(x) or j == len(y):
                return 0
            return f(i + 1, j + 1) + 1 if x[i] == y[j] else max(f(i + 1, j), f(i, j + 1))
        return f(0, 0)

    def rouge_l_f1(prediction, reference):
        if kind == "characters":
            p, r = list(prediction.lower()), list(reference.lower())
        elif kind == "case kept":
            p, r = re.sub(r"[^A-Za-z0-9]+", " ", prediction).split(), re.sub(r"[^A-Za-z0-9]+", " ", reference).split()
        elif kind == "whitespace":
            p, r = prediction.lower().split(), reference.lower().split()
        elif kind == "word characters":
            p, r = re.findall(r"\w+", prediction.lower()), re.findall(r"\w+", reference.lower())
        else:
            p, r = re.sub(r"[^a-z0-9]+", " ", prediction.lower()).split(), re.sub(r"[^a-z0-9]+", " ", reference.lower()).split()
        if kind == "unigram overlap":
            from collections import Counter
            common = sum((Counter(p) & Counter(r)).values())
        else:
            common = {"substring": substring, "recursive": recursive}.get(kind, lcs)(p, r)
        if not common:
            return 0.0
        precision, recall = common / len(p), common / len(r)
        return precision if kind == "precision" else 2 * precision * recall / (precision + recall)
    return rouge_l_f1


def _perplexity(kind):
    def perplexity_from_logprobs(logprobs, mask):
        lp, m = logprobs.double(), torch.as_tensor(mask).double()
        if kind == "sum":
            return math.exp(-(lp * m).sum().item())
        if kind == "padding included":
            return math.exp(-lp.mean().item())
        if kind in ("mean of sequence means", "mean of sequence perplexities"):
            lp2, m2 = lp.reshape(-1, lp.shape[-1]), m.reshape(-1, m.shape[-1])
            means = -(lp2 * m2).sum(-1) / m2.sum(-1).clamp_min(1)
            means = means[m2.sum(-1) > 0]
            return math.exp(means.mean().item()) if kind == "mean of sequence means" else means.exp().mean().item()
        nll = -(lp * m).sum().item() / m.sum().item()
        return {"base 2": 2 ** nll, "no minus sign": math.exp(-nll)}[kind]
    return perplexity_from_logprobs


def _paired(kind):
    """A paired_report with one mistake (topic 6's exercise 6), on a numpy core."""
    import numpy as np

    def paired_report(targets, predictions_a, predictions_b, labels, confidence=0.95, resamples=2000, seed=0):
        index = {label: i for i, label in enumerate(labels)}
        t, a, b = (np.array([index[x] for x in seq]) for seq in (targets, predictions_a, predictions_b))
        n = len(t)
        rng = np.random.default_rng(None if kind == "seed ignored" else seed)
        rows = rng.integers(0, n, (2000 if kind == "resamples ignored" else resamples, n))
        rows_b = rng.integers(0, n, rows.shape) if kind == "unpaired" else rows
        classes = sorted(set(t.tolist())) if kind == "classes of the targets only" else range(len(labels))

        def accuracy(p, r):
            return (p[r] == t[r]).mean(-1)

        def macro(p, r):
            scores = []
            for c in classes:
                tp = ((p[r] == c) & (t[r] == c)).sum(-1)
                den = 2 * tp + ((p[r] == c) != (t[r] == c)).sum(-1)
                if kind == "empty classes skipped":
                    scores.append(np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan))
                else:
                    scores.append(np.where(tp > 0, 2 * tp / np.maximum(den, 1), 0.0))
            return np.nanmean(np.stack(scores), 0) if kind == "empty classes skipped" else np.mean(scores, 0)

        everything = np.arange(n)[None]
        level = 1 - confidence if kind == "not halved" else (1 - (0.95 if kind == "confidence ignored" else confidence)) / 2

        def interval(statistic, r=rows, r_b=None):
            values = statistic(r) if r_b is None else statistic(r, r_b)
            value = float((statistic(everything) if r_b is None else statistic(everything, everything))[0])
            if kind == "bootstrap mean as the value":
                value = float(np.mean(values))
            if kind == "normal approximation":
                from statistics import NormalDist
                half = NormalDist().inv_cdf(1 - level) * float(np.std(values))
                return value, value - half, value + half
            return value, float(np.quantile(values, level)), float(np.quantile(values, 1 - level))

        right_a, right_b = (a == t), (b == t)
        only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
        if kind == "b and c swapped":
            only_a, only_b = only_b, only_a
        m = only_a + only_b
        tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2 ** m if m else 0.5
        p_value = tail if kind == "one-sided p" else min(1.0, 2 * tail)
        if kind == "chi-square p" and m:
            p_value = math.erfc(math.sqrt((abs(only_a - only_b) - 1) ** 2 / m / 2))
        if kind == "f1 interval from the accuracy samples":
            f1 = lambda p: (float(macro(p, everything)[0]),) + interval(lambda r: accuracy(p, r))[1:]
        else:
            f1 = lambda p: interval(lambda r: macro(p, r))
        sign = -1 if kind == "A minus B" else 1
        return {"accuracy_a": interval(lambda r: accuracy(a, r)), "accuracy_b": interval(lambda r: accuracy(b, r)),
                "macro_f1_a": f1(a), "macro_f1_b": f1(b),
                "difference": interval(lambda r, q: sign * (accuracy(b, q) - accuracy(a, r)), rows, rows_b),
                "b": only_a, "c": only_b, "p_value": p_value}
    return {"paired_report": paired_report}


def _rag(kind):
    """A rag_classify with one mistake (topic 1's exercise 6)."""
    def rag_classify(texts, train_texts, train_labels, labels, encode, model, tokenizer, k=5, system=None):
        system = system if system is not None else __import__("course_lib.classify", fromlist=["x"]).SYSTEM_PROMPT
        corpus, queries = encode(list(train_texts)), encode(list(texts))
        if kind == "dot product":
            similarity = queries @ corpus.T
        elif kind == "euclidean distance":
            similarity = -torch.cdist(queries, corpus)
        elif kind == "only the query normalised":
            similarity = (queries / queries.norm(dim=1, keepdim=True)) @ corpus.T
        else:
            similarity = F.normalize(queries, dim=1) @ F.normalize(corpus, dim=1).T
        take = {"k + 1": k + 1, "k - 1": k - 1}.get(kind, k)
        nearest = torch.topk(similarity, min(take, len(train_texts)), dim=1).indices.tolist()
        word = (lambda label: " " + label) if kind == "label with a leading space" else (lambda label: label)
        label_ids = [tokenizer.encode(word(label), add_special_tokens=False)[0] for label in labels]
        prompts = []
        for text, row in zip(texts, nearest):
            order = row if kind == "nearest first" else list(reversed(row))
            messages = [] if kind == "no system message" else [{"role": "system", "content": system}]
            for i in order:
                if kind == "roles swapped":
                    messages += [{"role": "assistant", "content": train_texts[i]}, {"role": "user", "content": train_labels[i]}]
                else:
                    messages += [{"role": "user", "content": train_texts[i]}, {"role": "assistant", "content": train_labels[i]}]
            if kind == "examples in one user message":
                shots = "\n".join(f"{train_texts[i]} -> {train_labels[i]}" for i in order)
                messages = messages[:1] + [{"role": "user", "content": shots + "\n" + text}]
            else:
                messages.append({"role": "user", "content": text})
            prompts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=kind != "no generation prompt",
                                                         tokenize=True, return_dict=True)["input_ids"])
        if kind == "one right-padded batch read at the last column":
            width = max(map(len, prompts))
            ids = torch.tensor([p + [tokenizer.pad_token_id] * (width - len(p)) for p in prompts])
            mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
            with torch.no_grad():
                scores = model(input_ids=ids, attention_mask=mask).logits[:, -1, label_ids].float()
        else:
            rows = []
            for p in prompts:
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([p])).logits[0, -1].float()
                rows.append(torch.softmax(logits, -1)[label_ids] if kind == "probabilities, not logits" else logits[label_ids])
            scores = torch.stack(rows)
        pick = scores.argmin(-1) if kind == "argmin" else scores.argmax(-1)
        return [labels[i] for i in pick.tolist()], scores
    return {"rag_classify": rag_classify}


WRONG = {
    ("01_when_to_finetune", "rag_classify"): {name: _rag(name) for name in (
        "dot product", "euclidean distance", "only the query normalised", "k + 1", "k - 1", "label with a leading space",
        "nearest first", "no system message", "roles swapped", "examples in one user message", "no generation prompt",
        "one right-padded batch read at the last column", "probabilities, not logits", "argmin")},
    ("06_evaluation", "paired_report"): {name: _paired(name) for name in (
        "unpaired", "A minus B", "classes of the targets only", "empty classes skipped", "b and c swapped",
        "one-sided p", "chi-square p", "not halved", "confidence ignored", "bootstrap mean as the value",
        "normal approximation", "seed ignored", "resamples ignored", "f1 interval from the accuracy samples")},
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
        "every long number redacted": _redact(email=EMAIL, card=r"\d(?:[ -]?\d){9,}"),
        "e-mail pattern that takes the brackets around it": _redact(email=r"\S+@\S+\.\w+\S*"),
        "e-mail pattern in lower case only": _redact(email=r"[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}"),
        "card digits taken out of a longer number": _redact(email=EMAIL, card=r"\d(?:[ -]?\d){12,18}"),
        "any run of spaces or dashes between digits": _redact(email=EMAIL, card=r"(?<![\d-])\d(?:[ -]*\d){12,18}(?![\d-])"),
        "cards replaced before e-mails": _redact(email=EMAIL, cards_first=True),
    },
    ("02_data_preparation", "shingle_jaccard"): {
        "multisets instead of sets": _jaccard(multiset=True),
        "no normalisation": _jaccard(normalise=False),
        "empty texts similarity 0": _jaccard(empty=0.0),
        "ASCII-only normalisation": _jaccard(ascii_only=True),
        "sets of words, n ignored": _jaccard(word_set=True),
    },
    ("02_data_preparation", "stratified_split_indices"): {
        "not stratified (one random split)": _split(stratified=False),
        "first items of each label, not random": _split(random_pick=False),
        "rounding up always": _split(rounding=lambda x: int(x) + 1 if x else 0),
        "halves rounded up (int(x + 0.5))": _split(rounding=lambda x: int(x + 0.5)),
        "truncated (int())": _split(rounding=int),
        "math.ceil": _split(rounding=lambda x: math.ceil(x)),
    },
    ("02_data_preparation", "leaked_items"): {
        "exact string comparison": _leaks(exact=True),
        "threshold exclusive": _leaks(strict=True),
        "compared with the same position only": _leaks(same_position=True),
        "default threshold 0.8": _leaks(default_threshold=0.8),
        "default threshold 0.5": _leaks(default_threshold=0.5),
        "an index for every matching training text": _leaks(per_match=True),
        "ASCII-only normalisation": _leaks(ascii_only=True),
        "sets of words instead of shingles": _leaks(word_set=True),
        "near copies within the test set counted": _leaks(within_test=True),
    },
    ("06_evaluation", "macro_f1"): {
        "micro-F1 (accuracy)": _macro("micro"),
        "F1 of macro precision and macro recall": _macro("f1 of averages"),
        "weighted by support": _macro("weighted"),
        "NaN for a class never predicted": _macro("nan"),
        "empty classes left out of the mean": _macro("skip empty"),
        "floor division": _macro("floor"),
    },
    ("06_evaluation", "bootstrap_interval"): {
        "normal approximation, not percentiles": _bootstrap("normal"),
        "resampled without replacement": _bootstrap("without replacement"),
        "samples of half the size": _bootstrap("half samples"),
        "quantiles at 1 - confidence, not halved": _bootstrap("not halved"),
        "confidence ignored": _bootstrap("confidence ignored"),
        "seed ignored": _bootstrap("global rng"),
        "number of resamples ignored": _bootstrap("resamples ignored"),
    },
    ("06_evaluation", "mcnemar_p"): {
        "one-sided": _mcnemar("one-sided"),
        "not capped at 1": _mcnemar("uncapped"),
        "chi-square approximation": _mcnemar("chi2"),
        "chi-square with continuity correction": _mcnemar("chi2 corrected"),
        "unpaired two-proportion test": _mcnemar("unpaired"),
        "binomial terms in floats": _mcnemar("floats"),
        "Python `and` on tensors": _mcnemar("python and on tensors"),
    },
    ("06_evaluation", "rouge_l_f1"): {
        "LCS of characters": _rouge("characters"),
        "longest common substring": _rouge("substring"),
        "unigram overlap (ROUGE-1)": _rouge("unigram overlap"),
        "case kept": _rouge("case kept"),
        "split on whitespace only": _rouge("whitespace"),
        "regex \\w keeps underscores": _rouge("word characters"),
        "precision instead of F1": _rouge("precision"),
        "recursive LCS": _rouge("recursive"),
    },
    ("06_evaluation", "perplexity_from_logprobs"): {
        "summed NLL": _perplexity("sum"),
        "padding included": _perplexity("padding included"),
        "mean of per-sequence means": _perplexity("mean of sequence means"),
        "mean of per-sequence perplexities": _perplexity("mean of sequence perplexities"),
        "base 2": _perplexity("base 2"),
        "no minus sign": _perplexity("no minus sign"),
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
        "savings under a tolerance count as none": {"break_even_requests": lambda f, a, b: math.inf if a - b < 1e-6
                                                    else f / (a - b)},
    },
    ("01_when_to_finetune", "few_shot_prompt"): {
        "examples in one user message": _few_shot("one user message"),
        "no system message": _few_shot("no system"),
        "query before the examples": _few_shot("query first"),
        "roles swapped": _few_shot("roles swapped"),
        "role named 'bot'": _few_shot("bot"),
        "empty system message dropped": _few_shot("empty system dropped"),
        "examples capped at 8": _few_shot("capped at 8 examples"),
        "examples in a dict keyed by text": _few_shot("a dict keyed by text"),
        "contents stripped": _few_shot("contents stripped"),
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
        "integer division alpha // r": lambda x, W, b, A, B, alpha, r, dropout=_I:
            x @ W.T + (0 if b is None else b) + (alpha // r) * (dropout(x) @ A.T @ B.T),
        "dropout after A": lambda x, W, b, A, B, alpha, r, dropout=_I:
            x @ W.T + (0 if b is None else b) + (alpha / r) * (dropout(x @ A.T) @ B.T),
        "dropout on the update": lambda x, W, b, A, B, alpha, r, dropout=_I:
            x @ W.T + (0 if b is None else b) + (alpha / r) * dropout(x @ A.T @ B.T),
    },
    ("03_lora_basics", "merge_lora_weight"): {
        "transposed update": lambda W, A, B, alpha, r: W + (alpha / r) * (B @ A).T
            if W.shape[0] == W.shape[1] else W + (alpha / r) * (B @ A),
        "scaled by alpha": lambda W, A, B, alpha, r: W + alpha * (B @ A),
        "in place": lambda W, A, B, alpha, r: W.add_((alpha / r) * (B @ A)),
    },
    ("03_lora_basics", "lora_layer"): {
        "scaled by alpha": _lora_layer(scale=lambda alpha, r: alpha),
        "integer division alpha // r": _lora_layer(scale=lambda alpha, r: alpha // r),
        "scaled by r / alpha": _lora_layer(scale=lambda alpha, r: r / alpha),
        "scaling applied twice": _lora_layer(twice=True),
        "bias dropped": _lora_layer(no_bias=True),
        "dropout on the base path too": _lora_layer(base_dropout=True),
        "dropout ignored": _lora_layer(ignore_dropout=True),
        "B not zero": _lora_layer(b_init="random"),
        "A zero too": _lora_layer(a_init="zeros"),
        "A standard normal": _lora_layer(a_init="normal"),
        "base layer trainable": _lora_layer(frozen=False),
        "merge without the scale": _lora_layer(merge_scaled=False),
        "new random base layer": _lora_layer(fresh_base=True),
        "injection wraps every linear layer": _inject(every_linear=True),
        "injection does not freeze the model": _inject(freeze=False),
        "injection ignores targets": _inject(fixed_targets=True),
        "injection returns None": _inject(returns=False),
        "injection matches the last name component only": _inject(last_component=True),
    },
    ("04_quantization", "qlora_layer"): {
        "no division by absmax": _qlora_layer(divide=False),
        "absmax from max, not max |w|": _qlora_layer(use_max=True),
        "one absmax per row": _qlora_layer(per_row=True),
        "blocks down the columns": _qlora_layer(columns=True),
        "searchsorted, not nearest": _qlora_layer(search=True),
        "int64 codes": _qlora_layer(codes_dtype=torch.int64),
        "full-precision weight kept and used": _qlora_layer(keep_weight=True),
        "weight dequantized once and cached": _qlora_layer(cache=True),
        "integer division alpha // r": _qlora_layer(scale=lambda alpha, r: alpha // r),
        "bias dropped": _qlora_layer(no_bias=True),
        "B not zero": _qlora_layer(b_zero=False),
        "absmax repeated, not interleaved": _qlora_layer(interleave=False),
        "bfloat16 input gives float32 output": _qlora_layer(keep_dtype=False),
    },
    ("05_sft_rlhf_dpo", "dpo_step"): {
        "reference not frozen": _dpo_step(frozen=False),
        "labels not shifted": _dpo_step(shift=False),
        "prompt tokens scored": _dpo_step(reply_only=False),
        "mean over tokens": _dpo_step(average=True),
        "chosen and rejected swapped": _dpo_step(swapped=True),
        "policy as its own reference": _dpo_step(same_model=True),
        "beta outside the sigmoid": _dpo_step(beta_outside=True),
        "rewards not detached": _dpo_step(detach=False),
        "raw logits instead of log-probs": _dpo_step(log_softmax=False),
        "attention mask not passed to the models": _dpo_step(pass_mask=False),
    },
    ("04_quantization", "absmax_int8"): {
        "rounds toward zero": _int8(round_fn=torch.trunc),
        "scale from max, not absmax": _int8(use_max=True),
        "128 levels": _int8(qmax=128),
        "int16 codes": _int8(dtype=torch.int16),
        "dequantize forgets the scale": {"absmax_dequantize_int8": lambda q, scale: q.float()},
        "scale from the negative end": _int8(scale_fn=lambda w: w.min().abs()),
        "scale per row": _int8(scale_fn=lambda w: w.abs().amax(dim=-1, keepdim=True)),
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
        "shift with torch.roll": _logprob(shift="roll"),
        "log of softmax (unstable)": _logprob(log="log of softmax"),
        "mean over every position": _logprob(average_mode="mean over every position"),
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
        "log of sigmoid (unstable)": _dpo(unstable=True),
    },
}
for (_name, _exercise), _answers in WRONG.items():  # a bare function replaces the exercise's function
    for _mistake, _answer in _answers.items():
        if callable(_answer):
            _answers[_mistake] = {_exercise: _answer}
