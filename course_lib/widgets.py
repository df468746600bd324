"""Interactive explorers for the notebooks (ipywidgets). Each one recomputes from course_lib functions."""
from __future__ import annotations

import html
import math
import random
from collections.abc import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt

from .decision import PRICE_SHEETS, CostModel, break_even_requests, monthly_costs, recommend
from .memory import MB, TransformerShape, lora_summary
from .metrics import win_rate
from .quant import blockwise_bits, fake_quantize, quantization_snr_db

def _render(s: dict[str, float], name: str, measured: dict[int, dict] | None = None) -> str:
    rows = [
        ("scaling alpha / r", f"{s['scaling']:.3g}"),
        (f"trainable parameters ({name})", f"{s['trainable']:,} of {s['total']:,} ({s['percent']:.3f}%)"),
        ("adapter file size (fp32)", f"{s['adapter_mb']:.2f} MB"),
        ("Llama-2-7B trainable parameters", f"{s['llama7b_trainable']:,}"),
        ("Llama-2-7B memory, LoRA (fp16 base)", f"{s['llama7b_lora_gb']:.1f} GB"),
        ("Llama-2-7B memory, QLoRA (NF4 base)", f"{s['llama7b_qlora_gb']:.1f} GB"),
        ("Llama-2-7B memory, full fine-tuning", f"{s['llama7b_full_gb']:.1f} GB"),
    ]
    if measured is not None:
        run = measured.get(int(s["r"]))
        rows.append(("measured on the ticket task (60 steps, alpha = 2r)",
                     _measured(run) if run else
                     "not measured at this rank (measured: " + ", ".join(map(str, sorted(measured))) + ")"))
    body = "".join(f"<tr><td style='text-align:left'>{k}</td><td style='text-align:right'><b>{v}</b></td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table><small>Model state only (weights, gradients, Adam); activations excluded.</small>"


def _measured(run: dict) -> str:
    """A sweep entry as one line: the accuracy (with its range when the entry holds several seeds) and the time."""
    spread = run.get("validation_accuracy_spread")
    seeds = f" (mean of {spread['n']} seeds, {spread['min']:.1%} to {spread['max']:.1%})" if spread else ""
    return f"validation accuracy {run['validation_accuracy']:.1%}{seeds}, training {run['train_seconds']:.0f} s"


def lora_rank_explorer(shape: TransformerShape, targets: tuple[str, ...] = ("q_proj", "v_proj"),
                       r: int = 8, alpha: float = 16.0, measured: dict[int, dict] | None = None) -> widgets.VBox:
    """Sliders for rank and alpha; the table under them recomputes on every change. ``measured`` maps a rank
    to an entry of ``scripts/measure/sweep_lora.py`` (``validation_accuracy``, ``train_seconds``, and the seeds' spread
    ``validation_accuracy_spread`` when present), shown at that rank."""
    rank = widgets.IntSlider(value=r, min=1, max=256, description="rank r", continuous_update=True)
    alpha_slider = widgets.FloatSlider(value=alpha, min=1, max=512, step=1, description="alpha")
    table = widgets.HTML()

    def update(_=None) -> None:
        table.value = _render(lora_summary(shape, rank.value, alpha_slider.value, targets), shape.name, measured)

    rank.observe(update, names="value")
    alpha_slider.observe(update, names="value")
    update()
    return widgets.VBox([rank, alpha_slider, table])


def bitwidth_explorer(weight, name: str, measured_ppl: dict[str, float], n_params: int) -> widgets.VBox:
    """Bit width (2-8) and block size sliders over a real weight matrix: the error histogram, SNR and
    memory are recomputed live; the model's perplexity at that setting comes from ``measured_ppl``
    (keys like "4bit-64" or "4bit-row", from scripts/measure/measure_quant.py)."""
    bits = widgets.IntSlider(value=4, min=2, max=8, description="bits")
    block = widgets.Dropdown(options=[("32", 32), ("64", 64), ("128", 128), ("256", 256), ("per row", None)],
                             value=64, description="block size")
    out = widgets.Output()

    def update(_=None) -> None:
        w_hat = fake_quantize(weight, bits.value, block.value)
        err = (w_hat - weight).flatten().numpy()
        per_param = blockwise_bits(bits.value, block.value or weight.shape[1])
        key = f"{bits.value}bit-{block.value or 'row'}"
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.hist(err, bins=120, color="#2a7ab9")
            ax.set(xlabel="quantization error w_hat - w", ylabel="count", yscale="log",
                   title=f"{name}: {bits.value}-bit, block {block.value or 'row'}")
            plt.show()
            print(f"SNR {quantization_snr_db(weight, w_hat):.1f} dB | max |error| {abs(err).max():.2e} | "
                  f"{per_param:.3f} bits/param -> {n_params * per_param / 8 / MB:.1f} MB for the linear layers | "
                  f"measured perplexity of the whole model: {measured_ppl[key]:.2f}")

    bits.observe(update, names="value")
    block.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([bits, block]), out])


