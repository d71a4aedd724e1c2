"""The reward-hacking benchmark (docs/validation.md §1): record TRL GRPO runs once, run every detector offline.

``record.py`` records runs (texts, rewards, KL, entropy, lengths, embeddings) to run folders,
``detectors.py`` holds fpmon's monitor and the baselines behind one interface, ``evaluate.py`` builds the
table and plots from the recordings, ``run.py`` is the command line (``record``, ``evaluate``, or both).
"""
