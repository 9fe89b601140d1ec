"""The speed and memory benchmark (`adamoe bench`, `python -m adamoe.bench`): does a skipped expert become
saved training time? `config.py` says what is measured (torch-free, so the CLI's flags come from it),
`harness.py` how, `layer.py`, `train.py` and `native.py` are the three sections and `report.py` runs them and
writes the tables (`run_benchmark`).
"""
