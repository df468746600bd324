"""Train topic 3's ticket adapter with the course's one loop on several processes, as on several GPUs or machines.

Each process takes its share of every batch; after the backward pass the gradients are averaged over the
processes (what DistributedDataParallel does), so N processes on batch B compute the same update as one process
on batch B. Hugging Face ``accelerate`` sets up the processes and the averaging (gloo on CPUs, NCCL on GPUs).

    python scripts/tools/train_distributed.py OUT                             # one process
    torchrun --nproc_per_node 2 scripts/tools/train_distributed.py OUT        # two CPU processes (gloo)
    accelerate launch --multi_gpu --num_processes 4 scripts/tools/train_distributed.py OUT   # four GPUs (NCCL)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_endpoint HOST:29500 scripts/tools/train_distributed.py OUT
                                                                        # two machines of eight GPUs

OUT gets the adapter in PEFT's format and ``history.json`` (the per-step losses and the process count).
(On CPUs, ``accelerate launch`` starts one process; torchrun starts several, and Accelerator picks them up.)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator

from course_lib import classify, lora
from course_lib.data import load_tickets
from course_lib.models import DEFAULT_MODEL_ID, load_default_model
from course_lib.recipes import TICKET_LORA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model, tokenizer = load_default_model(device=accelerator.device)
    # the recipe's seed: the same adapter initialisation and batch order in every process
    history, _ = TICKET_LORA.replace(steps=args.steps).fit(model, classify.examples(tokenizer, load_tickets("train")),
                                                           tokenizer.pad_token_id, accelerator=accelerator,
                                                           progress=accelerator.is_main_process)
    if accelerator.is_main_process:
        lora.save_adapter(model, args.out, base_model_name_or_path=DEFAULT_MODEL_ID)
        (args.out / "history.json").write_text(json.dumps({"processes": accelerator.num_processes,
                                                           "loss": history["loss"]}))


if __name__ == "__main__":
    main()
