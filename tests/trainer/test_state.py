"""`RunState`: adamoe's part of a checkpoint, written and read by one object, in the file formats older runs have."""

import json

import torch
from transformers import TrainerState

from adamoe.trainer import CURRICULUM_STATE_NAME, LOSS_STATE_NAME, TIMING_STATE_NAME, RunState


def _checkpoint(folder, step):
    folder.mkdir()
    TrainerState(global_step=step).save_to_json(str(folder / "trainer_state.json"))
    return folder


def test_a_saved_state_loads_back_whole(tmp_path):
    folder = _checkpoint(tmp_path / "checkpoint-7", 7)
    curriculum = {"vectors": torch.arange(6.0).reshape(3, 2), "epoch": 2}
    RunState(global_step=7, loss_sum=3.25, timing={"elapsed_s": 1.5}, curriculum=curriculum).save(folder)
    loaded = RunState.load(folder)
    assert (loaded.global_step, loaded.loss_sum, loaded.timing) == (7, 3.25, {"elapsed_s": 1.5})
    assert torch.equal(loaded.curriculum["vectors"], curriculum["vectors"]) and loaded.curriculum["epoch"] == 2


def test_the_files_keep_the_formats_older_runs_wrote(tmp_path):
    """An old run folder resumes: the same three names, the loss as JSON, the others as torch files."""
    folder = _checkpoint(tmp_path / "checkpoint-4", 4)
    torch.save({"epoch": 1}, folder / CURRICULUM_STATE_NAME)
    torch.save({"elapsed_s": 9.0}, folder / TIMING_STATE_NAME)
    (folder / LOSS_STATE_NAME).write_text(json.dumps({"loss_sum": 2.0, "global_step": 4}))
    loaded = RunState.load(folder)
    assert (loaded.global_step, loaded.loss_sum, loaded.timing, loaded.curriculum) == (
        4,
        2.0,
        {"elapsed_s": 9.0},
        {"epoch": 1},
    )


def test_a_checkpoint_without_adamoe_state_starts_it_afresh(tmp_path, caplog):
    """A checkpoint of the stock Trainer: the steps count, the rest starts empty, and the curriculum says so."""
    folder = _checkpoint(tmp_path / "checkpoint-3", 3)
    loaded = RunState.load(folder)
    assert (loaded.global_step, loaded.loss_sum, loaded.timing, loaded.curriculum) == (3, 0.0, None, None)

    class Sampler:
        def load_state_dict(self, state):
            raise AssertionError("nothing to load")

    loaded.restore_curriculum(Sampler(), str(folder))
    assert "starts afresh" in caplog.text
