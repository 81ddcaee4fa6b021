"""Quality control for generated samples: per-sample checks, near-duplicate answers, the partition gate.

`checks` and `near_duplicates` are pure Python; `gate` imports Great Expectations lazily.
"""
