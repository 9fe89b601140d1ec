"""The words that most often take two experts, with examples in context (the paper's Table 4).

Counts are per word type (its surface text), summed over its occurrences, sub-word pieces and MoE layers:
`decisions` is how many (token, layer) routing decisions the word's pieces got, `two_expert` how many of them
used two experts. Special tokens are kept apart (`special=True`) but counted, so the totals over all entries
equal the routed token-layers of `routing_stats`. Words rank by `two_expert`; the examples are the word's
occurrences with the highest two-expert share, shown in their sentence with the word in bold and the other
words that used two experts in most layers in italics (the paper underlines them).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .collect import RoutingCollection

CONTEXT_WORDS = 8  # on each side of the word in an example


@dataclass
class WordStats:
    word: str
    special: bool
    occurrences: int
    decisions: int
    two_expert: int
    examples: list[str] = field(default_factory=list)

    @property
    def two_expert_rate(self) -> float:
        return self.two_expert / max(self.decisions, 1)


def word_stats(collection: RoutingCollection) -> list[WordStats]:
    """Every word type with its counts, most two-expert decisions first (examples not filled in)."""
    groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
    for occurrence, (text, special) in enumerate(
        zip(collection.occurrence_text, collection.occurrence_special, strict=True)
    ):
        if collection.occurrence_decisions[occurrence] > 0:  # routed at least once (not truncated away)
            groups[(text, bool(special))].append(occurrence)
    stats = [
        WordStats(
            word=text,
            special=special,
            occurrences=len(occurrences),
            decisions=int(collection.occurrence_decisions[occurrences].sum()),
            two_expert=int(collection.occurrence_two[occurrences].sum()),
        )
        for (text, special), occurrences in groups.items()
    ]
    return sorted(stats, key=lambda s: (-s.two_expert, -s.two_expert_rate, s.word))


def _majority_two(collection: RoutingCollection, occurrence: int) -> bool:
    decisions = collection.occurrence_decisions[occurrence]
    return decisions > 0 and 2 * collection.occurrence_two[occurrence] > decisions


def context_of(collection: RoutingCollection, occurrence: int, offset: int) -> str:
    """The occurrence in its sequence: up to `CONTEXT_WORDS` words each side, in position order."""
    words, stack = collection.occurrence_context[occurrence]
    local = occurrence - offset
    order = list(dict.fromkeys(words.positions.get(stack, [])))  # occurrences in position order, pieces merged
    if local not in order:
        return collection.occurrence_text[occurrence]
    at = order.index(local)
    window = order[max(at - CONTEXT_WORDS, 0) : at + CONTEXT_WORDS + 1]
    rendered = []
    for other in window:
        if words.special[other]:
            continue
        text = words.texts[other]
        if other == local:
            rendered.append(f"**{text}**")
        elif _majority_two(collection, offset + other):
            rendered.append(f"_{text}_")
        else:
            rendered.append(text)
    prefix = "… " if order.index(window[0]) > 0 else ""
    suffix = " …" if order.index(window[-1]) < len(order) - 1 else ""
    return prefix + " ".join(rendered) + suffix


def top_words(collection: RoutingCollection, *, limit: int = 25, examples_per_word: int = 2) -> list[WordStats]:
    """The `limit` non-special words with the most two-expert decisions, each with its best examples."""
    stats = [s for s in word_stats(collection) if not s.special and s.two_expert > 0][:limit]
    wanted = {s.word: s for s in stats}
    # Offsets of each Words object, to turn global occurrence ids back into positions within it.
    offsets: dict[int, int] = {}
    for occurrence, (words, _) in enumerate(collection.occurrence_context):
        offsets.setdefault(id(words), occurrence)
    candidates: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    for occurrence, text in enumerate(collection.occurrence_text):
        if text in wanted and not collection.occurrence_special[occurrence]:
            decisions = int(collection.occurrence_decisions[occurrence])
            if decisions:
                share = collection.occurrence_two[occurrence] / decisions
                candidates[text].append((-share, -decisions, occurrence))
    for text, entries in candidates.items():
        for _, _, occurrence in sorted(entries)[:examples_per_word]:
            words, _ = collection.occurrence_context[occurrence]
            wanted[text].examples.append(context_of(collection, occurrence, offsets[id(words)]))
    return stats


def totals(stats: list[WordStats]) -> tuple[int, int]:
    """(decisions, two-expert decisions) summed over every entry, specials included."""
    return int(np.sum([s.decisions for s in stats])), int(np.sum([s.two_expert for s in stats]))
