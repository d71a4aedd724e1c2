"""Validation experiments of issue 6 §2–3 (docs/validation.md): particle-solver transitions, grokking with and
without fpmon-triggered resets, double descent, Theorems 3 and 4. Each module is a command
(``python -m benchmarks.validation.<name> [--quick]``) that prints a table and writes PNG plots and a JSON of
its numbers to ``docs/validation/``.
"""
