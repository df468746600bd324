"""Correct answers written differently (numpy, loops, another stable formula), per (notebook, exercise): each must
pass that exercise's tests (tests/notebooks/test_answers.py). A table, not tests."""
import math

import torch
import torch.nn.functional as F

from course_lib.batching import IGNORE_INDEX
from course_lib.quant import NF4_LEVELS


def _macro_numpy(matrix):
    import numpy as np
    m = np.asarray(torch.as_tensor(matrix).double().numpy())
    tp = np.diag(m)
    denominator = m.sum(0) + m.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denominator > 0, 2 * tp / denominator, 0.0)
    return f1.mean()  # a numpy float


def _macro_loops(matrix):
    rows = torch.as_tensor(matrix).tolist()
    k, scores = len(rows), []
    for c in range(k):
        tp = rows[c][c]
        fp = sum(rows[i][c] for i in range(k)) - tp
        fn = sum(rows[c]) - tp
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * p * r / (p + r) if p + r else 0.0)
    return sum(scores) / k


def _bootstrap_python(values, confidence=0.95, resamples=2000, seed=0):
    import random as _random
    import statistics
    data = [float(v) for v in values]
    rng = _random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(data, k=len(data))) for _ in range(resamples))
    alpha = (1 - confidence) / 2
    return means[int(alpha * (resamples - 1))], means[int(round((1 - alpha) * (resamples - 1)))]


def _bootstrap_numpy(values, confidence=0.95, resamples=2000, seed=0):
    import numpy as np
    data = np.asarray(torch.as_tensor(values, dtype=torch.float64) if torch.is_tensor(values) else values, dtype=float)
    means = np.random.default_rng(seed).choice(data, size=(resamples, len(data)), replace=True).mean(1)
    return tuple(np.percentile(means, [50 * (1 - confidence), 50 * (1 + confidence)]))


def _mcnemar_scipy(correct_a, correct_b):
    from scipy.stats import binomtest
    b = sum(bool(x) and not bool(y) for x, y in zip(correct_a, correct_b))
    c = sum(bool(y) and not bool(x) for x, y in zip(correct_a, correct_b))
    return 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue


def _mcnemar_logspace(correct_a, correct_b):
    pairs = [(bool(x), bool(y)) for x, y in zip(correct_a, correct_b)]
    b, c = pairs.count((True, False)), pairs.count((False, True))
    n = b + c
    if n == 0:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(min(b, c) + 1)]
    top = max(logs)
    return min(1.0, 2 * math.exp(top + math.log(sum(math.exp(x - top) for x in logs))))


def _rouge_two_rows(prediction, reference):
    import re
    p = re.findall(r"[a-z0-9]+", prediction.lower())
    r = re.findall(r"[a-z0-9]+", reference.lower())
    previous = [0] * (len(r) + 1)
    for x in p:
        current = [0]
        for j, y in enumerate(r):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[-1]))
        previous = current
    lcs = previous[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(p) + len(r))  # 2PR/(P+R) simplified


def _perplexity_where(logprobs, mask):
    m = torch.as_tensor(mask).to(torch.float64)
    nll = -torch.where(m > 0, logprobs.double(), torch.zeros((), dtype=torch.float64)).sum() / m.sum()
    return torch.exp(nll)  # a 0-d tensor


def _perplexity_numpy(logprobs, mask):
    import numpy as np
    lp = logprobs.double().numpy()
    keep = torch.as_tensor(mask).bool().numpy()
    return np.exp(-lp[keep].mean())


