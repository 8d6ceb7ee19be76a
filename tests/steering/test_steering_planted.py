"""A planted direction that controls a known token set scores high; random directions do not."""

from __future__ import annotations

from saekit.steering.directions import Direction, random_directions
from saekit.steering.protocol import SiteStudy, SteeringConfig
from saekit.steering.score import measure_curves, score_site, summarize


def _study(planted, n_random=6):
    model, v_D, ids, hook = planted.model, planted.v_D, planted.ids, planted.hook
    cfg = SteeringConfig(
        prompts=planted.prompts,
        kl_targets=(0.1, 0.5),
        gen_tokens=8,
        temperature=1.0,
        n_random=n_random,
    )
    dirs = [Direction("planted", "vector", hook, v_D, ids)]
    rand_KD = random_directions(v_D.shape[0], n_random, seed=3)
    dirs += [Direction(f"random:{j}", "random", hook, r, ids) for j, r in enumerate(rand_KD)]
    return SiteStudy(model, hook, dirs, cfg)


def test_planted_direction_scores_high_and_random_near_zero(steer_planted):
    study = _study(steer_planted)
    results = score_site(study, measure_curves(study))
    planted = results["planted"]["selected"]
    print({k: planted[k] for k in ("score", "concept_gain", "fluency", "null_mean", "z")})
    assert planted["score"] > 0.4
    assert planted["concept_gain"] > 0.4
    assert planted["null_mean"] < 0.1  # random directions on the planted tokens
    assert planted["z"] > 3
    assert planted["sign_flip"]["concept_gain"] < 0.05  # −v pushes the tokens down
    rows = {(r["method"], r["kappa"]): r for r in summarize(results, study.cfg.kl_targets)}
    assert rows[("vector", "selected")]["score"] > rows[("random", "selected")]["score"] + 0.3
