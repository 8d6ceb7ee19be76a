"""saekit's first-letter absorption against SAEBench's `absorption` code (sae-bench 0.6.0) on the
same vocabulary sample, model and SAE.

The model: a 1-layer TransformerLens model over a word-level vocabulary whose residual stream
after layer 0 is the token's embedding (attention and MLP outputs zeroed), each word embedded
near its first letter's direction. The SAE: TopK (k = 1) with one latent per letter and, for
three test words that also carry a direction of their own, a latent of the word's embedding,
which fires instead of the letter's: planted full absorption.

Checked against SAEBench, in three steps:
1. the 80/20 split and every prompt (SAEBench's `create_dataset_probe_training` with the global
   `random` seeded as saekit's generator) and the activations (`gen_and_save_df_acts_probing`):
   identical prompts, activations within 1e-5;
2. the probe trainer (`train_multi_probe`, one full batch, torch seeded alike): weights within
   1e-4;
3. everything after the probes: SAEBench's `run_k_sparse_probing_experiment`,
   `run_feature_absortion_experiment` and its aggregation, given saekit's probe and data in
   its probe directory and saekit's L1 probe as its `train_sparse_multi_probe`: per-letter
   probe F1, split features, absorption fraction and full-absorption rate equal to 1e-9.
SAEBench writes only under the test's temporary directory (explicit directories).
"""

from __future__ import annotations

import random
import string

import numpy as np
import pytest
import torch

from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.eval.absorption import AbsorptionConfig, evaluate_absorption
from saekit.eval.first_letter import (
    LETTERS,
    ProbeTraining,
    alpha_tokens,
    split_prompts,
    token_activations,
    train_probe,
)
from saekit.models.hooks import HookedModel

pytest.importorskip("sae_bench")
import sae_lens  # noqa: E402
from sae_bench.evals.absorption import feature_absorption, k_sparse_probing, main  # noqa: E402
from sae_bench.evals.absorption import probing as sb_probing  # noqa: E402
from sae_bench.evals.absorption.prompting import first_letter_formatter  # noqa: E402

SEED, D, HOOK, TEMPLATE, POS = 7, 32, "blocks.0.hook_resid_post", "{word} has the first letter:", -6
ABSORBED = 3


