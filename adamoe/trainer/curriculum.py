"""Curriculum learning over routing complexity (paper §3.2).

Each training sample gets a *complexity vector*: for every MoE layer, the mean over its non-padding tokens of
`(k - 1) / (k_max - 1)`, k the experts the adaptive router gave the token, which with k_max = 2 is the paper's
fraction of tokens sent to two experts (`adamoe.routing_stats(model).per_sample`, collected by the trainer
from the training forwards themselves). Before every epoch after the first, the samples are ordered
by descending cosine similarity to the vector of the simplest sample, so training moves from samples that
route like the simplest one towards the ones that route least like it.

Precise rules (`curriculum_order`):

- The *simplest* sample is the one with the smallest mean of its vector (with k_max = 2, the smallest
  average share of two-expert tokens over the MoE layers); ties go to the lowest dataset index.
- Cosine similarity with zero vectors: two zero vectors are taken as identical (similarity 1: both samples
  used one expert everywhere); a zero vector and a non-zero one as orthogonal (similarity 0). So when the
  simplest sample never used two experts, all the other never-two-expert samples come first.
- Ties in similarity (after rounding to 10 decimals, so float noise between parallel vectors does not
  decide the order) go to the smaller mean, then to the lower index. With a zero reference every non-zero
  sample has similarity 0, and this makes the order degrade to plain ascending complexity.

`CurriculumSampler` applies the rules per epoch: epoch 0 (and every epoch when the curriculum is off) is a
random permutation seeded by `seed + epoch`, identical on every rank; later epochs put the samples that have a
vector in curriculum order, followed by the samples that have none yet (possible when `max_steps` cut the first
epoch short) in that epoch's random order, so the easy-first start is not disturbed by unknowns.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

# Similarities are rounded to this many decimals before sorting, so vectors that are parallel up to float
# rounding tie (and fall through to the mean / index tie-breaks) identically on every machine.
_SIMILARITY_DECIMALS = 10


def curriculum_order(vectors: torch.Tensor | Mapping[int, torch.Tensor]) -> list[int]:
    """Order samples by descending cosine similarity to the simplest sample's complexity vector.

    Args:
        vectors (`torch.Tensor` of shape `(num_samples, num_moe_layers)` or `Mapping[int, torch.Tensor]`):
            Per-sample complexity vectors (with k_max = 2, two-expert fractions). A tensor's rows are samples
            `0..num_samples-1`; a mapping goes from dataset index to that sample's vector.

    Returns:
        `list[int]`: row positions (tensor input) or dataset indices (mapping input), simplest first. See the
        module docstring for the definition of "simplest", zero vectors and ties.

    Example:
        ```python
        >>> curriculum_order(torch.tensor([[0.5, 0.5], [0.1, 0.0], [0.2, 0.1]]))
        [1, 2, 0]
        ```
    """
    if isinstance(vectors, Mapping):
        keys = sorted(vectors)
        if not keys:
            return []
        # Sorted keys make "lowest row" mean "lowest dataset index" in the tie-breaks below.
        rows = curriculum_order(torch.stack([torch.as_tensor(vectors[k]) for k in keys]))
        return [keys[r] for r in rows]

    if vectors.dim() != 2:
        raise ValueError(f"vectors must be (num_samples, num_moe_layers), got shape {tuple(vectors.shape)}.")
    if vectors.shape[0] == 0:
        return []
    v = vectors.detach().to("cpu", torch.float64)  # (n, L); float64 on CPU: the same order on every rank
    means = v.mean(dim=1)  # (n,)
    reference = int(torch.argmin(means))  # argmin returns the first minimum: ties -> lowest index
    norms = v.norm(dim=1)  # (n,)
    if norms[reference] == 0:
        similarity = (norms == 0).to(torch.float64)
    else:
        similarity = (v @ v[reference]) / (norms * norms[reference]).clamp_min(torch.finfo(torch.float64).tiny)
        similarity = torch.where(norms == 0, torch.zeros_like(similarity), similarity)
    similarity = torch.round(similarity, decimals=_SIMILARITY_DECIMALS)
    keyed = zip(similarity.tolist(), means.tolist(), range(v.shape[0]), strict=True)
    return [i for _, _, i in sorted(keyed, key=lambda item: (-item[0], item[1], item[2]))]


class CurriculumSampler(Sampler[int]):
    """Sampler that yields a random first epoch and complexity-ordered later epochs (see the module docstring).

    The trainer feeds it with `record` after every training forward and calls `sync` on every rank at the end
    of each epoch and before each checkpoint, so all ranks hold the same vectors and compute the same order.
    Each epoch's order is computed once, at the first `__iter__` of that epoch, and kept for the rest of it
    (vectors recorded meanwhile only affect later epochs); `state_dict` stores it, so a resumed run replays the
    interrupted epoch in the same order.

    Args:
        num_samples (`int`): length of the training set.
        curriculum (`bool`, defaults to `True`): order epochs after the first by complexity; `False` gives a
            seeded random permutation every epoch.
        seed (`int`, defaults to `0`): seed of the random orders; must be equal on every rank.
        num_replicas (`int`, defaults to `1`): number of shards to split each epoch into, like
            `DistributedSampler`. Keep 1 under `Trainer`: accelerate already shards the batches across ranks.
        rank (`int`, defaults to `0`): which shard this sampler yields, `order[rank::num_replicas]`.
        drop_last (`bool`, defaults to `False`): drop the tail so shards are equal (`True`) or pad by repeating
            the head of the order (`False`), as `DistributedSampler` does.

    Example:
        ```python
        >>> sampler = CurriculumSampler(4, seed=0)
        >>> first = list(sampler)  # random
        >>> sampler.record([0, 1, 2, 3], torch.tensor([[0.9, 0.9], [0.0, 0.1], [0.5, 0.5], [0.2, 0.0]]))
        >>> sampler.set_epoch(1)
        >>> list(sampler)  # sample 3 is simple but routes unlike sample 1 (other layer), so it comes last
        [1, 2, 0, 3]
        ```
    """

    def __init__(
        self,
        num_samples: int,
        *,
        curriculum: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"Need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}.")
        self.num_samples = num_samples
        self.curriculum = curriculum
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self.vectors: dict[int, torch.Tensor] = {}  # dataset index -> (num_moe_layers,) float32, CPU
        self._pending: dict[int, torch.Tensor] = {}  # recorded on this rank since the last `sync`
        self._order: list[int] | None = None
        self._order_epoch: int | None = None

    # ---- feeding ----

    def record(self, indices: torch.Tensor | Sequence[int], vectors: torch.Tensor) -> None:
        """Store the complexity vectors `(batch, num_moe_layers)` of the samples `indices` (latest wins)."""
        indices = torch.as_tensor(indices).reshape(-1).tolist()
        vectors = vectors.detach().to("cpu", torch.float32)
        if vectors.shape[0] != len(indices):
            raise ValueError(f"Got {len(indices)} indices for {vectors.shape[0]} complexity vectors.")
        for index, vector in zip(indices, vectors, strict=True):
            self.vectors[index] = vector
            self._pending[index] = vector

    def sync(self) -> None:
        """Exchange the vectors recorded since the last call with every rank (a collective: call it on all).

        A no-op outside `torch.distributed` or with a world of one.
        """
        pending, self._pending = self._pending, {}
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: list[dict[int, torch.Tensor] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, pending)
        # Rank order makes the merge deterministic when two ranks saw the same sample (padding repeats).
        for part in gathered:
            self.vectors.update(part or {})

    # ---- ordering ----

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next `__iter__` yields (the random seed is `seed + epoch`)."""
        self.epoch = epoch

    def global_order(self) -> list[int]:
        """This epoch's order over the whole dataset, before sharding; computed once per epoch."""
        if self._order_epoch != self.epoch or self._order is None:
            self._order = self._compute_order(self.epoch)
            self._order_epoch = self.epoch
        return self._order

    def _compute_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        random_order = torch.randperm(self.num_samples, generator=generator).tolist()
        if not self.curriculum or epoch == 0 or not self.vectors:
            return random_order
        known = {i: v for i, v in self.vectors.items() if i < self.num_samples}
        return curriculum_order(known) + [i for i in random_order if i not in known]

    def _total_size(self) -> int:
        if self.drop_last:
            return (self.num_samples // self.num_replicas) * self.num_replicas
        return math.ceil(self.num_samples / self.num_replicas) * self.num_replicas

    def __iter__(self) -> Iterator[int]:
        order = list(self.global_order())
        total = self._total_size()
        if total > len(order):  # pad like DistributedSampler, by repeating the head of the order
            order += (order * math.ceil(total / max(len(order), 1)))[: total - len(order)]
        return iter(order[:total][self.rank : total : self.num_replicas])

    def __len__(self) -> int:
        return self._total_size() // self.num_replicas

    # ---- checkpointing ----

    def state_dict(self) -> dict:
        """Vectors, epoch and the current epoch's order; plain tensors and ints (`torch.load(weights_only=True)`)."""
        indices = sorted(self.vectors)
        return {
            "num_samples": self.num_samples,
            "epoch": self.epoch,
            "order_epoch": self._order_epoch,
            "order": None if self._order is None else torch.tensor(self._order, dtype=torch.long),
            "indices": torch.tensor(indices, dtype=torch.long),
            "vectors": torch.stack([self.vectors[i] for i in indices]) if indices else torch.empty(0, 0),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; the stored epoch order is replayed if `set_epoch` selects that epoch again."""
        if state["num_samples"] != self.num_samples:
            raise ValueError(
                f"Curriculum state is for {state['num_samples']} samples, the training set has {self.num_samples}."
            )
        self.epoch = state["epoch"]
        self._order_epoch = state["order_epoch"]
        self._order = None if state["order"] is None else state["order"].tolist()
        self.vectors = dict(zip(state["indices"].tolist(), state["vectors"].to(torch.float32), strict=True))
        self._pending = {}
