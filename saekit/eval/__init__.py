"""Evaluation.

metrics            reconstruction/sparsity/downstream metrics, each defined once
synthetic          generators with known features (flat, tree, absorption toy)
synthetic_metrics  ground-truth scores: MMCS, Hungarian matching, absorption, Gram distortion
"""