@pytest.fixture(scope="module")
def letter_world(tmp_path_factory):
    """(tokenizer, model, letter directions, words, absorbed): ~24 four-letter words per letter
    (so every letter has test words), embedded near their letter's direction; three test words
    also carry a direction of their own, orthogonal to the letters'."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    words = sorted(
        {c + "".join(rng.choices(string.ascii_lowercase, k=3)) for c in LETTERS for _ in range(24)}
    )
    specials = ["<unk>", "<bos>", "<pad>"]
    vocab = specials + [":", "has", "the", "first", "letter"] + list(string.ascii_uppercase) + words
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    path = tmp_path_factory.mktemp("letters")
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<bos>",
                            pad_token="<pad>").save_pretrained(path)  # fmt: skip
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    cfg = HookedTransformerConfig(n_layers=1, d_model=D, n_heads=2, d_head=16, d_mlp=32,
                                  n_ctx=96, d_vocab=len(vocab), act_fn="relu", seed=0)  # fmt: skip
    model = HookedTransformer(cfg, tok).eval()
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D, D, generator=gen))[0]
    letter_dirs = basis[:26]
    _, test = split_prompts(alpha_tokens(tok), random.Random(SEED), TEMPLATE, 10)
    absorbed = [p.word for p in test if p.word in words][:ABSORBED]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E.normal_(0, 0.1, generator=gen)
        for w in words:
            model.W_E[vocab.index(w)] += 3.0 * letter_dirs[LETTERS.index(w[0])]
        for j, w in enumerate(absorbed):
            model.W_E[vocab.index(w)] += 2.0 * basis[26 + j]
    return tok, model, letter_dirs, words, absorbed


def _sae(model, letter_dirs, absorbed, tmp_path):
    sae = build_dictionary(SAEConfig(method="topk", d_sae=64, k=1, seed=0, hook=HOOK), D)
    emb = model.W_E.detach()
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_dec[:26] = letter_dirs
        for j, idx in enumerate(absorbed):
            sae.W_dec[26 + j] = emb[idx] / emb[idx].norm()
        sae.W_dec[26 + len(absorbed) :] = (
            torch.eye(D).repeat(2, 1)[: 64 - 26 - len(absorbed)] * 1e-3
        )
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae, sae_lens.SAE.load_from_disk(sae.save(tmp_path / "sae"))


def test_absorption_equals_saebench(letter_world, tmp_path, monkeypatch):
    tok, tl, letter_dirs, words, absorbed_words = letter_world
    model = HookedModel(tl, tok)
    vocab = alpha_tokens(tok)
    assert vocab == sorted([*words, "has", "the", "first", "letter", *string.ascii_uppercase])
    rng = random.Random(SEED)
    train, test = split_prompts(vocab, rng, TEMPLATE, 10)

    # 1. split, prompts and activations
    random.seed(SEED)
    sb_train, sb_test = sb_probing.create_dataset_probe_training(
        vocab, first_letter_formatter(), 1, TEMPLATE, max_icl_examples=10
    )
    assert [p.base for p, _ in sb_train] == [p.text for p in train]
    assert [c for _, c in sb_test] == [p.label for p in test]
    sb_dir = tmp_path / "probes" / tl.cfg.model_name / "layer_0"
    train_df, test_df, sb_x_tr, sb_x_te = sb_probing.gen_and_save_df_acts_probing(
        tl, sb_train, sb_test, sb_dir, HOOK, batch_size=32, position_idx=POS
    )
    x_tr = token_activations(model, HOOK, train, POS, 32, progress=False)
    x_te = token_activations(model, HOOK, test, POS, 32, progress=False)
    torch.testing.assert_close(x_tr, torch.from_numpy(np.array(sb_x_tr)), rtol=1e-5, atol=1e-5)

    # 2. the probe trainer, full batch
    y_tr = torch.tensor([p.label for p in train])
    onehot = torch.nn.functional.one_hot(y_tr, 26).float()
    full = ProbeTraining(epochs=20, weight_decay=1e-4, batch_size=4096)
    W, b = train_probe(x_tr, onehot, full, SEED)
    torch.manual_seed(SEED)
    sb_probe = sb_probing.train_multi_probe(
        x_tr, onehot, num_probes=26, batch_size=4096, num_epochs=20, lr=1e-2,
        weight_decay=1e-4, show_progress=False, device=torch.device("cpu"),
    )  # fmt: skip
    torch.testing.assert_close(W, sb_probe.weights.detach(), rtol=1e-3, atol=1e-4)

    # 3. after the probes: absorbing latents for three test words, then both evaluations
    sae, sb_sae = _sae(
        tl, letter_dirs, [tok.convert_tokens_to_ids(w) for w in absorbed_words], tmp_path
    )
    # ~9 steps per epoch for the L1 probe, as in SAEBench's full run
    cfg = AbsorptionConfig(seed=SEED, batch_size=32, sparse_probe_batch_size=64)
    ours = evaluate_absorption(model, sae, HOOK, cfg, vocab=vocab, progress=False)

    W_probe, b_probe = train_probe(x_tr, onehot, cfg.letter_training(), SEED)
    probe = sb_probing.LinearProbe(D, 26)
    probe.fc.weight.data, probe.fc.bias.data = W_probe.clone(), b_probe.clone()
    data = {"X_train": x_tr, "X_test": x_te, "y_train": y_tr,
            "y_test": torch.tensor([p.label for p in test])}  # fmt: skip
    sb_probing.save_probe_and_data(probe, data, sb_dir)

    def encode(x):
        return sae.encode(x).float()

    sparse_y = torch.nn.functional.one_hot(y_tr).float()
    W_sparse, _ = train_probe(x_tr, sparse_y, cfg.sparse_training(), SEED, encode, 64)
    sparse = sb_probing.LinearProbe(64, W_sparse.shape[0])
    sparse.fc.weight.data = W_sparse.clone()
    monkeypatch.setattr(k_sparse_probing, "train_sparse_multi_probe", lambda *a, **k: sparse)
    monkeypatch.setattr(feature_absorption, "get_alpha_tokens", lambda _tok: vocab)
    random.setstate(rng.getstate())  # the absorption prompts continue saekit's generator
    dirs = {"probes_dir": tmp_path / "probes", "prompt_template": TEMPLATE,
            "prompt_token_pos": POS, "device": "cpu", "max_k_value": 10, "layer": 0}  # fmt: skip
    metrics = k_sparse_probing.run_k_sparse_probing_experiment(
        model=tl, sae=sb_sae, sae_name="s", experiment_dir=tmp_path / "ksp", verbose=False, **dirs
    )
    raw = feature_absorption.run_feature_absortion_experiment(
        model=tl, sae=sb_sae, sae_name="s", experiment_dir=tmp_path / "fa",
        sparse_probing_experiment_dir=tmp_path / "ksp", batch_size=32, **dirs,
    )  # fmt: skip
    agg = main._aggregate_results_df(raw).set_index("letter")
    f1_probe = metrics.set_index("letter")["f1_probe"]
    rows = {row["letter"]: row for row in ours["per_letter"]}
    assert set(rows) == set(agg.index)
    for letter, row in rows.items():
        assert row["probe_f1"] == pytest.approx(f1_probe[letter], abs=1e-9)
        assert row["split_features"] == list(agg.loc[letter, "split_feats"])
        for key in ("mean_absorption_fraction", "full_absorption_rate"):
            assert row[key] == pytest.approx(agg.loc[letter, key], abs=1e-9), (letter, key)
    # The planted absorbers are found: each absorbed word is a full absorption of its letter.
    full = {
        r["letter"]: r["full_absorption_rate"] * r["num_probe_true_positives"]
        for r in rows.values()
    }
    assert sum(full.values()) == pytest.approx(ABSORBED)
    assert ours["letters_evaluated"] >= 20 and ours["mean_full_absorption"] > 0


def test_controls_are_scored_on_the_same_prompts_without_model_forwards(
    letter_world, tmp_path, monkeypatch
):
    """`saekit eval --absorption` scores a dictionary and its null controls on one set of
    activations and letter probe: the controls cost no model forward, the per-letter rows of the
    dictionary equal the one-dictionary eval's, and the scorecard pairs them by letter."""
    from saekit.eval import absorption as absorption_module
    from saekit.eval.controls import control_dictionaries
    from saekit.report.saebench import absorption_summary

    tok, tl, letter_dirs, _, absorbed_words = letter_world
    model = HookedModel(tl, tok)
    vocab = alpha_tokens(tok)
    sae, _ = _sae(tl, letter_dirs, [tok.convert_tokens_to_ids(w) for w in absorbed_words], tmp_path)
    cfg = AbsorptionConfig(seed=SEED, batch_size=32, sparse_probe_batch_size=64)
    alone = evaluate_absorption(model, sae, HOOK, cfg, vocab=vocab, progress=False)

    forwards = []
    real = absorption_module.token_activations
    monkeypatch.setattr(
        absorption_module,
        "token_activations",
        lambda *a, **k: forwards.append(len(a[2])) or real(*a, **k),
    )
    data = absorption_module.absorption_data(model, HOOK, cfg, vocab, progress=False)
    n_forwards = len(forwards)
    res = absorption_module.score_absorption(data, sae, cfg)
    controls = {
        c: absorption_module.score_absorption(data, control, cfg)
        for c, control in control_dictionaries(sae, seed=0).items()
    }
    assert len(forwards) == n_forwards  # scoring ran no model
    assert res["per_letter"] == alone["per_letter"]

    summary = absorption_summary(res, controls, cfg.min_probe_f1)
    kept = [r["letter"] for r in res["per_letter"] if r["probe_f1"] > cfg.min_probe_f1]
    assert len(kept) >= 20
    for c, r in controls.items():  # the letter probe is shared, so the same letters are kept
        assert [
            row["letter"] for row in r["per_letter"] if row["probe_f1"] > cfg.min_probe_f1
        ] == kept
        assert summary["controls"][c]["mean_full_absorption"] == r["mean_full_absorption"]
    full = summary["scores"]["full_absorption"]
    floors = {c: r["mean_full_absorption"] for c, r in controls.items()}
    assert full["controls"] == pytest.approx(floors)
    best = min(floors, key=floors.__getitem__)  # lower absorption is the stronger control
    assert full["strongest_control"] == best
    assert full["margin"] == pytest.approx(floors[best] - res["mean_full_absorption"])
    assert summary["margin_over_strongest_control"]["full_absorption"] == pytest.approx(
        full["margin"]
    )
    lo, hi = full["margin_ci"]
    assert lo <= full["margin"] <= hi
