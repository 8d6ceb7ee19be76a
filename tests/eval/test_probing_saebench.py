"""saekit's sparse probing against SAEBench's own functions (sae-bench 0.6.0) on the same model,
tokens, SAE and splits.

SAEBench pieces used as the reference: `activation_collection.get_llm_activations` (BOS, EOS
and padding zeroed), `create_meaned_model_activations` and `get_sae_meaned_activations` (the
pooling), `probe_training.get_top_k_mean_diff_mask` + `apply_topk_mask_reduce_dim` (the
ranking) and `train_sklearn_probe` (the probe). The SAE is saekit's save loaded by
`sae_lens.SAE.load_from_disk`, as SAEBench would load it.

Tolerances: pooled activations and codes within 1e-5 (float32 sums in a different order); the
selected latents identical; the test accuracies equal (the same inputs reach the same
scikit-learn solver, so any difference is a real divergence of definitions).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saekit.data.tasks import ProbingTask, balanced_split, tokenize_texts
from saekit.data.text import special_ids
from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.eval.probing import (
    RESIDUAL,
    ProbingConfig,
    evaluate_probing,
    pooled_features,
    top_k_by_mean_difference,
)
from saekit.models.hooks import HookedModel

pytest.importorskip("sae_bench")
import sae_lens  # noqa: E402
from sae_bench.evals.sparse_probing import probe_training  # noqa: E402
from sae_bench.sae_bench_utils import activation_collection  # noqa: E402

HOOK = "blocks.1.hook_resid_post"
CONTEXT = 24
KS = (1, 2, 5, 10)


def _task() -> ProbingTask:
    """Texts of the conftest's words; positive when the text mentions a cat."""
    rng = np.random.default_rng(0)
    words = ["the", "sat", "on", "a", "mat", "dogs", "ran", "far", "birds", "sang", "over"]
    texts, labels = [], []
    for i in range(120):
        chosen = list(rng.choice(words, size=rng.integers(2, 5)))
        if i % 2:
            chosen.insert(int(rng.integers(0, len(chosen) + 1)), "cat")
        texts.append(" ".join(chosen))
        labels.append(i % 2)
    return ProbingTask("cat", "test", tuple(texts), np.array(labels))


@pytest.fixture
def probing_sae(tmp_path):
    sae = build_dictionary(SAEConfig(method="relu", d_sae=64, seed=3, hook=HOOK), 16)
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)
    return sae, sae_lens.SAE.load_from_disk(sae.save(tmp_path / "sae"))


def _padded(tokens: list[list[int]], pad: int) -> torch.Tensor:
    out = torch.full((len(tokens), CONTEXT), pad, dtype=torch.long)
    for i, ids in enumerate(tokens):
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def _saebench_pooled(tl_model, sae_lens_sae, tokens_NT):
    acts_BLD = activation_collection.get_llm_activations(
        tokens_NT, tl_model, 16, 1, HOOK, mask_bos_pad_eos_tokens=True, show_progress=False
    )
    resid = activation_collection.create_meaned_model_activations({"t": acts_BLD})["t"]
    codes = activation_collection.get_sae_meaned_activations({"t": acts_BLD}, sae_lens_sae, 16)
    return resid, codes["t"]


def _saebench_accuracy(x_tr, y_tr, x_te, y_te, k):
    y_tr_t, y_te_t = torch.from_numpy(y_tr), torch.from_numpy(y_te)
    mask_D = probe_training.get_top_k_mean_diff_mask(x_tr, y_tr_t, k)
    x_tr_k = probe_training.apply_topk_mask_reduce_dim(x_tr, mask_D)
    x_te_k = probe_training.apply_topk_mask_reduce_dim(x_te, mask_D)
    _, acc = probe_training.train_sklearn_probe(x_tr_k, y_tr_t, x_te_k, y_te_t)
    return set(torch.nonzero(~mask_D).flatten().tolist()), acc


def test_pooling_equals_saebench(tl_model, tokenizer, probing_sae):
    sae, sae_lens_sae = probing_sae
    task = _task()
    tokens = tokenize_texts(tokenizer, list(task.texts), CONTEXT)
    ours = pooled_features(HookedModel(tl_model, tokenizer), HOOK, {"sae": sae}, tokens,
                           special_ids(tokenizer), batch_size=7)  # fmt: skip
    resid, codes = _saebench_pooled(tl_model, sae_lens_sae, _padded(tokens, tokenizer.pad_token_id))
    torch.testing.assert_close(ours[RESIDUAL], resid, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["sae"], codes, rtol=1e-5, atol=1e-5)
    assert (codes > 0).float().mean() > 0.05  # the codes are not all zero


def test_accuracies_equal_saebench_on_the_same_split(tl_model, tokenizer, probing_sae):
    sae, sae_lens_sae = probing_sae
    task = _task()
    cfg = ProbingConfig(n_train=80, n_test=40, ks=KS, context_size=CONTEXT, batch_size=8,
                        controls=False)  # fmt: skip
    model = HookedModel(tl_model, tokenizer)
    ours = evaluate_probing(model, {"sae": sae}, HOOK, cfg, tasks=[task], progress=False)

    train, test = balanced_split(task.labels, cfg.n_train, cfg.n_test, cfg.seed)
    order = np.concatenate([train, test])
    tokens = tokenize_texts(tokenizer, [task.texts[i] for i in order], CONTEXT)
    resid, codes = _saebench_pooled(tl_model, sae_lens_sae, _padded(tokens, tokenizer.pad_token_id))
    y = task.labels[order]
    n = len(train)
    for name, x in ((RESIDUAL, resid), ("sae", codes)):
        for k in KS:
            chosen, acc = _saebench_accuracy(x[:n], y[:n], x[n:], y[n:], k)
            assert set(top_k_by_mean_difference(x[:n], y[:n], k).tolist()) == chosen, (name, k)
            assert ours["per_task"][name][f"k={k}"] == [acc], (name, k)
    accs = [ours["mean"]["sae"][f"k={k}"] for k in KS]
    assert max(accs) - min(accs) > 0.05  # k matters: the comparison is not of constants
