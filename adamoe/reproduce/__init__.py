"""Reproducing the paper's tables: the smoke kit, the experiment files, the runner and the table generator."""
