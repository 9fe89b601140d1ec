"""Data-parallel fine-tuning through a standard launcher: `torchrun --nproc_per_node 2` (gloo, CPU) runs the
unchanged `finetune()` (see `ddp_worker.py`, which only records what each rank does).

Checked: an expert that gets no tokens on rank 1 does not break strict DDP (`ddp_find_unused_parameters=False`)
and still learns from rank 0; the curriculum is one global order, sharded batch by batch; metrics and routing
figures cover all ranks; only rank 0 writes results, run config, model and checkpoints (each rank its own RNG
state, which resuming needs). Also: the example accelerate configs parse as accelerate configs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig
from launch import torchrun
from tiny_run import sst2_rows, write_model_folder, write_sst2
from transformers import AutoTokenizer

import adamoe
from adamoe.moe.experts import Experts
from adamoe.tasks import DataArgs, get_task
from adamoe.trainer import CURRICULUM_STATE_NAME, curriculum_order
from adamoe.trainer.batching import sample_lengths, token_budget_batches

WORKER = Path(__file__).with_name("ddp_worker.py")
ACCELERATE_CONFIGS = Path(adamoe.__file__).parent / "configs" / "accelerate"
TRAIN, DEV, BATCH, EPOCHS, WORLD, MAX_TOKENS = 24, 9, 4, 2, 2, 40
STEPS_PER_EPOCH = TRAIN // (BATCH * WORLD)


@pytest.mark.parametrize("backend", ["loop", "grouped_mm"])
def test_an_expert_without_tokens_gets_an_exact_zero_gradient_slice(backend: str) -> None:
    # Why DDP needs no find_unused_parameters: the experts are stacked (E, d, f) parameters, so an idle expert is a
    # zero slice of a gradient that exists, not a parameter without one.
    torch.manual_seed(0)
    experts = Experts(num_experts=4, hidden_size=8, ffn_size=16, activation=torch.nn.GELU(), dispatch=backend)
    tokens = torch.arange(10)
    index = torch.stack([tokens % 3, (tokens + 1) % 3], dim=-1)  # (10, 2): expert 3 is never chosen
    active = torch.stack([torch.ones(10, dtype=torch.bool), tokens % 2 == 0], dim=-1)
    experts(torch.randn(10, 8), index, torch.full((10, 2), 0.5), active).square().sum().backward()
    for weight in (experts.w_in, experts.w_out, experts.b_in, experts.b_out):
        assert weight.grad is not None and torch.equal(weight.grad[3], torch.zeros_like(weight.grad[3]))
        assert bool((weight.grad[:3].flatten(1).abs().sum(-1) > 0).all())


def _launch(tmp_path: Path, **training: object) -> dict[int, dict]:
    write_model_folder(tmp_path / "model")
    config = {
        "task": "sst2",
        "model": str(tmp_path / "model"),
        "moe": {"num_experts": 4, "threshold": 0.2, "router_init_std": 1.0, "expert_init": "random"},
        "data": {
            "train_file": str(write_sst2(tmp_path / "train.tsv", TRAIN, seed=0)),
            "validation_file": str(write_sst2(tmp_path / "dev.tsv", DEV, seed=1)),
        },
        "training": {
            "num_train_epochs": EPOCHS,
            "per_device_train_batch_size": BATCH,
            "per_device_eval_batch_size": BATCH,
            "learning_rate": 1e-3,
            "curriculum": True,
            "seed": 0,
            "use_cpu": True,
            "disable_tqdm": True,
            "ddp_find_unused_parameters": False,  # strict DDP: any parameter without a gradient is an error
            **training,
        },
        "output_dir": str(tmp_path / "run"),
        "keep_checkpoints": True,  # the tests read the curriculum state the checkpoints hold
    }
    (tmp_path / "run.json").write_text(json.dumps(config))
    torchrun(WORKER, tmp_path / "run.json", tmp_path, world=WORLD)
    return {rank: json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD)}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict]]:
    tmp_path = tmp_path_factory.mktemp("ddp")
    return tmp_path, _launch(tmp_path)


@pytest.fixture(scope="module")
def ddp_token_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict]]:
    tmp_path = tmp_path_factory.mktemp("ddp-tokens")
    return tmp_path, _launch(tmp_path, max_tokens=MAX_TOKENS)


@pytest.mark.slow
def test_an_expert_idle_on_one_rank_keeps_ddp_in_step(ddp_run: tuple[Path, dict[int, dict]]) -> None:
    _, ranks = ddp_run
    # Per layer: tokens that chose the last expert (first or active second choice) on each rank.
    used = [
        {name: ranks[r]["first"][name][-1] + ranks[r]["second"][name][-1] for name in ranks[r]["first"]}
        for r in (0, 1)
    ]
    assert set(used[1].values()) == {0}  # rank 1 never sends it a token
    assert used[0]["bert.encoder.layer.0"] > 0  # rank 0 does
    # It trained on both ranks alike, from rank 0's tokens alone: the all-reduced gradient reached rank 1. (Layer 0:
    # in the last layer only the [CLS] token reaches the classifier, so most of its experts get zero gradients.)
    before, after = ranks[1]["last_expert_before"], ranks[1]["last_expert_after"]
    assert after["bert.encoder.layer.0"] != pytest.approx(before["bert.encoder.layer.0"], rel=1e-6)
    assert ranks[0]["last_expert_after"] == after
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    assert ranks[0]["results"]["global_steps"] == ranks[1]["results"]["global_steps"] == EPOCHS * STEPS_PER_EPOCH


@pytest.mark.slow
def test_curriculum_is_one_global_order_sharded_by_batch(ddp_run: tuple[Path, dict[int, dict]]) -> None:
    tmp_path, ranks = ddp_run
    per_rank = [[(epoch, batch) for epoch, batch in ranks[r]["batches"]] for r in range(WORLD)]
    assert [len(batches) for batches in per_rank] == [EPOCHS * STEPS_PER_EPOCH] * WORLD
    orders = {}
    for epoch in range(EPOCHS):
        shards = [[batch for e, batch in per_rank[r] if e == epoch] for r in range(WORLD)]
        # accelerate hands global batch k to rank k % WORLD: interleave the ranks' batches to rebuild the order.
        orders[epoch] = [i for step in zip(*shards, strict=True) for batch in step for i in batch]
        assert sorted(orders[epoch]) == list(range(TRAIN))  # every sample once per epoch, across ranks
    assert orders[0] == torch.randperm(TRAIN, generator=torch.Generator().manual_seed(0)).tolist()
    # Epoch 1 follows the curriculum over *all* samples' vectors: each rank recorded only its own half, and the
    # checkpoint (written by rank 0) holds every one, so the ranks exchanged them.
    state = torch.load(tmp_path / "run" / f"checkpoint-{STEPS_PER_EPOCH}" / CURRICULUM_STATE_NAME, weights_only=True)
    assert state["indices"].tolist() == list(range(TRAIN))
    assert orders[1] == curriculum_order(dict(zip(state["indices"].tolist(), state["vectors"], strict=True)))
    assert orders[1] != orders[0]


@pytest.mark.slow
def test_metrics_cover_all_ranks(ddp_run: tuple[Path, dict[int, dict]]) -> None:
    tmp_path, ranks = ddp_run
    results = [ranks[r]["results"] for r in range(WORLD)]
    assert results[0]["metrics"] == results[1]["metrics"]
    # The gathered evaluation equals one process evaluating all DEV rows with the saved model. (Not eval_loss:
    # transformers averages each batch before gathering, so accelerate's padding of the last batch biases it
    # slightly, huggingface/transformers#16716; see docs/scale-out.md.)
    model = adamoe.from_pretrained(str(tmp_path / "run"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "run"))
    rows = sst2_rows(DEV, seed=1)
    batch = tokenizer([sentence for sentence, _ in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1)
    correct = sum(int(p) == label for p, (_, label) in zip(predictions, rows, strict=True))
    assert results[0]["metrics"]["accuracy"] == pytest.approx(correct / DEV, abs=1e-12)  # k/9: all rows were seen
    # The run's two-expert fraction counts both ranks' tokens (rank 1 routes differently, so its share counts).
    counts = [tuple(sum(map(sum, ranks[r][k].values())) for k in ("first", "second")) for r in range(WORLD)]
    both = sum(second for _, second in counts) / sum(first for first, _ in counts)
    assert results[0]["two_expert_fraction"] == pytest.approx(both, rel=1e-9)
    assert abs(counts[0][1] / counts[0][0] - both) > 1e-6


@pytest.mark.slow
def test_only_the_main_process_writes(ddp_run: tuple[Path, dict[int, dict]]) -> None:
    tmp_path, ranks = ddp_run
    run = tmp_path / "run"
    assert ranks[1]["json_writes"] == [] and ranks[1]["model_saves"] == []
    assert sorted(Path(p).name for p in ranks[0]["json_writes"]) == ["results.json", "run_config.json"]
    checkpoints = [f"checkpoint-{STEPS_PER_EPOCH * (e + 1)}" for e in range(EPOCHS)]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == checkpoints
    assert len(ranks[0]["model_saves"]) == EPOCHS + 1  # one per checkpoint, one final model
    for checkpoint in checkpoints:
        assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors"} <= {
            p.name for p in (run / checkpoint).iterdir()
        }
    assert not (run / ".adamoe-partial").exists()


@pytest.mark.slow
def test_token_budget_batches_are_one_global_order_sharded_by_batch(
    ddp_token_run: tuple[Path, dict[int, dict]],
) -> None:
    tmp_path, ranks = ddp_token_run
    # The batches the run must have packed, from the task's own tokenization of the training file.
    task = get_task("sst2")
    data = DataArgs(train_file=str(tmp_path / "train.tsv"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    lengths = sample_lengths(task.preprocess(task.load_raw(data), tokenizer, data).train)
    batches = token_budget_batches(lengths, MAX_TOKENS, seed=0)
    assert 3 <= len(batches) < TRAIN  # the budget really groups samples, unevenly
    steps = -(-len(batches) // WORLD)
    state = torch.load(tmp_path / "run" / f"checkpoint-{steps}" / CURRICULUM_STATE_NAME, weights_only=True)
    expected = {
        0: torch.randperm(len(batches), generator=torch.Generator().manual_seed(0)).tolist(),
        1: curriculum_order(dict(zip(state["indices"].tolist(), state["vectors"], strict=True))),
    }
    for epoch in range(EPOCHS):
        shards = [[batch for e, batch in ranks[r]["batches"] if e == epoch] for r in range(WORLD)]
        assert [len(shard) for shard in shards] == [steps] * WORLD
        # accelerate hands global batch k to rank k % WORLD; an odd count is evened out with the epoch's first.
        seen = [batch for step in zip(*shards, strict=True) for batch in step]
        order = [batches[b] for b in expected[epoch]]
        assert [sorted(b) for b in seen] == [sorted(b) for b in (order + order)[: steps * WORLD]]
    assert expected[1] != expected[0]
    assert ranks[0]["results"]["global_steps"] == ranks[1]["results"]["global_steps"] == EPOCHS * steps


def _launch_environment(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """What `accelerate launch --config_file configs/accelerate/NAME.yaml` hands its processes (its own code path,
    stopped before it starts any)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(ACCELERATE_CONFIGS / f"{name}.yaml"), "--no_python", "adamoe"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert args.num_processes == 8 and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    return env