def _lora_layer_einsum():
    """A correct MyLoRALinear and inject_my_lora written differently: F.linear and einsum, a recursive walk."""
    nn, F_ = torch.nn, torch.nn.functional

    class EinsumLoRA(nn.Module):
        def __init__(self, base, r, alpha, dropout=nn.Identity()):
            super().__init__()
            for p in base.parameters():
                p.requires_grad = False
            self.wrapped, self.factor, self.drop = base, float(alpha) / float(r), dropout
            self.lora_A = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(r, base.in_features), a=5 ** 0.5))
            self.lora_B = nn.Parameter(base.weight.new_zeros(base.out_features, r))

        def forward(self, x):
            low = torch.einsum("...i,ri->...r", self.drop(x), self.lora_A)
            return F_.linear(x, self.wrapped.weight, self.wrapped.bias) + self.factor * torch.einsum("...r,or->...o", low, self.lora_B)

        def merged_weight(self):
            return torch.addmm(self.wrapped.weight, self.lora_B, self.lora_A, alpha=self.factor)

    def inject_my_lora(model, r, alpha, targets=("q_proj", "v_proj")):
        for p in model.parameters():
            p.requires_grad_(False)

        def walk(module, prefix):
            for child_name, child in list(module.named_children()):
                full = f"{prefix}.{child_name}" if prefix else child_name
                if isinstance(child, nn.Linear) and any(full.endswith(t) for t in targets):
                    setattr(module, child_name, EinsumLoRA(child, r, alpha))
                else:
                    walk(child, full)
        walk(model, "")
        return model

    return {"MyLoRALinear": EinsumLoRA, "inject_my_lora": inject_my_lora}


def _qlora_layer_bucketize():
    """A correct MyQLoRALinear written differently: bucketize on the midpoints, a loop over blocks, F.linear."""
    nn, F_ = torch.nn, torch.nn.functional

    class Bucketized(nn.Module):
        def __init__(self, base, r, alpha, block_size=64):
            super().__init__()
            flat, levels = base.weight.detach().reshape(-1), NF4_LEVELS
            midpoints = (levels[1:] + levels[:-1]) / 2
            absmax, codes = [], []
            for start in range(0, flat.numel(), block_size):
                block = flat[start:start + block_size]
                m = block.abs().max()
                absmax.append(m)
                codes.append(torch.bucketize(block / m, midpoints))
            self.register_buffer("codes", torch.cat(codes).to(torch.uint8).view_as(base.weight))
            self.register_buffer("absmax", torch.stack(absmax).float())
            self.register_buffer("levels", levels.clone(), persistent=False)
            self.n, self.k = block_size, alpha / r
            self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)
            self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

        def dequantized_weight(self):
            per_block = self.levels[self.codes.reshape(-1, self.n).long()] * self.absmax[:, None]
            return per_block.reshape(self.codes.shape)

        def forward(self, x):
            w = self.dequantized_weight().to(x.dtype)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            lora = F_.linear(F_.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.k
            return F_.linear(x, w, bias) + lora

    return {"MyQLoRALinear": Bucketized}


def _dpo_step_cross_entropy(policy, reference, batch, n_pairs, beta):
    """A correct dpo_step written differently: per-token cross-entropy, a detached reference, softplus."""
    def logprobs(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), batch["labels"][:, 1:], reduction="none",
                              ignore_index=IGNORE_INDEX)
        return -nll.sum(dim=1)

    pol, ref = logprobs(policy), logprobs(reference).detach()
    ratios = pol - ref
    margin = ratios[:n_pairs] - ratios[n_pairs:]
    return F.softplus(-beta * margin).mean(), (beta * ratios[:n_pairs]).detach(), (beta * ratios[n_pairs:]).detach()


def _chat_state_machine(record):
    """A state machine over the turns; malformed records fail inside try and answer False."""
    try:
        messages = record["messages"]
        if type(messages) is not list or not messages:
            return False
        state = "start"
        for m in messages:
            if sorted(m.keys()) != ["content", "role"] or not isinstance(m["content"], str) or m["content"].isspace() \
                    or m["content"] == "":
                return False
            moves = {("start", "system"): "system", ("start", "user"): "user", ("system", "user"): "user",
                     ("user", "assistant"): "assistant", ("assistant", "user"): "user"}
            state = moves[state, m["role"]]
        return state == "assistant"
    except (KeyError, TypeError, AttributeError):
        return False


def _chat_regex(record):
    """A regular expression over the roles joined into one string."""
    import re
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or len(record["messages"]) == 0:
        return False
    for m in record["messages"]:
        if not isinstance(m, dict) or m.keys() != {"role", "content"}:
            return False
        if not isinstance(m["content"], str) or not re.search(r"\S", m["content"]) or not isinstance(m["role"], str):
            return False
    roles = ",".join(m["role"] for m in record["messages"])
    return re.fullmatch(r"(system,)?user,assistant(,user,assistant)*", roles) is not None


