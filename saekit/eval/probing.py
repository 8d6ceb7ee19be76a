"""Sparse probing, as SAEBench defines it, on binary classification tasks.

For each task (texts with 0/1 labels, a balanced train/test split):
1. every text is tokenized (BOS first, at most `context_size` tokens) and run to the hook; the
   residual activation and each dictionary's codes are mean-pooled over the text's ordinary
   tokens (BOS, EOS and padding excluded): codes are pooled after encoding each token, as
   SAEBench's `get_sae_meaned_activations` does, never encoded from a pooled activation;
2. latents are ranked by |mean over positives − mean over negatives| on the train split;
3. a logistic regression (scikit-learn, L2, C = 1, lbfgs, 1,000 iterations) is fitted on the
   top k latents for k in `ks`; its accuracy on the test split is the score.

The residual stream gives the ceiling (the same probe on all d_in dimensions, and the same
top-k selection over its dimensions, SAEBench's `llm_top_k`); the null controls of
`eval/controls.py` give the floors. SAEBench's dense probe is trained by AdamW for up to 100
epochs keeping the epoch with the best *test* accuracy; ours is the plain L2 logistic
regression fitted on the train split alone, so the ceiling never sees the test labels.

Results are per-task arrays (for bootstrapping over tasks) and their means. Memory is bounded
by `batch_size` × `context_size` tokens × d_sae, and by one task's pooled codes.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from saekit.data.tasks import (
    ProbingTask,
    balanced_split,
    load_tasks,
    tokenize_texts,
)
from saekit.data.text import special_ids
from saekit.dictionaries import Dictionary
from saekit.errors import SaekitError
from saekit.eval.controls import control_dictionaries
from saekit.models.hooks import HookedModel

RESIDUAL = "residual"
"""Name of the dense (no dictionary) input in the results."""


@dataclass(frozen=True)
class ProbingConfig:
    """Sparse probing (SAEBench's definition) on binary classification tasks."""

    tasks: str = "offline"
    """'offline' (24 tasks of the sae-probes wheel), 'offline:all' (its 113), 'offline:A,B',
    a local .csv/.jsonl file or folder of them, or an HF dataset id."""
    text_field: str = "text"
    """Column holding the text in local or HF tasks."""
    label_field: str = "label"
    """Column holding the binary label in local or HF tasks."""
    hf_split: str = "train"
    """Split of an HF dataset task."""
    n_train: int = 512
    """Training examples per task (half positive)."""
    n_test: int = 256
    """Test examples per task (half positive)."""
    ks: tuple[int, ...] = (1, 2, 5, 10, 20)
    """Numbers of top-ranked latents the probes use."""
    context_size: int = 128
    """Tokens per text, BOS included (longer texts are truncated, as in SAEBench)."""
    batch_size: int = 16
    """Texts per model forward."""
    seed: int = 42
    """Seed of the splits (and of the random-direction control)."""
    controls: bool = True
    """Also probe the null controls (random directions, the initialization) as floors."""

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise SaekitError(f"probing.ks must be positive integers, got {self.ks}.")
        if self.n_train < 4 or self.n_test < 2:
            raise SaekitError("probing.n_train must be ≥ 4 and probing.n_test ≥ 2.")


@torch.no_grad()
def pooled_features(
    model: HookedModel,
    hook: str,
    saes: dict[str, Dictionary],
    tokens: list[list[int]],
    special_ids: list[int],
    batch_size: int,
    progress: Any = None,
) -> dict[str, Tensor]:
    """Mean over each text's ordinary tokens of the hook's activation ([N, d_in], under
    RESIDUAL) and of every dictionary's codes ([N, d_sae], under its name)."""
    out: dict[str, list[Tensor]] = {RESIDUAL: [], **{name: [] for name in saes}}
    pad = special_ids[0] if special_ids else 0
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size]
        width = max(len(t) for t in batch)
        tokens_BT = torch.full((len(batch), width), pad, dtype=torch.long)
        mask_BT = torch.zeros(len(batch), width, dtype=torch.bool)
        for i, ids in enumerate(batch):
            tokens_BT[i, : len(ids)] = torch.tensor(ids)
            mask_BT[i, : len(ids)] = True
        for sid in special_ids:
            mask_BT &= tokens_BT != sid
        n_B = mask_BT.sum(dim=1, keepdim=True).clamp_min(1).double()
        acts_BTD = model.capture(tokens_BT.to(model.device), [hook])[hook].cpu()
        x_ND = acts_BTD[mask_BT]
        row_N = torch.arange(len(batch))[:, None].expand_as(mask_BT)[mask_BT]
        pooled = {RESIDUAL: x_ND.double()}
        for name, sae in saes.items():
            pooled[name] = sae.encode(x_ND.to(sae.W_dec)).double().cpu()
        for name, v_NF in pooled.items():
            sums_BF = torch.zeros(len(batch), v_NF.shape[1], dtype=torch.float64)
            out[name].append((sums_BF.index_add_(0, row_N, v_NF) / n_B).float())
        if progress is not None:
            progress.update(len(batch))
    return {name: torch.cat(parts) for name, parts in out.items()}