def decision_explorer(cost: CostModel = CostModel(), finetuned_tokens: int = 60, rag_tokens: int = 300,
                      tokens_per_example: int = 100, epochs: int = 3, months: float = 12) -> widgets.VBox:
    """Sliders for the labelled examples, requests per month and prompt length, toggles for fresh knowledge
    and consistent behaviour, and the three prices (typed in, or filled from a dated sheet of
    :data:`course_lib.decision.PRICE_SHEETS`; they start at ``cost``'s): the recommendation with its reason
    (:func:`course_lib.decision.recommend`) and a live plot of each option's monthly cost against request volume,
    with the fine-tune's break-even point."""
    sheets = {"(typed in)": None, **PRICE_SHEETS}
    sheet = widgets.Dropdown(options=list(sheets), value=next((k for k, v in PRICE_SHEETS.items() if v == cost),
                                                               "(typed in)"), description="prices")
    prices = {field: widgets.BoundedFloatText(value=getattr(cost, field), min=0.0, max=10.0, step=1e-5,
                                              description=label)
              for field, label in (("train_per_1k", "$/1K train"), ("finetuned_per_1k", "$/1K tuned in"),
                                   ("base_per_1k", "$/1K base in"))}
    examples = widgets.IntSlider(value=600, min=0, max=5000, step=10, description="examples")
    requests = widgets.FloatLogSlider(value=1e5, base=10, min=2, max=8, description="requests/mo")
    prompt = widgets.IntSlider(value=1500, min=50, max=4000, step=50, description="prompt tokens")
    fresh = widgets.Checkbox(value=False, description="needs fresh or private facts")
    consistent = widgets.Checkbox(value=True, description="needs a consistent format")
    verdict, out = widgets.HTML(), widgets.Output()

    filling = []  # non-empty while a sheet's prices are being written into the boxes

    def fill(_=None) -> None:
        chosen = sheets[sheet.value]
        if chosen is not None:
            filling.append(True)
            for field, box in prices.items():
                box.value = getattr(chosen, field)
            filling.clear()
            update()

    def update(_=None) -> None:
        if filling:
            return
        cost = CostModel(**{field: box.value for field, box in prices.items()})
        if sheets[sheet.value] not in (None, cost):
            sheet.value = "(typed in)"  # a price was typed over the sheet's
        choice = recommend(examples.value, fresh.value, consistent.value)
        training = cost.training(examples.value * tokens_per_example, epochs)
        even = break_even_requests(training / months, cost.per_request(prompt.value),
                                   cost.per_request(finetuned_tokens, finetuned=True))
        here = monthly_costs(requests.value, prompt.value, rag_tokens, finetuned_tokens, training, cost, months)
        verdict.value = (f"<b>{choice.approach}</b>: {choice.reason}<br>training once: ${training:,.2f}; "
                         f"at {requests.value:,.0f} requests/month: " +
                         ", ".join(f"{k} ${v:,.2f}" for k, v in here.items()) +
                         (f"; a fine-tune pays for itself above {even:,.0f} requests/month" if even != math.inf
                          else "; a fine-tune never pays for itself at these prices (its requests cost more)"))
        grid = [10 ** (2 + 6 * i / 100) for i in range(101)]
        curves = [monthly_costs(n, prompt.value, rag_tokens, finetuned_tokens, training, cost, months) for n in grid]
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6.5, 3.5))
            for name in here:
                ax.plot(grid, [c[name] for c in curves], label=name)
            if even != math.inf:
                ax.axvline(even, color="grey", linestyle="--", label="break-even")
            ax.axvline(requests.value, color="black", linewidth=0.8)
            ax.set(xscale="log", yscale="log", xlabel="requests per month", ylabel="dollars per month",
                   title="Monthly cost of each option")
            ax.legend()
            plt.show()

    for control in (examples, requests, prompt, fresh, consistent, *prices.values()):
        control.observe(update, names="value")
    sheet.observe(fill, names="value")
    update()
    return widgets.VBox([widgets.HBox([examples, requests, prompt]), widgets.HBox([fresh, consistent]),
                         widgets.HBox([sheet, *prices.values()]), verdict, out])



