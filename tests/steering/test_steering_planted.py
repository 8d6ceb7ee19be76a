"""The full protocol on a model with a planted direction: target discovery finds the planted
tokens, the direction wins at a measured (not assumed) fluency, random directions do not."""

from __future__ import annotations

import pytest

from saekit.steering.directions import Direction, random_directions, vocab_targets
from saekit.steering.protocol import SiteStudy, SteeringConfig
from saekit.steering.score import measure_curves, score_site, summarize


def _study(planted, n_random=6, select_kappa=True):
    model, v_D, hook = planted.model, planted.v_D, planted.hook
    cfg = SteeringConfig(
        prompts=planted.prompts,
        kl_targets=(0.1, 0.5),
        target_tokens=5,
        gen_tokens=8,
        select_kappa=select_kappa,
    )
    rand_KD = random_directions(v_D.shape[0], n_random, seed=3)
    vectors = [("planted", "vector", v_D)]
    vectors += [(f"random:{j}", "random", r) for j, r in enumerate(rand_KD)]
    # Every direction's targets come from its vocabulary projection, as in `steer compare`.
    dirs = [
        Direction(name, kind, hook, v, vocab_targets(model, hook, v, cfg.target_tokens))
        for name, kind, v in vectors
    ]
    return SiteStudy(model, hook, dirs, cfg)


def test_planted_direction_scores_high_and_random_does_not(steer_planted):
    study = _study(steer_planted)
    assert sorted(study.directions[0].targets) == steer_planted.ids  # discovered, not given
    results = score_site(study, measure_curves(study))
    planted = results["planted"]["selected"]
    print({k: planted[k] for k in ("kappa", "score", "concept_gain", "fluency", "null_mean", "z")})
    # Greedy continuations: at κ 0.1 they mostly stay on the successor chain (ΔNLL 0.023),
    # at κ 0.5 they leave it for the planted words (c 0.81, f 0.17), so κ* = 0.1.
    assert planted["kappa"] == 0.1
    assert planted["score"] == pytest.approx(0.726, abs=0.03)
    assert planted["concept_gain"] == pytest.approx(0.579, abs=0.03)
    assert planted["fluency"] == pytest.approx(0.978, abs=0.01)
    at_half = next(p for p in results["planted"]["curve"] if p["kappa"] == 0.5)
    assert at_half["concept_gain"] > 0.75 and at_half["fluency"] < 0.3
    # Random directions at the same KL, on the planted tokens: they flatten the next-token
    # distribution, which lifts every unlikely token a little (null 0.115 ± 0.137).
    assert planted["null_mean"] == pytest.approx(0.115, abs=0.03)
    assert planted["score"] > planted["null_max"] + 0.2
    assert planted["z"] == pytest.approx(4.45, abs=0.5)
    assert planted["sign_flip"]["concept_gain"] < 0.01  # −v pushes the tokens down
    assert planted["token_change_overlap"] == 1.0  # the 5 most raised tokens are the targets
    rows = {(r["method"], r["kappa"]): r for r in summarize(results, study.cfg.kl_targets)}
    assert rows[("vector", "selected")]["score"] > rows[("random", "selected")]["score"] + 0.25


def test_z_is_undefined_without_a_null_spread(steer_planted):
    """One random direction has no spread: z is left undefined rather than divided by a
    floor, and the null's max still shows that S beats it."""
    study = _study(steer_planted, n_random=1)
    planted = score_site(study, measure_curves(study))["planted"]["selected"]
    assert planted["null_std"] == 0.0 and planted["z"] is None
    assert planted["null_max"] == planted["null_mean"] < planted["score"] - 0.2


def test_without_kappa_selection_only_evaluation_prompts_are_generated(steer_planted, monkeypatch):
    """`select_kappa=False` generates on the evaluation prompts alone and reports every budget
    exactly as the default run does; no row claims a selected κ."""
    import saekit.steering.protocol as protocol

    generated: list[int] = []
    real = protocol.generate

    def counting(model, seqs, *args, **kwargs):
        generated.append(len(seqs))
        return real(model, seqs, *args, **kwargs)

    monkeypatch.setattr(protocol, "generate", counting)
    full = _study(steer_planted)
    generated.clear()
    with_sel = score_site(full, measure_curves(full))
    rows_with = sum(generated)
    generated.clear()
    half = _study(steer_planted, select_kappa=False)
    generated.clear()
    without = score_site(half, measure_curves(half))
    n_sel, n_eval = len(full.sel), len(full.eval)
    assert sum(generated) * (n_sel + n_eval) == rows_with * n_eval  # evaluation rows only
    for name, res in without.items():
        assert res["selected"] is None
        for a, b in zip(res["curve"], with_sel[name]["curve"]):
            assert "score_sel" not in a and "score_sel" in b or not b["reached"]
            for key in ("concept_gain", "fluency", "score", "delta_nll", "concept_rate"):
                assert a.get(key) == pytest.approx(b.get(key), abs=1e-6), (name, key)
    rows = summarize(without, half.cfg.kl_targets, selected=False)
    assert rows and all(r["kappa"] != "selected" for r in rows)
    assert half.base.nll_P is not None and half.base.nll_P[half.sel].isnan().all()
