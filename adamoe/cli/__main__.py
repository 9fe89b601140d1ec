"""`python -m adamoe.cli` (and `accelerate launch -m adamoe.cli finetune ...`)."""

from . import main

main()