class BlindComparison:
    """Blind pairwise human evaluation: for each prompt, the outputs of systems A and B side by side in a random
    order (seeded), rated left / right / tie; which side is which is hidden until :meth:`results` is read.

    ``widget`` is the panel; :meth:`rate` is what its buttons call, so ratings can also be given in code."""

    CHOICES = ("left", "right", "tie")

    def __init__(self, prompts: Sequence[str], outputs_a: Sequence[str], outputs_b: Sequence[str],
                 names: tuple[str, str] = ("A", "B"), seed: int = 0):
        if not len(prompts) == len(outputs_a) == len(outputs_b) or not prompts:
            raise ValueError(f"need as many outputs of each system as prompts (and at least one), got "
                             f"{len(prompts)} prompts, {len(outputs_a)} and {len(outputs_b)} outputs")
        self.prompts, self.outputs, self.names = list(prompts), (list(outputs_a), list(outputs_b)), names
        rng = random.Random(seed)
        self.b_on_left = [rng.random() < 0.5 for _ in self.prompts]
        self.winners: list[str | None] = [None] * len(self.prompts)  # per item: "a", "b", "tie" or None (unrated)
        self.position = 0
        self._page = widgets.HTML()
        buttons = [widgets.Button(description=d) for d in ("Left is better", "Right is better", "Tie")]
        for button, choice in zip(buttons, self.CHOICES):
            button.on_click(lambda _, c=choice: self.rate(c))
        self.buttons = buttons
        self.widget = widgets.VBox([self._page, widgets.HBox(buttons)])
        self._show()

    def rate(self, choice: str) -> None:
        """Record ``choice`` ("left", "right" or "tie") for the item on screen and move to the next."""
        if choice not in self.CHOICES:
            raise ValueError(f"choice must be one of {self.CHOICES}, got {choice!r}")
        if self.position >= len(self.prompts):
            raise ValueError("every item is rated already")
        left_is_b = self.b_on_left[self.position]
        self.winners[self.position] = "tie" if choice == "tie" else ("b" if (choice == "left") == left_is_b else "a")
        self.position += 1
        self._show()

    def _show(self) -> None:
        i, n = self.position, len(self.prompts)
        if i >= n:
            self._page.value = f"<b>All {n} pairs rated.</b> Run the next cell to unblind and see the results."
            for button in self.buttons:
                button.disabled = True
            return
        left, right = (self.outputs[1][i], self.outputs[0][i]) if self.b_on_left[i] else \
            (self.outputs[0][i], self.outputs[1][i])
        box = "<td style='vertical-align:top;width:50%;border:1px solid #ccc;padding:6px'>{}</td>"
        self._page.value = (f"<b>Pair {i + 1} of {n}</b>. Ticket: <i>{html.escape(self.prompts[i])}</i>"
                            f"<table style='width:100%'><tr><th>Left</th><th>Right</th></tr><tr>"
                            f"{box.format(html.escape(left))}{box.format(html.escape(right))}</tr></table>"
                            "Which reply would you rather send to this customer?")

    def results(self, metric_a: Sequence[float] | None = None, metric_b: Sequence[float] | None = None) -> dict:
        """Unblinded: how often B won (ties count half) with its 95% Wilson interval, over the rated items; with
        per-item automatic scores of both systems, also how often the metric prefers the side the rater chose
        (over rated items where the rater and the metric both prefer one side)."""
        rated = [w for w in self.winners if w is not None]
        if not rated:
            raise ValueError("no pair is rated yet: rate some pairs in the panel first")
        wins, losses, ties = rated.count("b"), rated.count("a"), rated.count("tie")
        rate, low, high = win_rate(wins, losses, ties)
        out = {"rated": len(rated), "wins": wins, "losses": losses, "ties": ties, "win_rate": rate, "low": low,
               "high": high, "names": self.names}
        if metric_a is not None and metric_b is not None:
            pairs = [(w, "b" if sb > sa else "a") for w, sa, sb in zip(self.winners, metric_a, metric_b)
                     if w in ("a", "b") and sa != sb]
            out["metric_compared"] = len(pairs)
            out["metric_agreement"] = sum(w == m for w, m in pairs) / len(pairs) if pairs else float("nan")
        return out
