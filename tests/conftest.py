"""Shared fixtures: a char-level tokenizer, tiny random TL and HF models, a synthetic corpus.

Nothing here touches a hub: the tokenizer is built with `tokenizers`, the models are randomly
initialized (2 layers, d_model 16, d_mlp 32), and the corpus is generated from a seeded word list.
Helpers are fixtures, never imported: with several non-package conftest.py files, `conftest`
names whichever one pytest imported last. End-to-end tests (`-m e2e`) use the real offline
SmolLM2 from `$SAEKIT_HOME` (or the default cache dir), loaded once per session.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

# There is no network: every hub lookup must fail fast instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton reads this when its @jit decorators run, i.e. on the first import of any module
    # with kernels — which a test of the dispatch can do long before the Triton tests load.
    os.environ.setdefault("TRITON_INTERPRET", "1")
from torch import nn  # noqa: E402

from saekit.models.hooks import HookedModel  # noqa: E402

D_MODEL = 16
D_MLP = 32
N_LAYERS = 2
CONTEXT = 16
CHARS = "abcdefghijklmnopqrstuvwxyz.,"
SPECIALS = ("<unk>", "<bos>", "<eos>", "<pad>")
WORDS = (
    *("the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "far", "away", "from"),
    *("home", "and", "birds", "sang", "over", "quiet", "hills", "under", "bright", "skies"),
    *("as", "rivers", "moved", "slowly", "past", "old", "stone", "walls"),
)


@pytest.fixture(autouse=True)
def _one_thread(request: pytest.FixtureRequest):
    # 2 cores shared with other jobs: tiny matmuls gain nothing from threads; e2e ones do.
    if request.node.get_closest_marker("e2e"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def saekit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache dir (token windows are cached there)."""
    home = tmp_path / "saekit_home"
    monkeypatch.setenv("SAEKIT_HOME", str(home))
    return home


# ---- tokenizer and models --------------------------------------------------------------------
@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved char-level fast tokenizer (BPE without merges, whitespace pre-tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS + tuple(CHARS))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
    )
    path = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    # Loaded from disk so it has a name_or_path, as TransformerLens and the window cache expect.
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tl_model(tokenizer) -> nn.Module:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS,
        d_model=D_MODEL,
        n_heads=4,
        d_head=D_MODEL // 4,
        d_mlp=D_MLP,
        n_ctx=2 * CONTEXT,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="RMS",
        seed=0,
    )
    return HookedTransformer(cfg, tokenizer).eval()


def tiny_llama_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2 * CONTEXT,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )


@pytest.fixture(scope="session")
def hf_model(tokenizer) -> nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(len(tokenizer))).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, hf_model, tokenizer) -> Path:
    """The tiny Llama and its tokenizer saved as a local HF model directory."""
    path = tmp_path_factory.mktemp("tiny_llama")
    hf_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_topk_run(tiny_model_dir: Path, corpus_jsonl: Path, saekit_home: Path):
    """make(run, **data) writes a run directory: recipe.yaml (tiny HF Llama, synthetic corpus,
    DataConfig options `data`) and one untrained TopK SAE at model.layers.0; returns run."""
    from saekit.activations.stream import StreamConfig
    from saekit.config import save_yaml
    from saekit.data.text import DataConfig
    from saekit.dictionaries import SAEConfig, build_dictionary
    from saekit.models.loading import ModelConfig
    from saekit.recipe import Recipe

    hook = "model.layers.0"

    def make(run: Path, **data) -> Path:
        run.mkdir()
        recipe = Recipe(
            model=ModelConfig(name=str(tiny_model_dir), backend="hf"),
            data=DataConfig(source=str(corpus_jsonl), context_size=16, **data),
            stream=StreamConfig(hooks=(hook,)),
            saes=(SAEConfig(method="topk", d_sae=32, k=4, hook=hook),),
        )
        save_yaml(recipe, run / "recipe.yaml")
        sae = build_dictionary(SAEConfig(method="topk", hook=hook, d_sae=32, k=4), 16)
        sae.provenance = {"hook_name": hook}
        sae.save(run / "saes" / "topk")
        return run

    return make


@dataclass
class Tiny:
    """A tiny hooked model plus the backend's names for the same activations."""

    hooked: HookedModel
    resid: tuple[str, ...]
    """Residual stream after each layer."""
    resid_pre_1: str
    """Residual stream entering layer 1 (= resid[0])."""
    mlp_hidden: str
    """Layer-1 MLP activation after the nonlinearity (width D_MLP)."""
    blocks: nn.ModuleList
    d_model: int = D_MODEL
    d_mlp: int = D_MLP


@pytest.fixture(params=["transformer_lens", "hf"])
def tiny(request: pytest.FixtureRequest, tokenizer) -> Tiny:
    """Each backend in turn (a fresh HookedModel over the session's model)."""
    if request.param == "transformer_lens":
        model = request.getfixturevalue("tl_model")
        return Tiny(
            HookedModel(model, tokenizer),
            resid=("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"),
            resid_pre_1="blocks.1.hook_resid_pre",
            mlp_hidden="blocks.1.mlp.hook_post",
            blocks=model.blocks,
        )
    model = request.getfixturevalue("hf_model")
    return Tiny(
        HookedModel(model, tokenizer),
        resid=("model.layers.0", "model.layers.1"),
        resid_pre_1="model.layers.1:in",
        mlp_hidden="model.layers.1.mlp.down_proj:in",
        blocks=model.model.layers,
    )


# ---- data ------------------------------------------------------------------------------------
def synthetic_documents(n: int = 150, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(6, 18))) + "." for _ in range(n)]


@pytest.fixture
def corpus_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        "".join(
            json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(synthetic_documents())
        )
    )
    return path


@pytest.fixture
def corpus_txt(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(synthetic_documents(60, seed=1)) + "\n")
    return path


@pytest.fixture
def windows(saekit_home: Path, corpus_jsonl: Path, tokenizer):
    from saekit.data.text import DataConfig, build_windows

    return build_windows(
        DataConfig(source=str(corpus_jsonl), context_size=CONTEXT), tokenizer, "train"
    )


def _sort_rows(x_ND: torch.Tensor) -> torch.Tensor:
    order = np.lexsort(x_ND.float().numpy().T[::-1])
    return x_ND[torch.from_numpy(order.copy())]


@pytest.fixture
def sort_rows():
    """Rows in lexicographic order, to compare multisets of rows exactly.

    A fixture rather than an import: `from conftest import` resolves to whichever of the several
    conftest.py files pytest imported last.
    """
    return _sort_rows


# ---- end-to-end (real offline SmolLM2) -------------------------------------------------------
@pytest.fixture(scope="session")
def smollm2_tl() -> HookedModel:
    """The offline SmolLM2 on the TransformerLens backend, loaded once per session."""
    from saekit.models.hooks import build_hooked_model
    from saekit.models.loading import ModelConfig

    return build_hooked_model(ModelConfig(backend="transformer_lens"))


@pytest.fixture(scope="session")
def smollm2_hf() -> HookedModel:
    from saekit.models.hooks import build_hooked_model
    from saekit.models.loading import ModelConfig

    return build_hooked_model(ModelConfig(backend="hf"))
