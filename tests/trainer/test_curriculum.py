"""The curriculum order (paper §3.2), its sampler, sharding and resume state, against hand computations."""

from __future__ import annotations

import json
import math
import multiprocessing
from pathlib import Path

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from adamoe.trainer import CurriculumSampler, curriculum_order

# Five samples, two MoE layers. Means: 0.30, 0.10, 0.35, 0.30, 0.10 -> samples 1 and 4 tie for simplest; the lower
# index wins, so the reference is v1 = (0.2, 0.0), direction (1, 0). Cosines to it:
#   v0 = (0.4, 0.2): 0.4 / sqrt(0.20) = 0.894427    v1: 1 (itself)    v2 = (0.3, 0.4): 0.3 / 0.5 = 0.6
#   v3 = (0.6, 0.0): 1 (parallel: ties with v1, then the smaller mean 0.10 < 0.30 puts v1 first)
#   v4 = (0.0, 0.2): 0 (orthogonal: simple, but routes unlike v1)
HAND_VECTORS = torch.tensor([[0.4, 0.2], [0.2, 0.0], [0.3, 0.4], [0.6, 0.0], [0.0, 0.2]])
HAND_ORDER = [1, 3, 0, 2, 4]


def test_order_matches_hand_computation() -> None:
    assert curriculum_order(HAND_VECTORS) == HAND_ORDER


def test_order_of_mapping_is_in_dataset_indices() -> None:
    # The same vectors filed under sparse, increasing dataset indices and inserted in reverse: ties still go to the
    # lowest *index*, so the result is HAND_ORDER mapped through the keys.
    keys = [4, 11, 23, 32, 40]
    vectors = {k: HAND_VECTORS[row] for row, k in reversed(list(enumerate(keys)))}
    assert curriculum_order(vectors) == [11, 32, 4, 23, 40]
    # With the keys of rows 1 and 4 swapped, the tie for simplest now goes to row 4's vector (0.0, 0.2).
    swapped = {4: HAND_VECTORS[4], 11: HAND_VECTORS[1]}
    assert curriculum_order(swapped) == [4, 11]


def test_zero_reference_degrades_to_ascending_complexity() -> None:
    # v1 and v3 never used two experts: v1 (lowest index) is the reference, v3 is identical to it (cosine 1), every
    # non-zero vector is orthogonal to it (cosine 0) and falls back to ascending mean: v2 0.05, v4 0.15, v0 0.5.
    vectors = torch.tensor([[0.5, 0.5], [0.0, 0.0], [0.1, 0.0], [0.0, 0.0], [0.0, 0.3]])
    assert curriculum_order(vectors) == [1, 3, 2, 4, 0]


def test_first_epoch_is_seeded_random_then_curriculum_with_unseen_last() -> None:
    sampler = CurriculumSampler(6, seed=3)
    assert list(sampler) == torch.randperm(6, generator=torch.Generator().manual_seed(3)).tolist()

    # Vectors for 4 of the 6 samples (1 and 3 unseen, e.g. max_steps cut the first epoch short).
    sampler.record([5, 0], torch.tensor([[0.2, 0.0], [0.4, 0.2]]))
    sampler.record([2, 4], torch.tensor([[0.3, 0.4], [0.0, 0.2]]))
    sampler.set_epoch(1)
    # Seen: 5 = (0.2, 0) and 4 = (0, 0.2) tie at mean 0.1, the lower index 4 is the reference. Cosines to (0, 1):
    # 2 = (0.3, 0.4) -> 0.8, 0 = (0.4, 0.2) -> 0.447, 5 -> 0. The unseen 1 and 3 follow in epoch 1's random order.
    epoch1_random = torch.randperm(6, generator=torch.Generator().manual_seed(4)).tolist()
    unseen = [i for i in epoch1_random if i in (1, 3)]
    assert list(sampler) == [4, 2, 0, 5, *unseen]


def test_curriculum_off_is_random_every_epoch() -> None:
    sampler = CurriculumSampler(5, curriculum=False, seed=0)
    sampler.record(range(5), HAND_VECTORS)
    sampler.set_epoch(2)
    assert list(sampler) == torch.randperm(5, generator=torch.Generator().manual_seed(2)).tolist()


