"""The decoder-only formulation of the generation tasks (adamoe/tasks/prompting.py): prompts, labels, lengths.

The tokenizer is byte level with no merges, so token ids and text map one to one: each feature is checked against
the text it must spell, built here independently (the plain prompt by hand, the chat prompt by the tokenizer's
own `apply_chat_template`).
"""

import pytest
from datasets import Dataset, DatasetDict
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, T5Config

from adamoe.tasks import DataArgs, TaskInputError, get_task
from adamoe.tasks.prompting import prompt_of

PAIRS = [("Guten Morgen.", "Good morning."), ("Das Haus ist rot.", "The house is red.")]
CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def translation_rows(pairs=PAIRS):
    rows = Dataset.from_dict({"translation": [{"de": de, "en": en} for de, en in pairs]})
    return DatasetDict({"train": rows, "validation": rows})


def spelled(tokenizer, ids):
    return tokenizer.decode([i for i in ids if i != -100])


def test_a_plain_prompt_spells_instruction_source_and_answer_prefix(gpt2_tokenizer):
    prepared = get_task("wmt19").preprocess(translation_rows(), gpt2_tokenizer, DataArgs(), GPT2Config())
    eos = gpt2_tokenizer.eos_token
    for (de, en), feature in zip(PAIRS, prepared.train, strict=True):
        prompt = f"Translate this German text into English.\n\n{de}\n\nEnglish:"
        assert spelled(gpt2_tokenizer, feature["input_ids"]) == f"{prompt} {en}{eos}"
        assert spelled(gpt2_tokenizer, feature["labels"]) == f" {en}{eos}"  # the loss is on the target only
        assert spelled(gpt2_tokenizer, prompt_of(feature["input_ids"], feature["labels"])) == prompt


def test_a_chat_template_makes_the_prompt_when_the_tokenizer_has_one(gpt2_tokenizer):
    gpt2_tokenizer.chat_template = CHAT
    gpt2_tokenizer.eos_token = "<|endoftext|>"
    prepared = get_task("cnn_dailymail").preprocess(
        DatasetDict({"train": Dataset.from_dict({"article": ["A long story."], "highlights": ["Short."]})}),
        gpt2_tokenizer,
        DataArgs(),
        LlamaConfig(),
    )
    feature = prepared.train[0]
    messages = [{"role": "user", "content": "Summarize this news article in a few sentences.\n\nA long story."}]
    prompt = gpt2_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert spelled(gpt2_tokenizer, prompt_of(feature["input_ids"], feature["labels"])) == prompt
    assert spelled(gpt2_tokenizer, feature["labels"]) == "Short.<|endoftext|>"


def test_lengths_cut_the_source_inside_the_prompt_and_the_target(gpt2_tokenizer):
    data = DataArgs(max_source_length=4, max_target_length=3)
    feature = get_task("wmt19").preprocess(translation_rows(), gpt2_tokenizer, data, GPT2Config()).train[1]
    assert spelled(gpt2_tokenizer, prompt_of(feature["input_ids"], feature["labels"])).endswith("\n\nDas \n\nEnglish:")
    assert spelled(gpt2_tokenizer, feature["labels"]) == " T" + gpt2_tokenizer.eos_token  # 2 tokens and the EOS


def test_a_dialogue_with_a_chat_template_keeps_the_turns_nearest_the_response(gpt2_tokenizer):
    gpt2_tokenizer.chat_template = CHAT
    raw = DatasetDict({"train": Dataset.from_dict({"dialogue": [["first turn", "the reply"]]})})
    feature = get_task("soda").preprocess(raw, gpt2_tokenizer, DataArgs(max_seq_length=64), LlamaConfig()).train[0]
    assert len(feature["input_ids"]) == 64  # the template (50 bytes), 4 of the context, the reply and EOS
    assert spelled(gpt2_tokenizer, feature["labels"]) == "the reply" + gpt2_tokenizer.eos_token
    prompt = spelled(gpt2_tokenizer, prompt_of(feature["input_ids"], feature["labels"]))
    assert prompt.endswith("turn<|im_end|>\n<|im_start|>assistant\n") and "first" not in prompt  # oldest cut first


def test_a_prompt_longer_than_the_context_is_refused(gpt2_tokenizer):
    with pytest.raises(TaskInputError, match="more than the model's context of 32.*max_source_length"):
        get_task("wmt19").preprocess(translation_rows(), gpt2_tokenizer, DataArgs(), GPT2Config(n_positions=32))


def test_an_encoder_decoder_model_keeps_the_seq2seq_formulation(gpt2_tokenizer):
    feature = get_task("wmt19").preprocess(translation_rows(), gpt2_tokenizer, DataArgs(), T5Config()).train[0]
    # The source alone (with T5's task prefix) as encoder input, the target as labels.
    assert spelled(gpt2_tokenizer, feature["input_ids"]) == "translate German to English: Guten Morgen."
    assert -100 not in feature["labels"]


def test_the_head_class_follows_the_model(gpt2_tokenizer):
    assert get_task("wmt19").model_class_for(LlamaConfig()) is AutoModelForCausalLM
    assert get_task("wmt19").model_class_for(T5Config()).__name__ == "AutoModelForSeq2SeqLM"
    with pytest.raises(TaskInputError, match="wikitext needs AutoModelForCausalLM.*t5.*causal language model"):
        get_task("wikitext").model_class_for(T5Config())
