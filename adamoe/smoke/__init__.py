"""The offline kit: tiny models and learnable data for every task, built in code in about a second.

It serves the CLI end-to-end tests, the analysis tests and `adamoe reproduce --scale smoke`: one kit, so a
pipeline change is exercised the same way everywhere (`kit.py`: the tasks' files and budgets; `data.py`: the
generated rows; `models.py`: the tokenizers and tiny models).

```python
from adamoe.smoke import write_smoke_kit

kit = write_smoke_kit("smoke")            # {task: SmokeTask(model_dir, train_file, validation_file, budget)}
```
"""

from .kit import BUDGETS, TASK_NAMES, SmokeBudget, SmokeTask, one_thread, write_smoke_kit, write_smoke_task

__all__ = ["BUDGETS", "TASK_NAMES", "SmokeBudget", "SmokeTask", "one_thread", "write_smoke_kit", "write_smoke_task"]