def _chat_expected_sequence(record):
    """Build the role sequence a valid chat of this length must have, and compare."""
    if not isinstance(record, dict):
        return False
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return False
    if any(set(m) != {"role", "content"} or not isinstance(m["content"], str) or len(m["content"].strip()) == 0
           for m in messages):
        return False
    roles = [m["role"] for m in messages]
    start = 1 if roles[0] == "system" else 0
    turns = len(roles) - start
    expected = ["system"] * start + ["user", "assistant"] * (turns // 2)
    return turns > 0 and turns % 2 == 0 and roles == expected


def _top_k_numpy(query, corpus, k):
    """np.argsort over numpy cosines: returns a numpy array of int64 indices."""
    import numpy as np
    q = np.asarray(query, dtype=np.float64)
    c = np.asarray(corpus, dtype=np.float64)
    sims = c @ q / (np.linalg.norm(c, axis=1) * np.linalg.norm(q))
    return np.argsort(-sims, kind="stable")[:k]


def _top_k_list(query, corpus, k):
    """Sorted Python list of indices from F.cosine_similarity."""
    sims = F.cosine_similarity(corpus, query.unsqueeze(0), dim=1).tolist()
    return sorted(range(len(sims)), key=lambda i: -sims[i])[:k]


def _few_shot_comprehension(system, examples, query):
    turns = [{"role": role, "content": text} for example in examples
             for role, text in zip(("user", "assistant"), example)]
    return [{"role": "system", "content": system}, *turns, {"role": "user", "content": query}]


def _redact_one_pass(text):
    """One alternation, e-mails first, and a function choosing the replacement."""
    import re
    pattern = re.compile(r"(?P<email>[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,})|(?P<card>(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-]))",
                         re.IGNORECASE)
    return pattern.sub(lambda m: "[EMAIL]" if m.group("email") else "[CARD]", text)


def _jaccard_counter(a, b, n=3):
    """Shingles from zip over shifted word lists."""

    def shingles(text):
        words = "".join(ch if ch.isalnum() or ch == "_" or ch.isspace() else " " for ch in text.lower()).split()
        if 0 < len(words) < n:
            return {" ".join(words)}
        return {" ".join(g) for g in zip(*(words[i:] for i in range(n)))}
    sa, sb = shingles(a), shingles(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def _split_numpy(labels, test_fraction, seed):
    """Groups by label with a dict of lists, random.Random(seed).sample per label in sorted label order."""
    import random
    rng = random.Random(seed)
    groups = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    test = set()
    for label in sorted(groups):
        test.update(rng.sample(groups[label], round(test_fraction * len(groups[label]))))
    return [i for i in range(len(labels)) if i not in test], sorted(test)


def _leaked_any(train_texts, test_texts, threshold=0.7, n=3):
    """Shingle sets precomputed once, any() over training texts."""
    train = [_jaccard_sets(t, n) for t in train_texts]
    out = []
    for i, text in enumerate(test_texts):
        s = _jaccard_sets(text, n)
        if any((len(s & t) / len(s | t) if s | t else 1.0) >= threshold for t in train):
            out.append(i)
    return out


def _leaked_numpy(train_texts, test_texts, threshold=0.7, n=3):
    """A similarity matrix in numpy; np.flatnonzero returns a numpy array of indices."""
    import numpy as np
    train, test = [_jaccard_sets(t, n) for t in train_texts], [_jaccard_sets(t, n) for t in test_texts]
    sims = np.array([[len(a & b) / len(a | b) if a | b else 1.0 for b in train] for a in test]).reshape(len(test), len(train))
    return np.flatnonzero((sims >= threshold).any(axis=1))


def _jaccard_sets(text, n):
    import re
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))} if words else set()


