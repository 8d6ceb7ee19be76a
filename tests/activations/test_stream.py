"""ActivationStream: shuffled buffers keep every masked row, align hooks, restore exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from saekit.activations import open_stream
from saekit.activations.stream import ActivationStream, StreamConfig
from saekit.data.text import DataConfig, TokenWindows
from saekit.errors import SaekitError

S = 4  # windows per buffer: 4 × 16 tokens, ~58 rows after dropping BOS
MBS = 2  # windows per forward: each buffer takes two forwards


def unshuffled(hooked, windows, hooks, r: int = 0, exclude_special: bool = True):
    """Rows of buffer r in token order, computed by hand with the stream's forward chunking."""
    tokens_NT = windows.get(r * S, S)
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for start in range(0, S, MBS):
        chunk = tokens_NT[start : start + MBS]
        acts = hooked.capture(chunk, hooks)
        keep = windows.token_mask(chunk) if exclude_special else torch.ones_like(chunk).bool()
        for h in hooks:
            out[h].append(acts[h][keep])
    return {h: torch.cat(parts) for h, parts in out.items()}


def make_stream(tiny, windows, hooks, **overrides) -> ActivationStream:
    cfg = StreamConfig(hooks=tuple(hooks), buffer_sequences=S, model_batch_size=MBS, **overrides)
    return ActivationStream(tiny.hooked, windows, cfg)


def row_index(rows_ND: torch.Tensor) -> dict[tuple[float, ...], int]:
    return {tuple(row.tolist()): i for i, row in enumerate(rows_ND)}


# ---- one buffer ------------------------------------------------------------------------------
def test_a_buffer_serves_every_masked_row_once_shuffled(tiny, windows, sort_rows):
    hooks = [tiny.resid[0], tiny.mlp_hidden, tiny.resid_pre_1]
    expected = unshuffled(tiny.hooked, windows, hooks)
    n = expected[hooks[0]].shape[0]
    n_bos = int((windows.get(0, S) == 1).sum())
    assert n == S * 16 - n_bos and n_bos >= S  # BOS (position 0 and separators) dropped
    stream = make_stream(tiny, windows, hooks, batch_size=n)
    batch = stream.next_batch()
    assert stream.state_dict()["buffer_index"] == 1 and stream.state_dict()["offset"] == 0
    for h in hooks:
        assert batch[h].shape == (n, tiny.hooked.width(h))
        assert torch.equal(sort_rows(batch[h]), sort_rows(expected[h])), h
        assert not torch.equal(batch[h], expected[h]), "rows were not shuffled"


def test_row_i_is_the_same_token_in_every_hook(tiny, windows):
    hooks = [tiny.resid[0], tiny.mlp_hidden, tiny.resid_pre_1]
    expected = unshuffled(tiny.hooked, windows, hooks)
    stream = make_stream(tiny, windows, hooks, batch_size=40)
    batch = stream.next_batch()
    assert torch.equal(batch[tiny.resid[0]], batch[tiny.resid_pre_1])
    index = row_index(expected[tiny.resid[0]])
    perm = torch.tensor([index[tuple(row.tolist())] for row in batch[tiny.resid[0]]])
    assert torch.equal(batch[tiny.mlp_hidden], expected[tiny.mlp_hidden][perm])


def test_special_tokens_are_kept_on_request(tiny, windows, sort_rows):
    h = tiny.resid[0]
    expected = unshuffled(tiny.hooked, windows, [h], exclude_special=False)[h]
    assert expected.shape[0] == S * 16
    stream = make_stream(tiny, windows, [h], batch_size=S * 16, exclude_special_tokens=False)
    assert torch.equal(sort_rows(stream.next_batch()[h]), sort_rows(expected))


