"""One hook interface over TransformerLens models and plain HF modules.

A hook point is a name that maps to an `nn.Module` whose output is the activation:
- TransformerLens: the model's `HookPoint`s (`blocks.6.hook_resid_post`, `blocks.6.mlp.hook_post`);
- HF: any submodule by dotted path (`model.layers.6`, `model.layers.6.mlp`); a `:in` suffix
  reads the module's first input instead (`model.layers.6.mlp.down_proj:in` is the MLP hidden
  activation after the nonlinearity).
Both are driven by plain torch forward hooks, so capture, early stop and interventions work the
same way on both. Early stop raises a private exception from the hook that completes the
requested set, so no layer after the deepest requested hook runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from saekit.errors import SaekitError, closest

Intervention = Callable[[Tensor], Tensor]
"""Maps an activation [batch, pos, d] to its replacement (same shape)."""


class _StopForward(Exception):
    """Raised inside a hook once every requested activation has been captured."""


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


class HookedModel:
    """A language model with named hook points: capture, early stop, interventions."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.is_transformer_lens = hasattr(model, "hook_dict")
        self._widths: dict[str, int] | None = None

    # ---- hook points -------------------------------------------------------------------------
    def _module(self, name: str) -> tuple[nn.Module, bool]:
        """(module, reads_input) for a hook name; unknown names list the closest valid ones."""
        base, reads_input = (name[:-3], True) if name.endswith(":in") else (name, False)
        if self.is_transformer_lens:
            module = self.model.hook_dict.get(base)  # type: ignore[union-attr, operator]
        else:
            module = dict(self.model.named_modules()).get(base) if base else None
        if module is None or (self.is_transformer_lens and reads_input):
            self._unknown(name)
        if reads_input and name not in self.hook_widths():
            # HF passes some modules their input by keyword only (self_attn(hidden_states=...)),
            # so a forward hook sees no positional tensor: only listed `:in` names are readable.
            self._unknown(name)
        return module, reads_input  # type: ignore[return-value]

    def _unknown(self, name: str) -> None:
        near = closest(name, self.hook_widths())
        hint = f" Closest valid names: {', '.join(near)}." if near else ""
        raise SaekitError(
            f"Unknown hook point {name!r}.{hint} Run `saekit hooks MODEL` to list them all."
        )

    def hook_widths(self) -> dict[str, int]:
        """Every hook point whose activation is [batch, pos, width], with its width.

        Found with one 4-token forward that records every candidate's output shape.
        """
        if self._widths is not None:
            return self._widths
        if self.is_transformer_lens:
            hook_dict: dict[str, nn.Module] = self.model.hook_dict  # type: ignore[assignment]
            candidates = dict(hook_dict)
        else:
            candidates = {n: m for n, m in self.model.named_modules() if n}
        widths: dict[str, int] = {}
        handles = []

        def make_hook(name: str) -> Callable[..., None]:
            def hook(_m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
                out = _first_tensor(output)
                if out is not None and out.ndim == 3:
                    widths[name] = int(out.shape[-1])
                inp = _first_tensor(inputs)
                if not self.is_transformer_lens and inp is not None and inp.ndim == 3:
                    widths[f"{name}:in"] = int(inp.shape[-1])

            return hook

        for name, module in candidates.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        try:
            with torch.no_grad():
                self.run(torch.ones(1, 4, dtype=torch.long, device=self.device))
        finally:
            for h in handles:
                h.remove()
        self._widths = widths
        return widths

    def width(self, name: str) -> int:
        widths = self.hook_widths()
        if name not in widths:
            self._unknown(name)
        return widths[name]

    # ---- running -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def run(self, tokens_BT: Tensor) -> Tensor:
        """Logits [batch, pos, vocab] of a full forward (interventions in place apply)."""
        if self.is_transformer_lens:
            return self.model(tokens_BT, return_type="logits")
        return self.model(input_ids=tokens_BT).logits

    def capture(
        self, tokens_BT: Tensor, names: Sequence[str], stop_early: bool = True
    ) -> dict[str, Tensor]:
        """Activations [batch, pos, width] of several hooks from one forward.

        With `stop_early` the forward stops right after the last requested hook fires, so a
        layer-6 capture on a 30-layer model costs ~7/30 of a full forward.
        """
        if not names:
            raise SaekitError("No hook points requested; give at least one hook name.")
        wanted = list(dict.fromkeys(names))
        modules = {n: self._module(n) for n in wanted}
        captured: dict[str, Tensor] = {}
        handles = []

        def make_hook(name: str, reads_input: bool) -> Callable[..., None]:
            def hook(_m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
                act = _first_tensor(inputs if reads_input else output)
                assert act is not None
                captured[name] = act.detach()
                if stop_early and len(captured) == len(wanted):
                    raise _StopForward

            return hook

        for name, (module, reads_input) in modules.items():
            handles.append(module.register_forward_hook(make_hook(name, reads_input)))
        try:
            with torch.no_grad(), contextlib.suppress(_StopForward):
                self.run(tokens_BT)
        finally:
            for h in handles:
                h.remove()
        return captured

    # ---- interventions -----------------------------------------------------------------------
    @contextlib.contextmanager
    def intervene(self, edits: dict[str, Intervention]) -> Iterator[None]:
        """Replace hook activations by `fn(activation)` inside the block; always removed after."""
        handles = []
        try:
            for name, fn in edits.items():
                module, reads_input = self._module(name)
                handles.append(self._add_edit(module, reads_input, fn))
            yield
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def _add_edit(module: nn.Module, reads_input: bool, fn: Intervention) -> Any:
        if reads_input:

            def pre_hook(_m: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
                return (fn(inputs[0]), *inputs[1:])

            return module.register_forward_pre_hook(pre_hook)

        def hook(_m: nn.Module, _inputs: tuple[Any, ...], output: Any) -> Any:
            if isinstance(output, Tensor):
                return fn(output)
            return (fn(output[0]), *output[1:])

        return module.register_forward_hook(hook)


def build_hooked_model(model_cfg: Any) -> HookedModel:
    """Load the model a `ModelConfig` names and wrap it."""
    from saekit.models.loading import load_model

    model, tokenizer = load_model(model_cfg)
    return HookedModel(model, tokenizer)


def load_model(
    name: str = "smollm2-135m", backend: str = "transformer_lens", **kw: Any
) -> HookedModel:
    """`saekit.load_model`: a model by spec (the offline default, a local HF directory or a
    hub id), hooked; backend "hf" keeps the plain HF model (hook names are module paths).
    Other ModelConfig fields (dtype, device) as keywords. Any HF causal LM you already hold
    is hooked the same way: `HookedModel(model, tokenizer)`."""
    from saekit.models.loading import ModelConfig

    return build_hooked_model(ModelConfig(name=name, backend=backend, **kw))  # type: ignore[arg-type]