def _paired_numpy(targets, predictions_a, predictions_b, labels, confidence=0.95, resamples=2000, seed=0):
    """numpy: a default_rng of indices, vectorised counts, np.quantile; lists instead of tuples."""
    import numpy as np
    t, a, b = (np.array([labels.index(x) for x in seq]) for seq in (targets, predictions_a, predictions_b))
    rows = np.random.default_rng(seed).integers(0, len(t), size=(resamples, len(t)))
    full = np.arange(len(t))[None, :]

    def stats(r):
        acc_a, acc_b = (a[r] == t[r]).mean(1), (b[r] == t[r]).mean(1)
        f1 = []
        for p in (a, b):
            per = [np.divide(2 * ((p[r] == c) & (t[r] == c)).sum(1), 2 * ((p[r] == c) & (t[r] == c)).sum(1)
                             + ((p[r] == c) ^ (t[r] == c)).sum(1), out=np.zeros(len(r)),
                             where=((p[r] == c) | (t[r] == c)).sum(1) > 0) for c in range(len(labels))]
            f1.append(np.mean(per, axis=0))
        return {"accuracy_a": acc_a, "accuracy_b": acc_b, "macro_f1_a": f1[0], "macro_f1_b": f1[1],
                "difference": acc_b - acc_a}

    point, sampled = stats(full), stats(rows)
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    report = {k: [float(point[k][0]), *np.quantile(sampled[k], q).tolist()] for k in point}
    only_a, only_b = int(((a == t) & (b != t)).sum()), int(((b == t) & (a != t)).sum())
    m = only_a + only_b
    report.update(b=only_a, c=only_b, p_value=1.0 if m == 0 else
                  min(1.0, 2 * sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2 ** m))
    return report


def _paired_python(targets, predictions_a, predictions_b, labels, confidence=0.95, resamples=2000, seed=0):
    """Pure Python: random.Random, loops over each sample, a hand-written linear quantile, log-space p-value."""
    import random
    rng = random.Random(seed)
    n = len(targets)

    def macro(pred, items):
        total = 0.0
        for c in labels:
            tp = sum(1 for i in items if pred[i] == c and targets[i] == c)
            off = sum(1 for i in items if (pred[i] == c) != (targets[i] == c))
            total += 2 * tp / (2 * tp + off) if tp else 0.0
        return total / len(labels)

    def acc(pred, items):
        return sum(pred[i] == targets[i] for i in items) / len(items)

    statistics = {"accuracy_a": lambda s: acc(predictions_a, s), "accuracy_b": lambda s: acc(predictions_b, s),
                  "macro_f1_a": lambda s: macro(predictions_a, s), "macro_f1_b": lambda s: macro(predictions_b, s),
                  "difference": lambda s: acc(predictions_b, s) - acc(predictions_a, s)}
    draws = {k: [] for k in statistics}
    for _ in range(resamples):
        sample = [rng.randrange(n) for _ in range(n)]
        for k, f in statistics.items():
            draws[k].append(f(sample))

    def quantile(values, q):
        values = sorted(values)
        pos = q * (len(values) - 1)
        lo = math.floor(pos)
        return values[lo] + (values[min(lo + 1, len(values) - 1)] - values[lo]) * (pos - lo)

    everything = list(range(n))
    report = {k: (f(everything), quantile(draws[k], (1 - confidence) / 2), quantile(draws[k], (1 + confidence) / 2))
              for k, f in statistics.items()}
    b = sum(x == t != y for x, y, t in zip(predictions_a, predictions_b, targets))
    c = sum(y == t != x for x, y, t in zip(predictions_a, predictions_b, targets))
    if b + c == 0:
        p = 1.0
    else:
        logs = [math.lgamma(b + c + 1) - math.lgamma(i + 1) - math.lgamma(b + c - i + 1) - (b + c) * math.log(2)
                for i in range(min(b, c) + 1)]
        top = max(logs)
        p = min(1.0, 2 * math.exp(top) * sum(math.exp(v - top) for v in logs))
    report.update(b=b, c=c, p_value=p)
    return report