def test_epoch_order_is_frozen_once_computed() -> None:
    sampler = CurriculumSampler(5)
    sampler.record(range(5), HAND_VECTORS)
    sampler.set_epoch(1)
    first = list(sampler)
    sampler.record([4], torch.tensor([[0.0, 0.0]]))  # would make 4 the simplest, but only from the next epoch
    sampler.set_epoch(1)
    assert list(sampler) == first == HAND_ORDER
    sampler.set_epoch(2)
    assert list(sampler)[0] == 4


@pytest.mark.parametrize("num_samples", [5, 6])
def test_sharding_with_world_size_two_keeps_the_global_order(num_samples: int) -> None:
    vectors = torch.rand(num_samples, 3, generator=torch.Generator().manual_seed(0))
    shards = []
    for rank in range(2):
        sampler = CurriculumSampler(num_samples, seed=7, num_replicas=2, rank=rank)
        sampler.record(range(num_samples), vectors)
        sampler.set_epoch(1)
        shards.append(list(sampler))
        global_order = sampler.global_order()
    assert global_order == curriculum_order(vectors)
    assert len(shards[0]) == len(shards[1]) == math.ceil(num_samples / 2)
    interleaved = [index for pair in zip(*shards, strict=True) for index in pair]
    # Padded like DistributedSampler: the global order, then its head again up to a multiple of the world size.
    assert interleaved == (global_order + global_order)[: 2 * math.ceil(num_samples / 2)]

    dropped = [list(CurriculumSampler(5, num_replicas=2, rank=r, drop_last=True)) for r in range(2)]
    assert [len(d) for d in dropped] == [2, 2]


def test_accelerate_batch_sharding_of_the_global_sampler_keeps_the_order() -> None:
    # Under Trainer the sampler stays global and accelerate gives rank r the batches r, r + W, ...
    vectors = torch.rand(10, 2, generator=torch.Generator().manual_seed(1))
    sampler = CurriculumSampler(10, seed=0)
    sampler.record(range(10), vectors)
    sampler.set_epoch(1)
    batches = BatchSampler(sampler, batch_size=2, drop_last=False)
    shards = [list(BatchSamplerShard(batches, num_processes=2, process_index=r)) for r in range(2)]
    interleaved = [index for pair in zip(*shards, strict=True) for batch in pair for index in batch]
    assert interleaved[:10] == curriculum_order(vectors)


def test_state_dict_replays_the_interrupted_epoch() -> None:
    sampler = CurriculumSampler(5, seed=0)
    sampler.record(range(5), HAND_VECTORS)
    sampler.set_epoch(1)
    assert list(sampler) == HAND_ORDER
    sampler.record([4], torch.tensor([[0.0, 0.0]]))  # recorded mid-epoch, after the order was fixed
    state = sampler.state_dict()

    restored = CurriculumSampler(5, seed=0)
    restored.load_state_dict(state)
    restored.set_epoch(1)
    assert list(restored) == HAND_ORDER
    assert torch.equal(restored.vectors[4], torch.zeros(2))
    restored.set_epoch(2)
    assert list(restored)[0] == 4
    with pytest.raises(ValueError, match="for 5 samples, the training set has 6"):
        CurriculumSampler(6).load_state_dict(state)


def _sync_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # forked from a process that may have started OpenMP threads
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    sampler = CurriculumSampler(5, seed=0)
    mine = [i for i in range(5) if i % 2 == rank]  # each rank saw only its own samples
    sampler.record(mine, HAND_VECTORS[mine])
    sampler.sync()
    sampler.set_epoch(1)
    Path(out_dir, f"{rank}.json").write_text(json.dumps(list(sampler)))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_sync_gives_every_rank_the_same_order(tmp_path: Path) -> None:
    # fork: the workers inherit the imports (spawn would spend ~15 s re-importing transformers).
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_sync_worker, args=(r, str(tmp_path / "init"), str(tmp_path))) for r in (0, 1)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0, f"worker exit code {worker.exitcode} (None: hung in the collective)"
    finally:
        for worker in workers:  # a hung worker must not outlive the test
            if worker.is_alive():
                worker.kill()
    orders = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert orders[0] == orders[1] == HAND_ORDER
