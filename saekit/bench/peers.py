"""Import the peer libraries the benches time, or say in one line how to install them.

The peers live in the optional `bench` extra (`make setup` installs it):

    pip install -e '.[bench]' && pip install --no-deps overcomplete==0.3.0

- sparsify (PyPI `eai-sparsify`): its decoder is a Triton kernel when Triton imports, and
  Triton is CUDA-only; on a machine without CUDA the import is made with sparsify's own switch
  `SPARSIFY_DISABLE_TRITON=1`, so its plain-torch decoder (embedding_bag) runs. It prints its
  choice on import; that line goes to stderr so `--json` output stays one JSON object.
- overcomplete: the package `__init__` imports its vision models (torchvision, timm, opencv);
  the SAEs need none of them. `overcomplete_sae()` loads `overcomplete.sae` under an empty
  parent package, so the vision stack is neither imported nor installed (`--no-deps`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from saekit.errors import SaekitError

INSTALL = "pip install -e '.[bench]' && pip install --no-deps overcomplete==0.3.0"
"""The command that installs every peer (what `make setup` runs)."""


def peer_version(dist: str) -> str | None:
    """Installed version of distribution `dist`, or None."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _missing(dist: str) -> SaekitError:
    return SaekitError(f"the bench peer {dist} is not installed: run `{INSTALL}`.")


def sparsify() -> Any:
    """The `sparsify` package (eai-sparsify), with its CPU decoder when CUDA is absent."""
    if "sparsify" not in sys.modules:
        if importlib.util.find_spec("sparsify") is None or peer_version("eai-sparsify") is None:
            raise _missing("eai-sparsify")
        if not torch.cuda.is_available():
            os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
        with contextlib.redirect_stdout(sys.stderr):
            importlib.import_module("sparsify")
    return sys.modules["sparsify"]


def overcomplete_sae() -> Any:
    """`overcomplete.sae` without running `overcomplete/__init__.py` (see the module doc)."""
    name = "overcomplete"
    if f"{name}.sae" in sys.modules:
        return sys.modules[f"{name}.sae"]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise _missing(name)
    if name not in sys.modules:
        parent = types.ModuleType(name)
        parent.__path__ = list(spec.submodule_search_locations)
        parent.__spec__ = spec
        sys.modules[name] = parent
    try:
        return importlib.import_module(f"{name}.sae")
    except ImportError as exc:
        raise SaekitError(f"overcomplete.sae failed to import ({exc}): run `{INSTALL}`.") from exc
