"""What each compared method brings beyond the common adversarial step, one module per method.

Selection rules, extra losses and extra passes live here; the training step, the input pipeline,
evaluation and pseudo-labels stay shared, so every method runs on the same machinery and any of
them can be combined with SEAT norms (`model.norm_mode`).
"""
