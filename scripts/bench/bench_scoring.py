"""Benchmark: classification scoring (``course_lib.classify.score_prompts``) with and without its prefix cache.

SmolLM2 with topic 3's shipped ticket adapter scores the 225 test tickets (the work of topics 1, 3 and 6) both
ways, alternately, round after round, so drifts in machine load hit both alike. Reports the median seconds of
each, the speed-up, the prompts' shared prefix, the largest logit difference and whether every prediction is
the same.

    python scripts/bench/bench_scoring.py [--rounds 4]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from course_lib import classify, lora
from course_lib.data import load_tickets, ticket_adapter_path
from course_lib.device import use_cores
from course_lib.models import load_default_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    use_cores()
    model, tokenizer = load_default_model()
    lora.load_adapter(model, ticket_adapter_path())
    prompts = [classify.prompt_ids(tokenizer, r["text"]) for r in load_tickets("test")]
    shared = len(os.path.commonprefix(prompts))
    print(f"{len(prompts)} prompts, {statistics.fmean(map(len, prompts)):.1f} tokens on average, "
          f"{shared} shared by all; {torch.get_num_threads()} threads")
    times: dict[bool, list[float]] = {True: [], False: []}
    scores: dict[bool, torch.Tensor] = {}
    for r in range(args.rounds):
        for cached in ((True, False) if r % 2 == 0 else (False, True)):
            start = time.perf_counter()
            scores[cached] = classify.score_prompts(model, tokenizer, prompts, prefix_cache=cached, progress=False)
            times[cached].append(time.perf_counter() - start)
        print(f"round {r + 1}: prefix cache {times[True][-1]:.2f} s, without {times[False][-1]:.2f} s")
    med = {k: statistics.median(v) for k, v in times.items()}
    same = torch.equal(scores[True].argmax(-1), scores[False].argmax(-1))
    print(f"median: prefix cache {med[True]:.2f} s, without {med[False]:.2f} s, "
          f"speed-up {med[False] / med[True]:.2f}x; "
          f"largest logit difference {(scores[True] - scores[False]).abs().max():.1e}; "
          f"predictions {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