def test_buffer_r_holds_windows_r_times_s_onwards(tiny, windows, sort_rows):
    h = tiny.resid[1]
    first = unshuffled(tiny.hooked, windows, [h], r=0)[h]
    second = unshuffled(tiny.hooked, windows, [h], r=1)[h]
    n0 = first.shape[0]
    batch = make_stream(tiny, windows, [h], batch_size=n0 + 10).next_batch()[h]
    assert torch.equal(sort_rows(batch[:n0]), sort_rows(first))
    second_index = row_index(second)
    assert all(tuple(row.tolist()) in second_index for row in batch[n0:])


def test_shuffle_is_seeded(tiny, windows, sort_rows):
    h = tiny.resid[0]
    a = make_stream(tiny, windows, [h], batch_size=50).next_batch()[h]
    b = make_stream(tiny, windows, [h], batch_size=50).next_batch()[h]
    c = make_stream(tiny, windows, [h], batch_size=50, seed=1).next_batch()[h]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_served_dtype(tiny, windows, sort_rows):
    h = tiny.resid[0]
    expected = unshuffled(tiny.hooked, windows, [h])[h]
    n = expected.shape[0]
    batch = make_stream(tiny, windows, [h], batch_size=n, dtype="float16").next_batch()[h]
    assert batch.dtype == torch.float16
    assert torch.equal(sort_rows(batch), sort_rows(expected.half()))


# ---- filters and normalization ---------------------------------------------------------------
def test_norm_filter_drops_rows_above_the_multiple_of_the_median(tiny, windows, sort_rows):
    h = tiny.resid[1]
    expected = unshuffled(tiny.hooked, windows, [h])[h]
    norms = expected.norm(dim=1)
    kept = expected[norms <= 1.0 * norms.median()]
    assert 0 < kept.shape[0] < expected.shape[0]
    stream = make_stream(tiny, windows, [h], batch_size=kept.shape[0], max_norm_multiple=1.0)
    assert torch.equal(sort_rows(stream.next_batch()[h]), sort_rows(kept))
    assert stream.state_dict()["buffer_index"] == 1


def test_normalize_scales_mean_norm_to_sqrt_d(tiny, windows, sort_rows):
    h = tiny.mlp_hidden
    first = unshuffled(tiny.hooked, windows, [h], r=0)[h]
    second = unshuffled(tiny.hooked, windows, [h], r=1)[h]
    factor = math.sqrt(tiny.d_mlp) / float(first.norm(dim=1).mean())
    stream = make_stream(tiny, windows, [h], batch_size=first.shape[0], normalize=True)
    batch = stream.next_batch()[h]
    assert stream.norm_factors[h] == pytest.approx(factor, rel=1e-6)
    assert float(batch.norm(dim=1).mean()) == pytest.approx(math.sqrt(tiny.d_mlp), rel=1e-5)
    # The factor comes from the first buffer only: later buffers reuse it.
    later = make_stream(
        tiny, windows, [h], batch_size=first.shape[0] + second.shape[0], normalize=True
    ).next_batch()[h]
    torch.testing.assert_close(
        sort_rows(later[first.shape[0] :]),
        sort_rows(second * stream.norm_factors[h]),
        rtol=0,
        atol=1e-6,
    )


def poison_position_5(act: torch.Tensor) -> torch.Tensor:
    act = act.clone()
    act[:, 5] = float("nan")
    return act


def test_nonfinite_rows_are_dropped_and_counted(tiny, windows, sort_rows):
    h = tiny.resid[0]
    n_bad = int(windows.token_mask(windows.get(0, S))[:, 5].sum())
    assert n_bad > 0
    with tiny.hooked.intervene({h: poison_position_5}):
        poisoned = unshuffled(tiny.hooked, windows, [h])[h]
    clean = poisoned[torch.isfinite(poisoned).all(dim=1)]
    assert clean.shape[0] == poisoned.shape[0] - n_bad
    stream = make_stream(tiny, windows, [h], batch_size=clean.shape[0], max_nonfinite_fraction=0.5)
    with tiny.hooked.intervene({h: poison_position_5}):
        batch = stream.next_batch()[h]
    assert torch.equal(sort_rows(batch), sort_rows(clean))
    assert stream.n_nonfinite == n_bad
    assert stream.state_dict()["buffer_index"] == 1