def top_k_by_mean_difference(x_ND: Tensor, y_N: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k columns with the largest |mean(positives) − mean(negatives)|."""
    y = torch.from_numpy(y_N)
    diff_F = (x_ND[y == 1].double().mean(dim=0) - x_ND[y == 0].double().mean(dim=0)).abs()
    return torch.argsort(diff_F, descending=True, stable=True)[:k].numpy()


def probe_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Test accuracy of an L2 logistic regression (C = 1, lbfgs) fitted on the train split."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        # Codes of dead or constant latents can leave lbfgs short of its tolerance.
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe = LogisticRegression(C=1.0, max_iter=1000).fit(x_train, y_train)
    return float((probe.predict(x_test) == y_test).mean())


def task_scores(
    features: dict[str, Tensor], labels: np.ndarray, train: np.ndarray, test: np.ndarray,
    ks: tuple[int, ...],
) -> dict[str, dict[str, float]]:  # fmt: skip
    """{input name: {"k=K": accuracy, ...}}, plus "all" (every dimension) for the residual."""
    y_tr, y_te = labels[train], labels[test]
    scores: dict[str, dict[str, float]] = {}
    for name, x_NF in features.items():
        x_tr, x_te = x_NF[train], x_NF[test]
        scores[name] = {}
        for k in ks:
            top = top_k_by_mean_difference(x_tr, y_tr, min(k, x_NF.shape[1]))
            scores[name][f"k={k}"] = probe_accuracy(
                x_tr[:, top].numpy(), y_tr, x_te[:, top].numpy(), y_te
            )
        if name == RESIDUAL:
            scores[name]["all"] = probe_accuracy(x_tr.numpy(), y_tr, x_te.numpy(), y_te)
    return scores


def evaluate_probing(
    model: HookedModel,
    saes: dict[str, Dictionary],
    hook: str,
    cfg: ProbingConfig = ProbingConfig(),
    tasks: list[ProbingTask] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sparse probing of every dictionary in `saes` (all read at `hook`), with the residual
    ceiling and, with cfg.controls, each dictionary's null controls."""
    for name, sae in saes.items():
        if sae.d_in != model.width(hook):
            raise SaekitError(
                f"Dictionary {name!r} reads d_in={sae.d_in} but hook {hook!r} has width "
                f"{model.width(hook)}; probe it at the hook it was trained on."
            )
    tasks = tasks if tasks is not None else load_tasks(
        cfg.tasks, cfg.text_field, cfg.label_field, cfg.hf_split
    )  # fmt: skip
    inputs = {name: sae.eval() for name, sae in saes.items()}
    if cfg.controls:
        for name, sae in saes.items():
            for ctrl, d in control_dictionaries(sae, cfg.seed).items():
                inputs[f"{name}/{ctrl}"] = d
    special = special_ids(model.tokenizer)  # pooling leaves BOS, EOS, padding out
    splits = [balanced_split(t.labels, cfg.n_train, cfg.n_test, cfg.seed) for t in tasks]
    total = sum(len(tr) + len(te) for tr, te in splits)
    per_task: list[dict[str, Any]] = []
    with tqdm(total=total, desc=f"sparse probing {hook}", disable=not progress) as bar:
        for task, (train, test) in zip(tasks, splits):
            bar.set_postfix_str(task.name[:32])
            order = np.concatenate([train, test])
            ids = tokenize_texts(model.tokenizer, [task.texts[i] for i in order], cfg.context_size)
            feats = pooled_features(model, hook, inputs, ids, special, cfg.batch_size, bar)
            idx_tr, idx_te = np.arange(len(train)), np.arange(len(train), len(order))
            scores = task_scores(feats, task.labels[order], idx_tr, idx_te, cfg.ks)
            per_task.append(
                {"task": task.name, "category": task.category, "n_train": len(train),
                 "n_test": len(test), "scores": scores}
            )  # fmt: skip
    return summarize_probing(per_task, list(saes), cfg)


def summarize_probing(
    per_task: list[dict[str, Any]], sae_names: list[str], cfg: ProbingConfig
) -> dict[str, Any]:
    """Per-input arrays over tasks (`per_task`) and their means (`mean`)."""
    names = list(per_task[0]["scores"]) if per_task else []
    arrays = {
        name: {key: [t["scores"][name][key] for t in per_task] for key in keys}
        for name, keys in ((n, list(per_task[0]["scores"][n])) for n in names)
    }
    means = {name: {key: float(np.mean(v)) for key, v in a.items()} for name, a in arrays.items()}
    return {
        "definition": "SAEBench sparse probing: mean-pooled codes, top-k by class mean "
        "difference on train, L2 logistic regression, test accuracy",
        "config": asdict(cfg),
        "tasks": [{k: t[k] for k in ("task", "category", "n_train", "n_test")} for t in per_task],
        "saes": sae_names,
        "per_task": arrays,
        "mean": means,
    }
