"""Evaluation of one dictionary; `saekit/report/` aggregates a run's results above it.

evaluate           `saekit.evaluate`: the core metrics on tensors, or on a model's text
core               reconstruction, sparsity and CE/KL with the dictionary spliced in
metrics            each metric defined once (the trainer logs the same FVU and density)
feature_views      each feature's input and output views (as in the SNMF paper)
synthetic_metrics  ground-truth scores: MMCS, Hungarian matching, absorption, Gram distortion
plots              PNG curves and density histograms
"""