def test_too_many_nonfinite_rows_abort_with_the_fix(tiny, windows):
    h = tiny.resid[0]
    stream = make_stream(tiny, windows, [h], batch_size=8)
    with (
        pytest.raises(SaekitError, match="NaN/inf.*model.dtype=float32"),
        tiny.hooked.intervene({h: poison_position_5}),
    ):
        stream.next_batch()


def test_a_fully_filtered_buffer_is_an_error(tiny):
    only_bos = TokenWindows(torch.ones(8, 16, dtype=torch.int32), special_ids=[1])
    stream = make_stream(tiny, only_bos, [tiny.resid[0]], batch_size=8)
    with pytest.raises(SaekitError, match="whole activation buffer was filtered out"):
        stream.next_batch()


# ---- save / restore --------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("n_before", [0, 1, 2, 7])
def test_restored_stream_continues_exactly(tiny, windows, n_before, normalize):
    hooks = [tiny.resid[0], tiny.mlp_hidden]
    # 25-row batches against ~58-row buffers: saves land mid-buffer and batches span buffers.
    a = make_stream(tiny, windows, hooks, batch_size=25, normalize=normalize)
    for _ in range(n_before):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # a checkpoint stores it as JSON
    want = [a.next_batch() for _ in range(4)]
    b = make_stream(tiny, windows, hooks, batch_size=25, normalize=normalize)
    b.load_state_dict(state)
    got = [b.next_batch() for _ in range(4)]
    a.load_state_dict(state)  # rewinding a used stream works too
    again = [a.next_batch() for _ in range(4)]
    for w, g, r in zip(want, got, again, strict=True):
        for h in hooks:
            assert torch.equal(w[h], g[h]) and torch.equal(w[h], r[h]), h
    assert b.state_dict() == a.state_dict()


def test_restore_mid_buffer_is_exercised(tiny, windows):
    a = make_stream(tiny, windows, [tiny.resid[0]], batch_size=25)
    a.next_batch()
    assert a.state_dict()["offset"] == 25 and a.state_dict()["buffer_index"] == 0


# ---- construction ----------------------------------------------------------------------------
def test_unknown_hook_fails_at_construction(tiny, windows):
    with pytest.raises(SaekitError, match="Unknown hook point.*Closest valid names"):
        make_stream(tiny, windows, [tiny.resid[0] + "_typo"], batch_size=8)


def test_config_validation():
    with pytest.raises(SaekitError, match="stream.hooks is empty"):
        StreamConfig(hooks=())
    with pytest.raises(SaekitError, match="stream.batch_size must be ≥ 1"):
        StreamConfig(batch_size=0)


def test_open_stream_builds_a_live_stream(tiny, saekit_home, corpus_jsonl):
    data = DataConfig(source=str(corpus_jsonl), context_size=16)
    cfg = StreamConfig(hooks=(tiny.resid[0],), batch_size=32, buffer_sequences=S)
    stream = open_stream(tiny.hooked, data, cfg, "eval")
    assert isinstance(stream, ActivationStream)
    assert stream.next_batch()[tiny.resid[0]].shape == (32, tiny.d_model)
    with pytest.raises(ValueError, match="needs a model"):
        open_stream(None, data, cfg)


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.e2e
def test_smollm2_stream_serves_plausible_activations(smollm2_tl):
    cfg = StreamConfig(
        hooks=("blocks.3.hook_resid_post",), batch_size=256, buffer_sequences=8, model_batch_size=8
    )
    stream = open_stream(smollm2_tl, DataConfig(), cfg, "train")
    x = stream.next_batch()["blocks.3.hook_resid_post"]
    assert x.shape == (256, 576) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    norms = x.norm(dim=1)
    # BOS is excluded, so no attention-sink rows: all norms within a narrow band.
    assert 1.0 < float(norms.median()) < 100.0
    assert float(norms.max()) < 10 * float(norms.median())
    assert float(norms.min()) > 0.1 * float(norms.median())
    assert stream.n_nonfinite == 0
