"""CPU time and peak memory of one training step on the real SmolLM2 with every FFN upcycled into 4 experts:
full fine-tuning against LoRA (attention + experts, routers trained), each with and without gradient checkpointing.

One configuration per process, so each peak resident set is its own (`ru_maxrss`, which also counts loading the
model: the step's own peak is the figure minus the loaded model's). One torch thread; 2 warm-up steps, then the
median CPU time of 3 steps over 4 sequences of 256 tokens.

    python scripts/lora_cost.py            # all four, one after another (about 6 minutes here)
    python scripts/lora_cost.py full lora  # some of them
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = ("full", "full+checkpointing", "lora", "lora+checkpointing")


def measure(name: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM

    import adamoe
    from adamoe.smoke.pretrained import SMOLLM2

    torch.manual_seed(0)
    moe = adamoe.MoEConfig(num_experts=4)
    model = adamoe.from_pretrained(str(SMOLLM2.path()), moe=moe, model_class=AutoModelForCausalLM).train()
    loaded_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if name.startswith("lora"):
        import peft

        model = peft.get_peft_model(model, adamoe.lora_config(model, r=8))
    if name.endswith("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # frozen embeddings (LoRA) would otherwise cut the checkpointed graph
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    tokens = torch.randint(0, 49152, (4, 256), generator=torch.Generator().manual_seed(0))
    times = []
    for step in range(5):
        start = time.process_time()
        loss = model(input_ids=tokens, labels=tokens).loss + adamoe.balance_loss(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.process_time() - start)
    return {
        "config": name,
        "trainable_params_m": sum(p.numel() for p in params) / 1e6,
        "step_cpu_s": statistics.median(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loaded_rss_mib": loaded_mib,
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2])))
        return
    names = sys.argv[1:] or list(CONFIGS)
    print("| configuration | trainable params | CPU s / step | peak RSS MiB | RSS after loading MiB |")
    print("|---|---|---|---|---|")
    for name in names:
        out = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {r['config']} | {r['trainable_params_m']:.1f} M | {r['step_cpu_s']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['loaded_rss_mib']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
