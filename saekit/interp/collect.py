"""One streaming pass over held-out windows: every per-feature statistic the scores and the
dashboard need, in memory bounded by the settings, never by [tokens x d_sae].

Each window of T tokens is cut into T // L examples of L tokens (the tail is dropped). Per batch
of codes z [B, T, S] the collector updates, for every feature at once:
- firing counts, activation sums and maxima, and a log10-activation histogram (64 fixed bins);
- the top-K examples by max activation, with the feature's activations on their L tokens
  (a streaming top-k: concatenate the kept K with the batch's best K, keep the best K);
- a uniform reservoir of R activating test examples (the same top-k on random keys);
- the N highest-activation token positions (token id and previous token id, for entropies);
- the max activation of every example [C, S] in fp16 (labels for explainer and detection; 4096
  examples x 4608 features = 38 MB);
- on the train split, the sum of each feature's activations per token id (sparse; the lookup
  simulator reads it);
- with token embeddings (interp/embed.py), on the train split, the activation-weighted sum of
  the embeddings of the tokens each feature fires on [S, E] (its embedding explanation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.interp.config import InterpConfig

HIST_BINS = 64
HIST_RANGE = (-4.0, 4.0)
"""log10(activation) histogram range: 1e-4 .. 1e4 covers every scale we have seen (values
outside land in the edge bins)."""
_GOLDEN = 0.6180339887498949


def is_test_window(index: int, test_fraction: float) -> bool:
    """Low-discrepancy split of windows: spreads test windows evenly through the stream."""
    return (index * _GOLDEN) % 1.0 < test_fraction


@dataclass
class FeatureData:
    """What one pass collected; S = d_sae, K top examples, R reservoir, N top tokens, L length."""

    n_tokens: int
    counts_S: Tensor
    sums_S: Tensor
    max_S: Tensor
    hist_SH: Tensor
    top_max_SK: Tensor
    """Max activation of each kept top example (0 = empty slot)."""
    top_ex_SK: Tensor
    """Example ids of the top examples."""
    top_acts_SKL: Tensor
    res_ex_SR: Tensor
    """Example ids of the reservoir (−1 = empty slot)."""
    res_acts_SRL: Tensor
    tok_vals_SN: Tensor
    tok_ids_SN: Tensor
    tok_prev_SN: Tensor
    ex_max_CS: Tensor
    """Max activation of every example (fp16)."""
    ex_tokens_CL: Tensor
    ex_mask_CL: Tensor
    """Ordinary (non-special) token positions of every example."""
    ex_test_C: Tensor
    lookup_sum_VS: Tensor
    """Sparse COO: summed activation per (token id, feature) over the train split."""
    token_counts_V: Tensor
    """Occurrences of each token id at ordinary train positions."""
    emb_sum_SE: Tensor | None = None
    """Σ over train tokens of activation x token embedding (None without an embedder)."""
    ex_emb_CLE: Tensor | None = None
    """Token embeddings of every example (fp16; shared by the variants of one pass)."""


def _keep_top(
    keys_SK: Tensor, new_keys_SM: Tensor, payloads: list[tuple[Tensor, Tensor]], k: int
) -> tuple[Tensor, list[Tensor]]:
    """Streaming top-k: the k best of kept + new along dim 1, payloads gathered alike."""
    keys = torch.cat([keys_SK, new_keys_SM], dim=1)
    best_SK, idx_SK = keys.topk(min(k, keys.shape[1]), dim=1)
    out = []
    for old, new in payloads:
        both = torch.cat([old, new], dim=1)
        index = idx_SK.view(*idx_SK.shape, *([1] * (both.ndim - 2))).expand(-1, -1, *both.shape[2:])
        out.append(both.gather(1, index))
    return best_SK, out


class FeatureCollector:
    """Feed `update(tokens, mask, z, first_window)` batch after batch, then `finish()`."""

    def __init__(self, d_sae: int, vocab_size: int, cfg: InterpConfig) -> None:
        S, K, R, N, L = d_sae, cfg.top_examples, cfg.reservoir, cfg.top_tokens, cfg.example_len
        self.cfg, self.S, self.V, self.L = cfg, S, vocab_size, L
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.n_tokens = 0
        self.counts_S = torch.zeros(S, dtype=torch.long)
        self.sums_S = torch.zeros(S, dtype=torch.float64)
        self.max_S = torch.zeros(S)
        self.hist_SH = torch.zeros(S, HIST_BINS, dtype=torch.long)
        self.top_max_SK = torch.zeros(S, 0)
        self.top_ex_SK = torch.zeros(S, 0, dtype=torch.long)
        self.top_acts_SKL = torch.zeros(S, 0, L)
        self.res_key_SR = torch.zeros(S, 0)
        self.res_ex_SR = torch.zeros(S, 0, dtype=torch.long)
        self.res_acts_SRL = torch.zeros(S, 0, L)
        self.tok_vals_SN = torch.zeros(S, 0)
        self.tok_ids_SN = torch.zeros(S, 0, dtype=torch.long)
        self.tok_prev_SN = torch.zeros(S, 0, dtype=torch.long)
        self.ex_max: list[Tensor] = []
        self.ex_tokens: list[Tensor] = []
        self.ex_mask: list[Tensor] = []
        self.ex_test: list[Tensor] = []
        self.lookup_VS = torch.sparse_coo_tensor(
            torch.zeros(2, 0, dtype=torch.long),
            torch.zeros(0),
            (vocab_size, S),
            check_invariants=False,
        )
        self.token_counts_V = torch.zeros(vocab_size, dtype=torch.long)
        self.emb_sum_SE: Tensor | None = None
        self.sizes = (K, R, N)

    @torch.no_grad()
    def update(
        self,
        tokens_BT: Tensor,
        mask_BT: Tensor,
        z_BTS: Tensor,
        first_window: int,
        emb_BTE: Tensor | None = None,
    ) -> None:
        K, R, N = self.sizes
        B, T, S = z_BTS.shape
        L = self.L
        z_BTS = z_BTS.float().cpu() * mask_BT.cpu().unsqueeze(-1)  # special positions never fire
        tokens_BT, mask_BT = tokens_BT.cpu(), mask_BT.cpu()
        self.n_tokens += int(mask_BT.sum())
        self.counts_S += (z_BTS > 0).sum(dim=(0, 1))
        self.sums_S += z_BTS.sum(dim=(0, 1)).double()
        self.max_S = torch.maximum(self.max_S, z_BTS.amax(dim=(0, 1)))
        self._histogram(z_BTS)

        # top-N token positions by activation
        z_PS = z_BTS.reshape(B * T, S)
        prev_BT = torch.cat([tokens_BT[:, :1], tokens_BT[:, :-1]], dim=1)
        vals_MS, pos_MS = z_PS.topk(min(N, B * T), dim=0)
        self.tok_vals_SN, (self.tok_ids_SN, self.tok_prev_SN) = _keep_top(
            self.tok_vals_SN,
            vals_MS.T,
            [
                (self.tok_ids_SN, tokens_BT.reshape(-1)[pos_MS].T),
                (self.tok_prev_SN, prev_BT.reshape(-1)[pos_MS].T),
            ],
            N,
        )

        # examples: [B * nc, L, S]
        nc = T // L
        z_ELS = z_BTS[:, : nc * L].reshape(B * nc, L, S)
        ex_max_ES = z_ELS.amax(dim=1)
        ex_ids = torch.arange(first_window * nc, (first_window + B) * nc)
        test_B = torch.tensor(
            [is_test_window(first_window + b, self.cfg.test_fraction) for b in range(B)]
        )
        test_E = test_B.repeat_interleave(nc)
        self.ex_max.append(ex_max_ES.half())
        self.ex_tokens.append(tokens_BT[:, : nc * L].reshape(B * nc, L).int())
        self.ex_mask.append(mask_BT[:, : nc * L].reshape(B * nc, L))
        self.ex_test.append(test_E)
        acts_SEL = z_ELS.permute(2, 0, 1)

        def gather(idx_MS: Tensor) -> Tensor:
            return acts_SEL.gather(1, idx_MS.T.unsqueeze(-1).expand(-1, -1, L))

        best_MS, idx_MS = ex_max_ES.topk(min(K, B * nc), dim=0)
        self.top_max_SK, (self.top_ex_SK, self.top_acts_SKL) = _keep_top(
            self.top_max_SK,
            best_MS.T,
            [(self.top_ex_SK, ex_ids[idx_MS].T), (self.top_acts_SKL, gather(idx_MS))],
            K,
        )
        # reservoir of activating test examples: keep the R largest uniform random keys
        keys_ES = torch.rand(B * nc, S, generator=self.gen)
        keys_ES[(ex_max_ES <= 0) | ~test_E.unsqueeze(1)] = -1.0
        kbest_MS, kidx_MS = keys_ES.topk(min(R, B * nc), dim=0)
        ids_SM = torch.where(kbest_MS.T >= 0, ex_ids[kidx_MS].T, -1)
        self.res_key_SR, (self.res_ex_SR, self.res_acts_SRL) = _keep_top(
            self.res_key_SR,
            kbest_MS.T,
            [(self.res_ex_SR, ids_SM), (self.res_acts_SRL, gather(kidx_MS))],
            R,
        )
        self._lookup(tokens_BT, mask_BT, z_BTS, ~test_B)
        if emb_BTE is not None:
            keep_BT = mask_BT & ~test_B.unsqueeze(1)
            if self.emb_sum_SE is None:
                self.emb_sum_SE = torch.zeros(S, emb_BTE.shape[-1], dtype=torch.float64)
            self.emb_sum_SE += (z_BTS[keep_BT].T @ emb_BTE.cpu().float()[keep_BT]).double()

    def _histogram(self, z_BTS: Tensor) -> None:
        nz = z_BTS > 0
        feat = nz.nonzero()[:, 2]
        lo, hi = HIST_RANGE
        bins = ((z_BTS[nz].log10() - lo) / (hi - lo) * HIST_BINS).floor().long()
        flat = feat * HIST_BINS + bins.clamp(0, HIST_BINS - 1)
        self.hist_SH.view(-1).index_add_(0, flat, torch.ones_like(flat))

    def _lookup(self, tokens_BT: Tensor, mask_BT: Tensor, z_BTS: Tensor, train_B: Tensor) -> None:
        keep_BT = mask_BT & train_B.unsqueeze(1)
        if not keep_BT.any():
            return
        toks = tokens_BT[keep_BT]
        self.token_counts_V += torch.bincount(toks, minlength=self.V)[: self.V]
        z_NS = z_BTS[keep_BT]
        row, feat = z_NS.nonzero(as_tuple=True)
        batch = torch.sparse_coo_tensor(
            torch.stack([toks[row], feat]),
            z_NS[row, feat],
            (self.V, self.S),
            check_invariants=False,
        )
        self.lookup_VS = (self.lookup_VS + batch).coalesce()

    def finish(self) -> FeatureData:
        if not self.ex_max:
            raise ValueError("FeatureCollector.finish() before any update()")
        return FeatureData(
            n_tokens=self.n_tokens,
            counts_S=self.counts_S,
            sums_S=self.sums_S,
            max_S=self.max_S,
            hist_SH=self.hist_SH,
            top_max_SK=self.top_max_SK,
            top_ex_SK=self.top_ex_SK,
            top_acts_SKL=self.top_acts_SKL,
            res_ex_SR=self.res_ex_SR,
            res_acts_SRL=self.res_acts_SRL,
            tok_vals_SN=self.tok_vals_SN,
            tok_ids_SN=self.tok_ids_SN,
            tok_prev_SN=self.tok_prev_SN,
            ex_max_CS=torch.cat(self.ex_max),
            ex_tokens_CL=torch.cat(self.ex_tokens),
            ex_mask_CL=torch.cat(self.ex_mask),
            ex_test_C=torch.cat(self.ex_test),
            lookup_sum_VS=self.lookup_VS.coalesce(),
            token_counts_V=self.token_counts_V,
            emb_sum_SE=self.emb_sum_SE,
        )
