"""Does the order of the same batches change what a training step costs? A check of the cpu scale's SQuAD
Table 6, where the curriculum's second epoch took more CPU a step than random order at the same two-expert share.

    python scripts/batch_order_cost.py RUN_DIR SPLIT_DIR [--passes random,curriculum,random]

RUN_DIR is a finished cpu-scale SQuAD run (its trained MoE model is loaded); SPLIT_DIR holds the `train.json`
it trained on (`results/cpu/data/squad`). The training windows are packed into the run's token-budget batches
(2,560 tokens), and each pass runs forward, loss (task + balance) and backward over every batch, without an
optimizer step: the weights never change, so every batch costs the same compute in every pass and only the
order differs. The curriculum order is the trainer's own (`curriculum_order` over each batch's mean per-layer
two-expert fractions, from one forward pass of the same model). Per pass it prints the process CPU seconds
(user and system), minor page faults, wall clock and the active token-expert pairs, on one torch thread.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch

import adamoe
from adamoe.moe.stats import balance_loss, routing_stats
from adamoe.patching.patch import moe_blocks
from adamoe.tasks import DataArgs, get_task
from adamoe.trainer.batching import token_budget_batches
from adamoe.trainer.curriculum import curriculum_order

MAX_TOKENS, BALANCE_WEIGHT = 2560, 0.01


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("--passes", default="random,curriculum,random")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit", type=int, default=None, help="the first N batches only (a quick check)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    from transformers import AutoTokenizer

    model = adamoe.from_pretrained(str(args.run_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(args.run_dir))
    task = get_task("squad")
    data = DataArgs(train_file=str(args.split_dir / "train.json"), max_seq_length=384, doc_stride=128)
    train = task.preprocess(task.load_raw(data), tokenizer, data).train
    collate = task.data_collator(tokenizer, model)
    lengths = np.array([len(ids) for ids in train["input_ids"]])
    batches = [
        collate([train[int(i)] for i in members]) for members in token_budget_batches(lengths, MAX_TOKENS, args.seed)
    ]
    batches = batches[: args.limit]

    model.eval()  # the complexity vectors as the trainer records them, without dropout's noise
    vectors = {}
    with torch.no_grad():
        for i, batch in enumerate(batches):
            model(**batch)
            vectors[i] = routing_stats(model).per_sample.mean(dim=0)
    rng = np.random.default_rng(args.seed)
    orders = {"random": rng.permutation(len(batches)).tolist(), "curriculum": curriculum_order(vectors)}

    model.train()
    print(f"{len(batches)} batches of at most {MAX_TOKENS} tokens, one torch thread")
    print("| pass | order | CPU s | user s | system s | minor faults | wall s | active pairs |")
    print("|---|---|---|---|---|---|---|---|")
    for number, name in enumerate(args.passes.split(","), 1):
        torch.manual_seed(args.seed)  # the same dropout masks in every pass
        pairs = 0
        before, cpu, wall = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
        for i in orders[name]:
            model.zero_grad(set_to_none=True)
            out = model(**batches[i])
            (out.loss + BALANCE_WEIGHT * balance_loss(model)).backward()
            pairs += sum(int(block.last_routing.active.sum()) for _, block in moe_blocks(model))
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(
            f"| {number} | {name} | {time.process_time() - cpu:.1f} | {after.ru_utime - before.ru_utime:.1f} | "
            f"{after.ru_stime - before.ru_stime:.1f} | {after.ru_minflt - before.ru_minflt} | "
            f"{time.perf_counter() - wall:.1f} | {pairs} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
