"""Decoder-only formulations of the generation tasks: a source becomes a prompt, the target its continuation.

Translation, summarisation and dialogue were encoder-decoder tasks in the paper (FSMT, BART) or a bare
`context<eos>response<eos>` language model (DialoGPT). A decoder-only LLM (Llama, Qwen, SmolLM2) does them from a
prompt instead:

- the prompt is the tokenizer's chat template with one user turn (`instruction`, a blank line, the source) and
  the generation prompt of the assistant turn, when the tokenizer has a chat template; otherwise a plain prompt
  `instruction\\n\\nsource\\n\\nanswer_prefix` that the task names (e.g. "English:");
- the example is `prompt + target + eos`, and only the target and its EOS carry labels (the prompt gets -100),
  so the loss is on the target tokens only;
- the source is cut to `max_source_length` tokens inside the prompt (the template around it stays whole) and the
  target to `max_target_length`; an example longer than the model's context is an error, not a silent cut;
- evaluation generates from the prompt, left-padded and batched (`causal_lm.generate_continuations`), and
  scores the continuation with the task's own metric.

One implementation for every task: the task gives an instruction and an answer prefix (`PromptFormat`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .io import TaskInputError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

PLACEHOLDER = "\x00adamoe-source\x00"  # marks where the source goes in the rendered template; never in real text


@dataclass(frozen=True)
class PromptFormat:
    """How a task asks a decoder-only model for its target.

    Args:
        instruction: The request put before the source (may be formatted with the task's prefix fields).
        answer_prefix: What a plain prompt (no chat template) ends with before the target, e.g. "English:".
    """

    instruction: str
    answer_prefix: str


def uses_prompts(model_config: PretrainedConfig | None) -> bool:
    """Whether a model takes the decoder-only formulation: it has a config and no encoder-decoder structure."""
    return model_config is not None and not getattr(model_config, "is_encoder_decoder", False)


def context_length(model_config: PretrainedConfig | None) -> int | None:
    """The most positions the model can attend to, from its config (None when it does not say)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_pieces(
    tokenizer: PreTrainedTokenizerBase, instruction: str, answer_prefix: str
) -> tuple[list[int], list[int]]:
    """The token ids before and after the source in a prompt: the chat template's, or the plain prompt's."""
    content = f"{instruction}\n\n{PLACEHOLDER}" if instruction else PLACEHOLDER
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
    else:
        text = f"{content}\n\n{answer_prefix}" if answer_prefix else f"{content}\n"
    before, after = text.split(PLACEHOLDER)
    encode = lambda piece: tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []  # noqa: E731
    return encode(before), encode(after)


def target_text(tokenizer: PreTrainedTokenizerBase, target: str) -> str:
    """A plain prompt ends with its answer prefix ("English:"), so the target starts after a space; a chat
    template's assistant turn starts on its own."""
    return target if getattr(tokenizer, "chat_template", None) else " " + target


def prompt_examples(
    sources: list[str],
    targets: list[str],
    tokenizer: PreTrainedTokenizerBase,
    model_config: PretrainedConfig | None,
    *,
    instruction: str,
    answer_prefix: str,
    max_source_length: int,
    max_target_length: int,
    max_length: int | None = None,
    keep_source_end: bool = False,
) -> dict[str, list[list[int]]]:
    """`input_ids`, `attention_mask` and `labels` of `prompt + target + eos` for every pair, labels on the target
    and its EOS only (see the module docstring).

    `max_length` bounds a whole example as well: the target is cut to fit first, then the source gets the room
    left (its last tokens with `keep_source_end`, as a dialogue keeps the turns nearest the response).

    Raises:
        TaskInputError: the tokenizer has no EOS token, `max_length` leaves no room for the template, or an example
            is longer than the model's context.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TaskInputError(
            f"{type(tokenizer).__name__} has no EOS token: a decoder-only formulation ends every target with one."
        )
    before, after = prompt_pieces(tokenizer, instruction, answer_prefix)
    template = len(before) + len(after)
    if max_length is not None and max_length < template + 2:
        raise TaskInputError(
            f"max_seq_length {max_length} leaves no room for a source and a target: the prompt template alone takes "
            f"{template} tokens. Raise max_seq_length in the data section of the run config."
        )
    source_ids = tokenizer(sources, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer([target_text(tokenizer, t) for t in targets], add_special_tokens=False)["input_ids"]
    limit = context_length(model_config)
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for source, target in zip(source_ids, target_ids, strict=True):
        target_room = (
            max_target_length - 1 if max_length is None else min(max_target_length, max_length - template) - 1
        )
        answer = [*target[:target_room], eos]
        room = max_source_length if max_length is None else min(max_source_length, max_length - template - len(answer))
        kept = (source[len(source) - room :] if room > 0 else []) if keep_source_end else source[:room]
        prompt = [*before, *kept, *after]
        if limit is not None and len(prompt) + len(answer) > limit:
            raise TaskInputError(
                f"A prompt and its target take {len(prompt) + len(answer)} tokens, more than the model's context of "
                f"{limit}. Lower max_source_length (now {max_source_length}) or max_target_length (now "
                f"{max_target_length}) in the data section of the run config."
            )
        out["input_ids"].append(prompt + answer)
        out["attention_mask"].append([1] * (len(prompt) + len(answer)))
        out["labels"].append([-100] * len(prompt) + answer)
    return out


def prompt_of(input_ids: list[int], labels: list[int], attention_mask: list[int] | None = None) -> list[int]:
    """The prompt of an example: its tokens before the first labelled one, padding (mask 0) left out."""
    start = next((i for i, label in enumerate(labels) if label != -100), len(labels))
    if attention_mask is None:
        return list(input_ids[:start])
    return [token for token, keep in zip(input_ids[:start], attention_mask[:start], strict=True) if keep]