def _paired_one_hot(targets, predictions_a, predictions_b, labels, confidence=0.95, resamples=2000, seed=0):
    """torch: one-hot labels, per-sample counts by einsum over a (resamples, n) count matrix."""
    index = {x: i for i, x in enumerate(labels)}
    t, a, b = (F.one_hot(torch.tensor([index[x] for x in s]), len(labels)).double()
               for s in (targets, predictions_a, predictions_b))
    n = len(targets)
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(resamples, n, dtype=torch.float64)
    counts.scatter_add_(1, torch.randint(0, n, (resamples, n), generator=g), torch.ones(resamples, n, dtype=torch.float64))
    counts = torch.cat([torch.ones(1, n, dtype=torch.float64), counts])  # row 0: every item once

    def accuracy(p):
        return torch.einsum("sn,n->s", counts, (p * t).sum(1)) / n

    def macro(p):
        tp = torch.einsum("sn,nk->sk", counts, p * t)
        off = torch.einsum("sn,nk->sk", counts, p + t - 2 * p * t)
        return torch.where(tp > 0, 2 * tp / (2 * tp + off).clamp_min(1e-12), 0.0).mean(1)

    q = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
    out = {}
    for key, v in {"accuracy_a": accuracy(a), "accuracy_b": accuracy(b), "macro_f1_a": macro(a), "macro_f1_b": macro(b),
                   "difference": accuracy(b) - accuracy(a)}.items():
        out[key] = (v[0].item(), *torch.quantile(v[1:], q).tolist())
    right_a, right_b = (a * t).sum(1).bool(), (b * t).sum(1).bool()
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    m = only_a + only_b
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1))
    out.update(b=only_a, c=only_b, p_value=min(1.0, 2 * tail / 2 ** m) if m else 1.0)
    return out


def _rag_batched(texts, train_texts, train_labels, labels, encode, model, tokenizer, k=5, system=None):
    """F.cosine_similarity, argsort, one right-padded batch with its mask, logits gathered at each prompt's end."""
    from course_lib.classify import SYSTEM_PROMPT
    corpus, queries = encode(train_texts), encode(texts)
    sims = F.cosine_similarity(queries.unsqueeze(1), corpus.unsqueeze(0), dim=-1)
    order = torch.argsort(sims, dim=1, descending=True)[:, :k].flip(1)  # least similar first
    prompts = []
    for text, row in zip(texts, order.tolist()):
        turns = [{"role": "system", "content": system or SYSTEM_PROMPT}]
        turns += [m for i in row for m in ({"role": "user", "content": train_texts[i]},
                                           {"role": "assistant", "content": train_labels[i]})]
        turns.append({"role": "user", "content": text})
        prompts.append(tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"])
    width = max(len(p) for p in prompts)
    ids = torch.tensor([p + [tokenizer.pad_token_id] * (width - len(p)) for p in prompts])
    mask = (torch.arange(width) < torch.tensor([len(p) for p in prompts]).unsqueeze(1)).long()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    last = logits[torch.arange(len(prompts)), mask.sum(1) - 1]
    columns = torch.tensor([tokenizer(label, add_special_tokens=False)["input_ids"][0] for label in labels])
    scores = last[:, columns]
    return [labels[i] for i in scores.argmax(1)], scores


def _rag_numpy_text(texts, train_texts, train_labels, labels, encode, model, tokenizer, k=5, system=None):
    """numpy cosine and argpartition; the template rendered to text, then tokenized; a list of score lists."""
    import numpy as np
    from course_lib.classify import SYSTEM_PROMPT
    c = encode(list(train_texts)).numpy()
    q = encode(list(texts)).numpy()
    cos = (q @ c.T) / np.outer(np.linalg.norm(q, axis=1), np.linalg.norm(c, axis=1))
    predictions, scores = [], []
    for i, text in enumerate(texts):
        top = np.argpartition(-cos[i], k - 1)[:k]
        top = top[np.argsort(cos[i][top])]  # ascending: the nearest ends the list
        messages = [{"role": "system", "content": system or SYSTEM_PROMPT}]
        for j in top:
            messages.append({"role": "user", "content": train_texts[j]})
            messages.append({"role": "assistant", "content": train_labels[j]})
        messages.append({"role": "user", "content": text})
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model(input_ids=ids).logits[0, -1]
        row = [float(out[tokenizer.encode(label, add_special_tokens=False)[0]]) for label in labels]
        scores.append(row)
        predictions.append(labels[int(np.argmax(row))])
    return predictions, scores


def _rag_loops(texts, train_texts, train_labels, labels, encode, model, tokenizer, k=5, system=None):
    """Plain loops: cosine by hand, sorted() over (similarity, index), max() over the labels."""
    from course_lib.classify import SYSTEM_PROMPT
    corpus = encode(list(train_texts))
    label_ids = [tokenizer.encode(label, add_special_tokens=False)[0] for label in labels]
    predictions, scores = [], []
    for text, query in zip(texts, encode(list(texts))):
        sims = [(float(query @ row) / (float(query.norm()) * float(row.norm())), i) for i, row in enumerate(corpus)]
        chosen = [i for _, i in sorted(sims, reverse=True)[:k]][::-1]
        chat = [{"role": "system", "content": system or SYSTEM_PROMPT}]
        for i in chosen:
            chat += [{"role": "user", "content": train_texts[i]}, {"role": "assistant", "content": train_labels[i]}]
        chat += [{"role": "user", "content": text}]
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor(ids).unsqueeze(0)).logits[0, -1]
        scores.append(torch.stack([logits[i] for i in label_ids]))
        predictions.append(max(labels, key=lambda label: float(scores[-1][labels.index(label)])))
    return predictions, torch.stack(scores)


