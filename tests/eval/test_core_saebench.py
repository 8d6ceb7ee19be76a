"""saekit's core metrics against SAEBench's core eval (`sae_bench.evals.core.main.run_evals`,
sae-bench 0.6.0) on the same SAE (saekit's save loaded by `sae_lens.SAE.load_from_disk`), the
same model and the same token windows.

Equal by definition (asserted to 1e-5 relative): L0, CE without/with the SAE, CE-loss score,
KL with the SAE and the zero ablation, the KL score, cosine, l2 ratio, relative reconstruction
bias (one eval batch: SAEBench averages it per batch). On windows with BOS, SAEBench (given
`ignore_tokens={BOS}` and `exclude_special_tokens_from_reconstruction`) splices the SAE at
ordinary tokens as saekit does, but its zero ablation zeroes BOS too: there the ablation
baseline, and so the CE-loss score, differ (asserted, and checked against a hand ablation).

Different conventions, each checked against a hand computation on the same activations:
- mse: SAEBench divides every token's squared error by the batch's token count before the mean,
  so its mse is saekit's (Σ_d over d_in, mean over tokens) / tokens per batch;
- explained_variance: SAEBench 0.6.0 computes 1 − E‖x − x̂‖² / (E‖x‖² − (E‖x‖²/d_in)²): no mean
  is subtracted (its per-dimension term is the mean of x², squared after averaging over the
  dimensions), so it nearly measures variance about zero; saekit's is 1 − Σ‖x − x̂‖²/Σ‖x − x̄‖².
"""

from __future__ import annotations

import pytest
import torch

from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.eval.core import evaluate_core
from saekit.report.saebench_core import core_config

pytest.importorskip("sae_bench")
import sae_lens  # noqa: E402
from sae_bench.evals.core.main import run_evals  # noqa: E402
from sae_bench.sae_bench_utils.general_utils import load_and_format_sae  # noqa: E402

HOOK = "blocks.0.hook_resid_post"
BOS = 0
T = 24  # tokens per window of the eval conftest
REL = 1e-5


def close(ours: float, theirs: float, rel: float = REL) -> bool:
    return abs(ours - theirs) <= rel * abs(theirs) + 1e-7


def saebench_metrics(tl, sae_dir, store, ignore: set[int]) -> dict[str, float]:
    sae = sae_lens.SAE.load_from_disk(sae_dir)
    sae.cfg.metadata.model_name = "eval-tl"  # SAEBench requires one; this save records none
    _, sae, _ = load_and_format_sae("saekit", sae, "cpu")
    config = core_config(store.store_batch_size_prompts, 1)  # one batch (see the docstring)
    metrics, _ = run_evals(sae, store, tl, config, ignore_tokens=ignore)
    return {k: v for group in metrics.values() for k, v in group.items()}


def relu_sae():
    sae = build_dictionary(SAEConfig(method="relu", d_sae=48, seed=3, hook=HOOK), 16)
    with torch.no_grad():
        sae.b_enc.fill_(-0.2)
    return sae


@torch.no_grad()
def hand_activations(tl, windows_NT, mask_NT, sae):
    _, cache = tl.run_with_cache(windows_NT, names_filter=[HOOK])
    x_ND = cache[HOOK][mask_NT].double()
    return x_ND, sae(x_ND.float()).double()