def test_ddp_config_launches_eight_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ClusterConfig.from_yaml_file(str(ACCELERATE_CONFIGS / "ddp.yaml"))  # unknown keys would raise
    assert config.distributed_type.value == "MULTI_GPU"
    env = _launch_environment("ddp", monkeypatch)
    assert "ACCELERATE_USE_FSDP" not in env and "ACCELERATE_USE_DEEPSPEED" not in env


def test_fsdp_config_wraps_each_bert_layer_and_saves_full_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers.models.bert import modeling_bert

    ClusterConfig.from_yaml_file(str(ACCELERATE_CONFIGS / "fsdp.yaml"))
    _launch_environment("fsdp", monkeypatch)
    plugin = FullyShardedDataParallelPlugin()  # reads the launch environment, as the trainer's accelerator does
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["BertLayer"]
    assert hasattr(modeling_bert, "BertLayer") and "FULL_STATE_DICT" in str(plugin.state_dict_type)


def test_deepspeed_config_is_zero_stage_2(monkeypatch: pytest.MonkeyPatch) -> None:
    from accelerate.utils import DeepSpeedPlugin

    ClusterConfig.from_yaml_file(str(ACCELERATE_CONFIGS / "deepspeed_zero2.yaml"))
    env = _launch_environment("deepspeed_zero2", monkeypatch)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    zero = DeepSpeedPlugin().deepspeed_config["zero_optimization"]  # builds without deepspeed installed
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "none"