RIGHT = {
    ("01_when_to_finetune", "rag_classify"): {"F.cosine_similarity, one right-padded batch with its mask": _rag_batched,
                                              "numpy argpartition, the template rendered to text": _rag_numpy_text,
                                              "loops and sorted()": _rag_loops},
    ("06_evaluation", "paired_report"): {"numpy, lists for tuples": _paired_numpy,
                                         "pure Python, random.Random, log-space p": _paired_python,
                                         "torch one-hot counts by einsum": _paired_one_hot},
    ("01_when_to_finetune", "top_k_cosine"): {"numpy argsort, a numpy array": _top_k_numpy,
                                              "a sorted Python list": _top_k_list},
    ("01_when_to_finetune", "few_shot_prompt"): {"one comprehension, zip over the roles": _few_shot_comprehension},
    ("02_data_preparation", "is_valid_chat"): {"a state machine with try/except": _chat_state_machine,
                                               "a regular expression over the roles": _chat_regex,
                                               "the expected role sequence, compared": _chat_expected_sequence},
    ("02_data_preparation", "redact_pii"): {"one alternation, case-insensitive, e-mails first": _redact_one_pass},
    ("02_data_preparation", "shingle_jaccard"): {"isalnum normalisation, zip shingles": _jaccard_counter},
    ("02_data_preparation", "stratified_split_indices"): {"rng.sample per label": _split_numpy},
    ("02_data_preparation", "leaked_items"): {"findall words, precomputed sets": _leaked_any,
                                              "a numpy similarity matrix, np.flatnonzero": _leaked_numpy},
    ("03_lora_basics", "lora_layer"): {"F.linear and einsum, a recursive walk": _lora_layer_einsum()},
    ("04_quantization", "qlora_layer"): {"bucketize, a loop over blocks, F.linear": _qlora_layer_bucketize()},
    ("05_sft_rlhf_dpo", "dpo_step"): {"cross-entropy, detached reference, softplus": _dpo_step_cross_entropy},
    ("06_evaluation", "macro_f1"): {"numpy, returns a numpy float": _macro_numpy, "loops over lists": _macro_loops},
    ("06_evaluation", "bootstrap_interval"): {"random.choices and sorted means": _bootstrap_python,
                                              "numpy generator and percentile": _bootstrap_numpy},
    ("06_evaluation", "mcnemar_p"): {"scipy's binomtest": _mcnemar_scipy, "log-space sum": _mcnemar_logspace},
    ("06_evaluation", "rouge_l_f1"): {"two-row table, 2L/(k+m)": _rouge_two_rows},
    ("06_evaluation", "perplexity_from_logprobs"): {"torch.where, 0-d tensor": _perplexity_where,
                                                    "numpy boolean indexing": _perplexity_numpy},
}
