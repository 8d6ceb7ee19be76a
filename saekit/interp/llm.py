"""Optional LLM scorer (docs/interpretability.md): delphi-style detection and fuzzing judged by
a chat model, either any OpenAI-compatible endpoint or the offline SmolLM2-Instruct (no
network, runs in tests).

Detection: the judge reads the explanation and 5 passages per prompt and answers a Python list
of 0/1 ("does the passage show the feature?"). Fuzzing: tokens are wrapped in << >>; activating
examples highlight their tokens >= 0.3 x the example's max (correct), non-activating ones
highlight as many random tokens as activating examples have on average (incorrect); the judge
says whether each highlighting is correct. Score = balanced accuracy over the answers; replies
that do not parse count as all-0 and are reported in `llm_unparsed`.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from saekit.errors import SaekitError
from saekit.interp.scores import Scorer, balanced_accuracy

PER_PROMPT = 5
DETECTION_SYSTEM = (
    "You decide whether short text passages show a described feature of language. You get a "
    "feature description and numbered passages. Answer with a Python list of 0s and 1s, one per "
    "passage in order: 1 if the passage shows the feature, 0 if not. Reply with the list only."
)
FUZZING_SYSTEM = (
    "You check highlighted text. You get a feature description and numbered passages in which "
    "some tokens are wrapped in << >>. For each passage answer 1 if the highlighted tokens are "
    "the ones the description is about, 0 if not. Reply with a Python list of 0s and 1s only."
)


class ChatClient(Protocol):
    name: str

    def complete(self, system: str, user: str) -> str: ...


class OpenAIChat:
    """Any OpenAI-compatible /chat/completions endpoint (temperature 0)."""

    def __init__(self, base_url: str, model: str, timeout: float = 120.0) -> None:
        if not model:
            raise SaekitError("An LLM endpoint needs a model name: pass --llm-model NAME.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.name = model, timeout, f"{model} @ {base_url}"

    def complete(self, system: str, user: str) -> str:
        body = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": 64,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        req = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return str(json.loads(resp.read())["choices"][0]["message"]["content"])
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            raise SaekitError(
                f"LLM endpoint {self.url} failed ({type(exc).__name__}: {str(exc)[:160]}); check "
                "the URL and OPENAI_API_KEY, or use --llm local for the offline model."
            ) from None


class LocalChat:
    """A local HF causal LM answering greedily (default: the offline SmolLM2-135M-Instruct)."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 24) -> None:
        self.model, self.tokenizer, self.max_new_tokens = model.eval(), tokenizer, max_new_tokens
        self.name = f"local {getattr(tokenizer, 'name_or_path', '')}"

    @classmethod
    def offline(cls) -> LocalChat:
        from saekit.models.loading import ModelConfig, load_model

        model, tokenizer = load_model(ModelConfig(backend="hf"))
        return cls(model, tokenizer)

    @torch.no_grad()
    def complete(self, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        else:  # a base model: plain text turns
            text = f"{system}\n\n{user}\n"
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        ids = ids.to(next(self.model.parameters()).device)
        pad = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        out = self.model.generate(
            ids, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad
        )
        return str(self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def make_client(spec: str, model_name: str = "") -> ChatClient:
    """'local' → the offline instruct model; an http(s) URL → an OpenAI-compatible endpoint."""
    if spec == "local":
        return LocalChat.offline()
    if spec.startswith(("http://", "https://")):
        return OpenAIChat(spec, model_name)
    raise SaekitError(f"Unknown LLM scorer {spec!r}: use 'local' or an http(s) base URL.")


def parse_answers(reply: str, n: int) -> list[int] | None:
    """The first list of n 0/1 values in the reply (or its first n 0/1 digits), else None."""
    for inside in re.findall(r"\[([^\]]*)\]", reply):
        vals = re.findall(r"\b[01]\b", inside)
        if len(vals) == n:
            return [int(v) for v in vals]
    digits = re.findall(r"\b[01]\b", reply)
    return [int(v) for v in digits[:n]] if len(digits) >= n else None


def _ask(client: ChatClient, system: str, expl: str, passages: list[str]) -> tuple[list[int], int]:
    """Answers for all passages, PER_PROMPT per call; (answers, unparsed replies)."""
    answers, unparsed = [], 0
    for a in range(0, len(passages), PER_PROMPT):
        chunk = passages[a : a + PER_PROMPT]
        user = f"Feature: {expl}\n\n" + "\n".join(
            f"Passage {i + 1}: {p}" for i, p in enumerate(chunk)
        )
        got = parse_answers(
            client.complete(system, user + f"\n\nList of {len(chunk)} answers:"), len(chunk)
        )
        unparsed += got is None
        answers += got or [0] * len(chunk)
    return answers, unparsed


def llm_scores(
    scorer: Scorer,
    s: int,
    explanation: str,
    client: ChatClient,
    text: Callable[[int], str],
    n_examples: int = 10,
    fuzz_threshold: float = 0.3,
) -> dict[str, Any] | None:
    """LLM detection and fuzzing balanced accuracies of feature `s`, or None if unscorable."""
    ts = scorer.test_set(s)
    if ts is None:
        return None
    tokens_CL, mask_CL = scorer.data.ex_tokens_CL, scorer.mask_CL
    sel = np.unique(np.linspace(0, len(ts.pos_ids) - 1, n_examples).round().astype(int))
    pos, neg = ts.pos_ids[sel], ts.neg_ids[:n_examples]
    active = ts.active_tokens(fuzz_threshold)[sel]
    n_wrong = max(1, math.ceil(float(active.sum(1).mean())))

    def render(ex: int, marks: np.ndarray | None) -> str:
        toks = [(text(int(t)), bool(m)) for t, m in zip(tokens_CL[ex].tolist(), mask_CL[ex])]
        return "".join(
            f"<<{t}>>" if marks is not None and marks[i] else t
            for i, (t, ok) in enumerate(toks)
            if ok
        ).replace("\n", " ")

    truth = np.array([True] * len(pos) + [False] * len(neg))
    det, bad1 = _ask(
        client, DETECTION_SYSTEM, explanation, [render(int(c), None) for c in [*pos, *neg]]
    )
    wrong = []
    for c in neg:
        marks = np.zeros(mask_CL.shape[1], dtype=bool)
        ordinary = np.flatnonzero(mask_CL[c])
        marks[ts.rng.choice(ordinary, size=min(n_wrong, len(ordinary)), replace=False)] = True
        wrong.append(render(int(c), marks))
    right = [render(int(c), a) for c, a in zip(pos, active)]
    fuzz, bad2 = _ask(client, FUZZING_SYSTEM, explanation, right + wrong)
    return {
        "llm_detection": balanced_accuracy(np.array(det, bool), truth),
        "llm_fuzzing": balanced_accuracy(np.array(fuzz, bool), truth),
        "llm_unparsed": bad1 + bad2,
    }


def explanation_text(keys: list[int], vocab: int, text: Callable[[int], str]) -> str:
    """The n-gram explanation as a sentence a judge can read."""
    from saekit.interp.explain import decode_key

    grams = ", ".join(json.dumps("".join(text(t) for t in decode_key(k, vocab))) for k in keys)
    return f"text containing any of: {grams}"


def score_with_llm(
    scorer: Scorer,
    scores: dict[int, dict[str, Any]],
    features: list[int],
    client: ChatClient,
    text: Callable[[int], str],
    n_examples: int,
) -> dict[str, Any]:
    """Add llm_* scores to `scores` for the scorable `features`; their summary next to the
    n-gram scores of the same features."""
    done = []
    for s in tqdm(features, desc=f"LLM judge ({client.name})"):
        expl = explanation_text(scores[s]["explanation"], scorer.vocab, text)
        got = llm_scores(scorer, s, expl, client, text, n_examples, scorer.cfg.fuzz_threshold)
        if got is not None:
            scores[s] |= got
            done.append(s)

    def mean(key: str) -> float | None:
        return float(np.mean([scores[s][key] for s in done])) if done else None

    return {
        "scorer": client.name,
        "scored": len(done),
        "detection_mean": mean("llm_detection"),
        "fuzzing_mean": mean("llm_fuzzing"),
        "ngram_detection_mean": mean("detection"),
        "ngram_fuzzing_mean": mean("fuzzing"),
        "unparsed_replies": sum(scores[s]["llm_unparsed"] for s in done),
    }