def test_agrees_with_saebench_on_windows_without_special_tokens(
    eval_model, eval_tl, eval_windows_no_bos, tmp_path, token_store
):
    sae = relu_sae()
    sae.save(tmp_path / "sae")
    windows_NT = eval_windows_no_bos.get(0, len(eval_windows_no_bos))
    ours = evaluate_core(eval_model, sae, HOOK, eval_windows_no_bos, n_windows=len(windows_NT),
                         model_batch_size=3, progress=False)  # fmt: skip
    theirs = saebench_metrics(eval_tl, tmp_path / "sae", token_store(windows_NT), set())
    same = {
        "l0_mean": "l0",
        "cosine": "cossim",
        "l2_ratio": "l2_ratio",
        "relative_reconstruction_bias": "relative_reconstruction_bias",
        "ce_clean": "ce_loss_without_sae",
        "ce_sae": "ce_loss_with_sae",
        "ce_zero": "ce_loss_with_ablation",
        "ce_loss_score": "ce_loss_score",
        "kl_sae": "kl_div_with_sae",
        "kl_zero": "kl_div_with_ablation",
    }
    for key, theirs_key in same.items():
        assert close(ours[key], theirs[theirs_key]), (key, ours[key], theirs[theirs_key])
    assert close((ours["kl_zero"] - ours["kl_sae"]) / ours["kl_zero"], theirs["kl_div_score"])
    assert 0.05 < ours["ce_loss_score"] < 0.99 and ours["fvu"] > 0.05  # a non-trivial SAE

    # The two conventions that differ, each against a hand computation.
    x, x_hat = hand_activations(eval_tl, windows_NT, torch.ones_like(windows_NT, dtype=bool), sae)
    n, d = x.shape
    sq_err, sq_norm = (x - x_hat).pow(2).sum(-1).mean(), x.pow(2).sum(-1).mean()
    assert close(theirs["mse"], float(sq_err) / n) and close(ours["mse"], float(sq_err))
    saebench_ev = 1 - sq_err / (sq_norm - (sq_norm / d) ** 2)
    centred_ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert close(theirs["explained_variance"], float(saebench_ev), rel=1e-4)
    assert close(ours["explained_variance"], float(centred_ev))
    assert abs(theirs["explained_variance"] - ours["explained_variance"]) > 0.01  # they differ


def test_with_bos_only_the_ablation_baseline_differs(
    eval_model, eval_tl, eval_windows, tmp_path, token_store
):
    sae = relu_sae()
    sae.save(tmp_path / "sae")
    windows_NT = eval_windows.get(0, len(eval_windows))
    ours = evaluate_core(eval_model, sae, HOOK, eval_windows, n_windows=len(windows_NT),
                         model_batch_size=4, progress=False)  # fmt: skip
    theirs = saebench_metrics(eval_tl, tmp_path / "sae", token_store(windows_NT), {BOS})
    for key, theirs_key in {
        "l0_mean": "l0",
        "ce_clean": "ce_loss_without_sae",
        "ce_sae": "ce_loss_with_sae",
        "kl_sae": "kl_div_with_sae",
    }.items():
        assert close(ours[key], theirs[theirs_key]), (key, ours[key], theirs[theirs_key])
    with torch.no_grad():
        loss_BT = eval_tl.run_with_hooks(
            windows_NT, return_type="loss", loss_per_token=True,
            fwd_hooks=[(HOOK, lambda act, hook: torch.zeros_like(act))],
        )  # fmt: skip
    ordinary = windows_NT[:, :-1] != BOS
    assert close(theirs["ce_loss_with_ablation"], float(loss_BT[ordinary].mean()))
    assert not close(ours["ce_zero"], theirs["ce_loss_with_ablation"], rel=1e-3)


def test_eval_saebench_core_runs_saebench_in_batches_on_the_same_windows(
    eval_model, eval_tl, eval_windows_no_bos, tmp_path, token_store
):
    """`saekit eval --saebench-core` (report/saebench_core.py) batches SAEBench's eval by 5
    windows here (≤ 8, dividing 10); the metrics SAEBench averages over equal batches equal one
    batch of all windows, and its mse scales with the tokens per batch."""
    from saekit.report.saebench_core import saebench_core, side_by_side

    sae = relu_sae()
    sae.save(tmp_path / "sae")
    n = len(eval_windows_no_bos)
    batched = saebench_core(eval_model, tmp_path / "sae", eval_windows_no_bos, n, "eval-tl")
    whole = saebench_metrics(eval_tl, tmp_path / "sae", token_store(
        eval_windows_no_bos.get(0, n)), set())  # fmt: skip
    for key in (
        "l0",
        "ce_loss_without_sae",
        "ce_loss_with_sae",
        "ce_loss_score",
        "kl_div_with_sae",
    ):
        assert close(batched[key], whole[key]), (key, batched[key], whole[key])
    assert batched["tokens_per_batch"] == 5 * T
    assert close(batched["mse"] * 5 * T, whole["mse"] * n * T)
    ours = evaluate_core(eval_model, sae, HOOK, eval_windows_no_bos, n_windows=n, progress=False)
    both = side_by_side(ours, batched)
    assert len(both) == 10 and both["ce_loss_score"]["saebench"] == batched["ce_loss_score"]
    assert close(both["ce_loss_score"]["saekit"], both["ce_loss_score"]["saebench"])
