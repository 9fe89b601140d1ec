"""`data.no_repeat_ngram_size` (summarisation's guard against greedy loops) reaches the evaluation's generation and
is saved with the run's model. On a decoder-only LLM, the form SmolLM2 runs the generation tasks in; the
encoder-decoder path reads the same model generation config (the smoke kit's tiny BART answers EOS at once from its
random start, so it has no loop to prevent)."""

import json

import pytest
from tiny_run import write_decoder_folder

import adamoe.trainer.generation as generation
from adamoe.run.recipe import FinetuneConfig, finetune
from adamoe.smoke import one_thread


def repeated_bigrams(row, pad):
    ids = [t for t in row if t != pad]
    pairs = list(zip(ids, ids[1:], strict=False))
    return len(pairs) - len(set(pairs))


def generated_ids(smoke_kit, tmp_path, monkeypatch, no_repeat):
    """Every row the evaluation generated (token ids), and the run's saved generation config."""
    smoke = smoke_kit["cnn_dailymail"]
    out = tmp_path / f"run-{no_repeat}"
    config = smoke.run_config(output_dir=str(out))
    folder = tmp_path / "llama"
    if not folder.exists():  # the decoder-only prompt form of the same task
        write_decoder_folder("llama", smoke_kit["wikitext"].model_dir, folder)
        settings = json.loads((folder / "config.json").read_text())  # rotary positions: room for the prompt
        (folder / "config.json").write_text(json.dumps({**settings, "max_position_embeddings": 256}))
    config["model"] = str(folder)
    config["training"] |= {"max_steps": 1, "save_strategy": "no", "learning_rate": 1e-9}  # its random start
    config["data"] |= {"max_eval_samples": 8, "max_target_length": 24, "no_repeat_ngram_size": no_repeat}
    rows, generate = [], generation.generate_continuations

    def recording(model, prompts, *, pad, **kwargs):
        out = generate(model, prompts, pad=pad, **kwargs)
        rows.extend((row, pad) for row in out.tolist())
        return out

    monkeypatch.setattr(generation, "generate_continuations", recording)
    with one_thread():
        finetune(FinetuneConfig.from_dict(config))
    return rows, json.loads((out / "generation_config.json").read_text())


@pytest.mark.slow
def test_no_repeat_ngram_size_shapes_the_evaluations_generation_and_is_saved(smoke_kit, tmp_path, monkeypatch):
    free, saved = generated_ids(smoke_kit, tmp_path, monkeypatch, None)
    assert len(free) == 8 and saved.get("no_repeat_ngram_size") in (None, 0)
    # The tiny random model loops: the setting has something to prevent.
    assert sum(repeated_bigrams(row, pad) for row, pad in free) > 0
    guarded, saved = generated_ids(smoke_kit, tmp_path, monkeypatch, 2)
    assert saved["no_repeat_ngram_size"] == 2
    assert len(guarded) == 8 and all(repeated_bigrams(row, pad) == 0 for row, pad in guarded)
