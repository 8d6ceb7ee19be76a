"""Selection end to end on the tiny models: masking, pooling, outputs, determinism, errors."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import pytest
import torch

from saekit.cli import main
from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.dictionaries.save import save_dictionary
from saekit.errors import SaekitError
from saekit.selection.config import DataFields, SelectConfig
from saekit.selection.data import Sample, load_samples, offline_mix
from saekit.selection.embed import embed
from saekit.selection.scoring import build_probes
from saekit.selection.select import load_selector, select_data
from saekit.selection.tokens import INSTRUCTION, RESPONSE, TEMPLATE, SampleTokenizer

WORDS = ("cat", "dog", "sun", "red", "sky", "hat", "map", "owl", "fig", "jam", "cup", "pen")


def make_samples(n: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cat = i % 3
        words = [WORDS[4 * cat + rng.randrange(4)] for _ in range(rng.randint(1, 3))]
        out.append(Sample(" ".join(words), rng.choice(WORDS), f"c{cat}", i))
    return out


@pytest.fixture
def sae_dir(tmp_path: Path, tiny) -> Path:
    d = build_dictionary(SAEConfig(method="topk", d_sae=64, k=4, hook=tiny.resid[1]), tiny.d_model)
    return save_dictionary(d, tmp_path / "sae")


CFG = SelectConfig(ratio=0.25, max_tokens=24, batch_size=3, top_k=8)


def test_embedding_equals_manual_masked_max(tiny, sae_dir: Path) -> None:
    selector = load_selector(sae_dir, model=tiny.hooked)
    samples = make_samples(7, 0)
    probes = build_probes(selector.model, selector.sae, selector.hook, CFG, baselines=False)
    got = embed(selector.model, samples, probes, CFG, progress=False).sparse["mona"].dense()
    tok = SampleTokenizer(tiny.hooked.tokenizer, CFG.max_tokens)
    for i, s in enumerate(samples):  # one at a time, no padding, no sorting
        item = tok(s)
        acts = tiny.hooked.capture(torch.tensor([item.ids]), [selector.hook])[selector.hook][0]
        keep = torch.tensor([r in (INSTRUCTION, RESPONSE) for r in item.roles])
        with torch.no_grad():
            z = selector.sae.encode(acts[keep]).max(dim=0).values
        top = torch.zeros_like(z)
        idx = torch.topk(z, CFG.top_k or 0).indices
        top[idx] = z[idx]
        torch.testing.assert_close(got[i], top, rtol=1e-4, atol=1e-5)


def test_chat_template_tokens_are_masked(tokenizer) -> None:
    tok = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tok.chat_template = (
        "{% for m in messages %}<bos>{{ m['role'] }}:{{ m['content'] }}<eos>{% endfor %}"
    )
    st = SampleTokenizer(tok, 64)
    item = st(Sample("sat on a mat", "dogs ran"))
    enc = tok.encode
    assert [t for t, r in zip(item.ids, item.roles) if r == INSTRUCTION] == enc(
        "sat on a mat", add_special_tokens=False
    )
    assert [t for t, r in zip(item.ids, item.roles) if r == RESPONSE] == enc(
        "dogs ran", add_special_tokens=False
    )
    assert item.roles[0] == TEMPLATE and item.ids[0] == tok.bos_token_id
    pieces = ("<bos>user:", "<eos><bos>assistant:", "<eos>")
    template = [t for p in pieces for t in enc(p, add_special_tokens=False)]
    assert [t for t, r in zip(item.ids, item.roles) if r == TEMPLATE] == template


def test_long_samples_are_truncated_instruction_first(tokenizer) -> None:
    st = SampleTokenizer(tokenizer, 20)
    item = st(Sample("abcdefghij" * 5, "xyz"))
    assert len(item.ids) <= 20
    assert sum(r == RESPONSE for r in item.roles) == 3


def test_select_data_outputs_and_determinism(tiny, sae_dir: Path, tmp_path: Path) -> None:
    selector = load_selector(sae_dir, model=tiny.hooked)
    pool = make_samples(24, 1) + [make_samples(24, 1)[0]]  # one exact duplicate
    target = [s for s in make_samples(9, 2) if s.category == "c0"]
    a = select_data(selector, pool, target, CFG, tmp_path / "a", progress=False)
    b = select_data(selector, pool, target, CFG, tmp_path / "b", progress=False)
    assert a["pool_after_dedup"] == 24 and a["selected"] == 6
    assert a["selected_rows"] == b["selected_rows"]
    assert {"mona", "random", "bm25", "rds", "neurons"} <= set(a["methods"])
    ranking = (tmp_path / "a" / "ranking.jsonl").read_text()
    assert ranking == (tmp_path / "b" / "ranking.jsonl").read_text()
    rows = [json.loads(line) for line in ranking.splitlines()]
    assert [r["rank"] for r in rows] == list(range(24))
    assert all(rows[i]["mona"] >= rows[i + 1]["mona"] for i in range(23))
    selected = (tmp_path / "a" / "selected.jsonl").read_text().splitlines()
    assert len(selected) == 6 and set(json.loads(selected[0])) == {
        "instruction",
        "response",
        "category",
    }
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["config"]["ratio"] == 0.25
    assert report["sae_fvu"] > 0  # an untrained SAE reconstructs poorly, but it is measured
    other = select_data(
        selector, pool, target, SelectConfig(**{**CFG.__dict__, "seed": 5}), None, progress=False
    )
    assert other["selected_rows"] == a["selected_rows"]  # MoNA itself does not depend on the seed


def test_errors_are_clear(tiny, sae_dir: Path, tmp_path: Path) -> None:
    selector = load_selector(sae_dir, model=tiny.hooked)
    pool = make_samples(6, 0)
    with pytest.raises(SaekitError, match="pool is empty"):
        select_data(selector, [], pool, CFG, progress=False)
    with pytest.raises(SaekitError, match="target is empty"):
        select_data(selector, pool, [], CFG, progress=False)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(SaekitError, match=r"ratio must be in \(0, 1\]"):
            SelectConfig(ratio=bad)
    assert SelectConfig(ratio=1.0).ratio == 1.0
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"prompt": "x", "response": "y"}) + "\n")
    with pytest.raises(SaekitError, match="no field 'instruction'.*--instruction-field"):
        load_samples(str(path))
    assert load_samples(str(path), DataFields(instruction="prompt"))[0].instruction == "x"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SaekitError, match="holds no samples"):
        load_samples(str(empty), split="target")
    with pytest.raises(SaekitError, match="does not exist"):
        load_samples(str(tmp_path / "missing.jsonl"))


def test_cli_reports_bad_input_with_status_2(tmp_path: Path, capsys) -> None:
    assert main(["select", str(tmp_path), "--target", "t.jsonl", "--ratio", "1.5"]) == 2
    assert "ratio must be in (0, 1]" in capsys.readouterr().err
    assert main(["select", str(tmp_path)]) == 2
    assert "--target" in capsys.readouterr().err


def fake_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for cat in ("alpha", "beta", "gamma"):
            rows = [
                {
                    "input": [
                        {"role": "system", "content": "sys"},
                        {"role": "user", "content": f"{cat} q{i}"},
                    ],
                    "ideal": [f"a{i}"],
                }
                for i in range(40)
            ]
            zf.writestr(
                f"evals/registry/data/{cat}/samples.jsonl", "\n".join(map(json.dumps, rows))
            )
        zf.writestr("evals/registry/data/other/x.jsonl", json.dumps({"text": "not chat"}))
    return path


def test_offline_mix_splits_are_disjoint_and_fixed(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / "evals.whl")
    kw = {"wheel": wheel, "per_category": 10, "n_target": 3, "n_heldout": 5}
    pool = offline_mix("pool", **kw)
    target = offline_mix("target", ["beta"], **kw)
    held = offline_mix("heldout", ["beta"], **kw)
    assert len(pool) == 30 and len(target) == 3 and len(held) == 5
    assert pool[0].instruction.endswith(tuple(f"q{i}" for i in range(40)))  # system dropped
    texts = lambda xs: {s.instruction for s in xs}  # noqa: E731
    assert not texts(target) & texts(pool) and not texts(held) & texts(pool)
    assert texts(offline_mix("target", ["beta"], **kw)) == texts(target)
    assert load_samples("offline:beta", split="target", **kw)[0].response.startswith("a")
    with pytest.raises(SaekitError, match="Unknown or too small offline categories: nope"):
        offline_mix("pool", ["nope"], **kw)


def test_also_scores_mona_with_a_second_dictionary(tiny, sae_dir: Path, tmp_path: Path) -> None:
    """`--also`: MoNA on SNMF codes as method mona_snmf, equal to MoNA run with the SNMF alone."""
    cfg = SAEConfig(method="snmf", d_sae=8, hook=tiny.mlp_hidden)
    snmf_dir = save_dictionary(build_dictionary(cfg, tiny.d_mlp), tmp_path / "snmf")
    pool, target = make_samples(12, 1), make_samples(4, 2)
    both = load_selector(sae_dir, model=tiny.hooked)
    assert both.also(snmf_dir) == "mona_snmf"
    assert both.also(snmf_dir) == "mona_snmf2"
    alone = load_selector(snmf_dir, model=tiny.hooked)
    out = select_data(both, pool, target, CFG, tmp_path / "both", baselines=False, progress=False)
    select_data(alone, pool, target, CFG, tmp_path / "alone", baselines=False, progress=False)
    assert out["methods"] == ["mona", "mona_snmf", "mona_snmf2"]
    rows = [json.loads(x) for x in (tmp_path / "both" / "ranking.jsonl").read_text().splitlines()]
    by_row = {r["row"]: r["mona_snmf"] for r in rows}
    ref_rows = [
        json.loads(x) for x in (tmp_path / "alone" / "ranking.jsonl").read_text().splitlines()
    ]
    for r in ref_rows:
        assert by_row[r["row"]] == pytest.approx(r["mona"], rel=1e-6)
