"""The table of tiny architectures that the core tests are parametrised over (one row per supported family)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    FSMTConfig,
    FSMTForConditionalGeneration,
    Gemma2Config,
    Gemma2ForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    M2M100Config,
    M2M100ForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    MBartConfig,
    MBartForConditionalGeneration,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    MT5Config,
    MT5ForConditionalGeneration,
    OlmoeConfig,
    OlmoeForCausalLM,
    PegasusConfig,
    PegasusForConditionalGeneration,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
    UMT5Config,
    UMT5ForConditionalGeneration,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from adamoe.smoke.models import UNIT_SIZE

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VOCAB = 100


@dataclass(frozen=True)
class Arch:
    """One row of the architecture table: how to build a tiny model and feed it."""

    name: str
    model_class: type
    config: Any
    seq2seq: bool = False
    causal: bool = False

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        # A copy: moeify writes into the config, and the table's configs are shared by all tests.
        return self.model_class(copy.deepcopy(self.config)).eval()

    def inputs(self, batch: int = 3, seq_len: int = 7, seed: int = 1, padded: bool = True) -> dict[str, torch.Tensor]:
        """A batch with left-aligned padding in the first sample (and in its labels for seq2seq)."""
        g = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(3, VOCAB, (batch, seq_len), generator=g)
        attention_mask = torch.ones(batch, seq_len, dtype=torch.long)
        if padded:
            attention_mask[0, seq_len - 2 :] = 0
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.seq2seq:
            out["decoder_input_ids"] = torch.randint(3, VOCAB, (batch, seq_len - 2), generator=g)
        return out


# The sizes are the offline kit's unit-test size (adamoe/smoke/models.py), in each family's spelling.
_COMMON_BART = {"vocab_size": VOCAB, **UNIT_SIZE.bart()}


def _t5_config(feed_forward_proj: str, config_class: type = T5Config) -> T5Config:
    """T5 v1.0 ("relu") or v1.1/Flan ("gated-gelu"); mT5 and UMT5 take the same fields."""
    return config_class(
        vocab_size=VOCAB,
        **UNIT_SIZE.t5(),
        feed_forward_proj=feed_forward_proj,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


# BERT-shaped encoders (BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DeBERTa-v2).
_COMMON_BERT = {"vocab_size": VOCAB, **UNIT_SIZE.bert()}
# Llama-family decoders. mlp_bias (Llama only) puts biases on both halves of the gated FFN, so one row
# checks that form too; pad_token_id stays inside the tiny vocabulary.
_COMMON_DECODER = {
    **_COMMON_BERT,
    "num_key_value_heads": 1,
    "head_dim": UNIT_SIZE.hidden // UNIT_SIZE.heads,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
_BART_TOKENS = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)


def _decoder(config_class: type, **overrides: Any) -> Any:
    return config_class(**{**_COMMON_DECODER, **overrides})


ARCHITECTURES = [
    Arch("bert", BertForSequenceClassification, BertConfig(**_COMMON_BERT)),
    Arch("roberta", RobertaForSequenceClassification, RobertaConfig(**_COMMON_BERT)),
    Arch(
        "xlm-roberta",
        XLMRobertaForSequenceClassification,
        XLMRobertaConfig(**_COMMON_BERT),
    ),
    Arch("electra", ElectraForSequenceClassification, ElectraConfig(embedding_size=16, **_COMMON_BERT)),
    Arch(
        "deberta-v2",
        DebertaV2ForSequenceClassification,
        DebertaV2Config(relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"], **_COMMON_BERT),
    ),
    Arch(
        "distilbert",
        DistilBertForSequenceClassification,
        DistilBertConfig(
            vocab_size=VOCAB,
            dim=UNIT_SIZE.hidden,
            n_layers=UNIT_SIZE.layers,
            n_heads=UNIT_SIZE.heads,
            hidden_dim=UNIT_SIZE.ffn,
            max_position_embeddings=UNIT_SIZE.positions,
        ),
    ),
    Arch(
        "modernbert",
        ModernBertForSequenceClassification,
        # Biased, so the fused Wi splits its bias too; every other layer global, as in the released models.
        ModernBertConfig(
            **_COMMON_BERT,
            local_attention=8,
            global_attn_every_n_layers=2,
            mlp_bias=True,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
        ),
    ),
    Arch(
        "gpt2",
        GPT2LMHeadModel,
        GPT2Config(vocab_size=VOCAB, **UNIT_SIZE.gpt2()),
        causal=True,
    ),
    Arch(
        "t5",
        T5ForConditionalGeneration,
        _t5_config("relu"),
        seq2seq=True,
    ),
    Arch(
        "t5-gated",
        T5ForConditionalGeneration,
        _t5_config("gated-gelu"),
        seq2seq=True,
    ),
    Arch("llama", LlamaForCausalLM, _decoder(LlamaConfig, mlp_bias=True), causal=True),
    Arch("mistral", MistralForCausalLM, _decoder(MistralConfig, sliding_window=4), causal=True),
    Arch("qwen2", Qwen2ForCausalLM, _decoder(Qwen2Config), causal=True),
    Arch("qwen3", Qwen3ForCausalLM, _decoder(Qwen3Config), causal=True),
    Arch("gemma", GemmaForCausalLM, _decoder(GemmaConfig, hidden_act="gelu_pytorch_tanh"), causal=True),
    Arch(
        "gemma2",
        Gemma2ForCausalLM,
        _decoder(Gemma2Config, hidden_activation="gelu_pytorch_tanh", sliding_window=4, final_logit_softcapping=30.0),
        causal=True,
    ),
    Arch("phi3", Phi3ForCausalLM, _decoder(Phi3Config, original_max_position_embeddings=64), causal=True),
    Arch(
        "mt5",
        MT5ForConditionalGeneration,
        _t5_config("gated-gelu", MT5Config),
        seq2seq=True,
    ),
    Arch(
        "umt5",
        UMT5ForConditionalGeneration,
        _t5_config("gated-gelu", UMT5Config),
        seq2seq=True,
    ),
    Arch("bart", BartForConditionalGeneration, BartConfig(**_COMMON_BART), seq2seq=True),
    Arch("mbart", MBartForConditionalGeneration, MBartConfig(**_COMMON_BART, **_BART_TOKENS), seq2seq=True),
    Arch(
        "marian",
        MarianMTModel,
        MarianConfig(**_COMMON_BART, **{**_BART_TOKENS, "pad_token_id": 1, "decoder_start_token_id": 1}),
        seq2seq=True,
    ),
    Arch(
        "pegasus",
        PegasusForConditionalGeneration,
        PegasusConfig(**_COMMON_BART, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
        seq2seq=True,
    ),
    Arch(
        "m2m100",
        M2M100ForConditionalGeneration,
        M2M100Config(**_COMMON_BART, **_BART_TOKENS),
        seq2seq=True,
    ),
    Arch(
        "fsmt",
        FSMTForConditionalGeneration,
        FSMTConfig(
            langs=["de", "en"],
            src_vocab_size=VOCAB,
            tgt_vocab_size=VOCAB,
            **{k: v for k, v in _COMMON_BART.items() if k != "vocab_size"},
            pad_token_id=1,
            eos_token_id=2,
            bos_token_id=0,
            decoder_start_token_id=2,
        ),
        seq2seq=True,
    ),
]


GENERATORS = [a for a in ARCHITECTURES if a.causal or a.seq2seq]

# Native MoE decoders, which keep their own experts: a table of their own, since every row of ARCHITECTURES
# is upcycled with a chosen expert count. Each covers one renormalisation convention or layout: Mixtral always
# renormalises, Qwen2-MoE does not and adds a shared expert (and keeps a dense MLP in layer 0 here), Qwen3-MoE
# renormalises with norm_topk_prob, OLMoE does not.
_MOE_DECODER = {**_COMMON_DECODER, "intermediate_size": 48}
NATIVE_MOES = [
    Arch(
        "mixtral",
        MixtralForCausalLM,
        MixtralConfig(**_MOE_DECODER, num_local_experts=8, num_experts_per_tok=2),
        causal=True,
    ),
    Arch(
        "qwen2_moe",
        Qwen2MoeForCausalLM,
        Qwen2MoeConfig(
            **_MOE_DECODER,
            num_experts=6,
            num_experts_per_tok=4,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            norm_topk_prob=False,
            mlp_only_layers=[0],
        ),
        causal=True,
    ),
    Arch(
        "qwen3_moe",
        Qwen3MoeForCausalLM,
        Qwen3MoeConfig(
            **_MOE_DECODER, num_experts=8, num_experts_per_tok=4, moe_intermediate_size=24, norm_topk_prob=True
        ),
        causal=True,
    ),
    Arch(
        "olmoe",
        OlmoeForCausalLM,
        OlmoeConfig(
            **{k: v for k, v in _MOE_DECODER.items() if k != "head_dim"}, num_experts=8, num_experts_per_tok=3
        ),
        causal=True,
    ),
]


def arch_by_name(name: str) -> Arch:
    return next(a for a in ARCHITECTURES + NATIVE_MOES if a.name == name)


def tiny_llama(moe: Any, seed: int = 0) -> Any:
    """A 2-layer Llama (vocabulary 40, hidden 16) patched with `moe`: the routing-rule tests' model."""
    import adamoe

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    return adamoe.moeify(LlamaForCausalLM(config), moe)
