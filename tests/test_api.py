"""The Python API: `saekit.__all__`, and fit / evaluate on tensors a user already holds."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest
import torch

import saekit
from saekit.activations.synthetic import FlatSuperposition
from saekit.errors import SaekitError


def test_every_public_name_resolves_and_import_is_lazy() -> None:
    assert saekit.__all__[0] == "__version__" and len(set(saekit.__all__)) == len(saekit.__all__)
    assert saekit.__version__ == metadata.version("saekit")
    for name in saekit.__all__:
        assert getattr(saekit, name) is not None, name
    assert set(saekit.__all__) <= set(dir(saekit))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        saekit.nope  # noqa: B018
    # `import saekit` alone loads no torch: the CLI's --help and notebooks start fast.
    code = "import sys, saekit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def synthetic(n: int, seed: int) -> torch.Tensor:
    data = FlatSuperposition(n_features=32, d_in=16, expected_l0=3.0, seed=0)
    return data.sample(n, generator=torch.Generator().manual_seed(seed)).x_BD + 0.5


TRAIN = saekit.TrainConfig(total_tokens=256 * 200, lr=3e-3, lr_warmup_steps=10, log_every=50)


def test_fit_on_a_tensor_learns_and_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    acts, held_out = synthetic(8192, seed=1), synthetic(4096, seed=2)
    stream = saekit.TensorStream(acts * 7.0, batch_size=256, hook="h", normalize=True)
    result = saekit.fit(saekit.SAEConfig(d_sae=64, k=3, hook="h"), stream, TRAIN)
    assert result.run_dir is None and list(tmp_path.iterdir()) == []
    assert [r["step"] for r in result.history] == [50, 100, 150, 200]
    (name,) = result.dictionaries
    assert name == "00-topk-h" and result.summary["tokens"] == 256 * 200
    sae = result.dictionary
    assert sae.folded_norm_factor == pytest.approx(stream.norm_factors["h"])
    metrics = saekit.evaluate(sae, held_out * 7.0)  # raw activations: the factor is folded in
    # FVU by hand: Σ‖x − x̂‖² / Σ‖x − mean(x)‖², against the per-dimension mean.
    x = held_out.double() * 7.0
    with torch.no_grad():
        x_hat = sae(x.float()).double()
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert metrics["fvu"] == pytest.approx(fvu, rel=1e-4) and fvu < 0.2
    assert 2.9 < metrics["l0_mean"] <= 3.0  # TopK: k latents, fewer where < k are positive
    assert metrics["n_tokens"] == 4096 and metrics["method"] == "topk"


def test_fit_writes_a_run_directory_when_asked(tmp_path) -> None:
    acts = {"a": synthetic(2048, seed=1), "b": synthetic(2048, seed=3) * 2}
    cfgs = [saekit.SAEConfig(d_sae=32, k=2, hook="a"), saekit.SAEConfig(d_sae=32, k=2, hook="b")]
    train = saekit.TrainConfig(total_tokens=4096, log_every=4)
    result = saekit.fit(cfgs, acts, train, run_dir=tmp_path / "run")
    assert result.run_dir == tmp_path / "run"
    assert sorted(p.name for p in (tmp_path / "run/saes").iterdir()) == sorted(result.dictionaries)
    for name, sae in result.dictionaries.items():
        loaded = saekit.load_dictionary(tmp_path / "run/saes" / name)
        assert torch.equal(loaded.W_dec, sae.W_dec) and loaded.cfg.hook == sae.cfg.hook
    assert (tmp_path / "run/history.jsonl").is_file() and (tmp_path / "run/run.json").is_file()
    with pytest.raises(SaekitError, match="trained 2 dictionaries"):
        result.dictionary  # noqa: B018
    with pytest.raises(SaekitError, match="holds a run already; choose another run_dir"):
        saekit.fit(cfgs, acts, train, run_dir=tmp_path / "run")  # holds a run: refused


def test_fit_fits_snmf_from_a_tensor() -> None:
    acts = synthetic(1024, seed=4).clamp_min(0)
    cfg = saekit.SAEConfig(method="snmf", d_sae=4, snmf=saekit.SNMFConfig(sparsity=0.5))
    result = saekit.fit(cfg, acts, saekit.TrainConfig(total_tokens=1024))
    assert result.dictionary.method == "snmf" and result.history[-1]["step"] >= 1
    assert 0 < saekit.evaluate(result.dictionary, acts)["fvu"] < 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: saekit.fit(saekit.SAEConfig()), "needs activations"),
        (lambda: saekit.fit(saekit.Recipe(), torch.zeros(4, 4)), "brings its own stream"),
        (lambda: saekit.fit(saekit.SAEConfig(), torch.zeros(4, 4), resume=True), "recipes"),
        (
            lambda: saekit.fit(
                [saekit.SAEConfig(hook="a"), saekit.SAEConfig(hook="b")], torch.zeros(4, 4)
            ),
            "One tensor cannot feed",
        ),
        (lambda: saekit.evaluate(saekit.load_dictionary), "either activations"),
    ],
)
def test_misuse_is_one_clear_error(call, match) -> None:
    with pytest.raises(SaekitError, match=match):
        call()
