"""Benchmarks of resumable against its own floors and against DBOS: ``python -m benchmarks``.

Every row of the table is a ratio measured in the same run against its baseline:
medians over repeats, warm-up excluded, with the noise (min and max). BENCHMARKS.md
explains each row and holds the last full run.
"""
