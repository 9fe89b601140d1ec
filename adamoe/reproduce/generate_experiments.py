"""`python -m adamoe.reproduce.generate_experiments`: rewrite adamoe/experiments/ from the rule in `experiments.py`.

Run it after changing the rule (or a packaged config the rule reads) and commit the files it writes;
`tests/reproduce/test_reproduce_experiments.py` fails until the committed files match the rule again.
"""

from __future__ import annotations

from .experiments import EXPERIMENTS_DIR, write_experiment_files

if __name__ == "__main__":
    for written in write_experiment_files():
        print(written.relative_to(EXPERIMENTS_DIR.parent.parent))
