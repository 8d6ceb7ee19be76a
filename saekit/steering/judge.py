"""Optional judge path (docs/steering.md, "Optional judge"): rate steered continuations for
concept and fluency.

Off by default. Two backends score the same rubrics, each on 0-2 and answered as
"Rating: [[s]]": `openai` posts to any OpenAI-compatible chat endpoint (URL and model in the
config, temperature 0, API key read from the environment variable the config names), `local`
asks a local chat model (the offline SmolLM2-135M-Instruct by default) greedily, so the path
runs without a network. Like AxBench, an unparsable or out-of-range answer counts as 0 and a
continuation's judge score is the harmonic mean of concept and fluency (0 if either is 0).
Every answer is cached in a jsonl file keyed by the hash of (backend, model, prompt), so a
rerun asks nothing twice. The rubric wording is saekit's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from saekit.errors import SaekitError

CONCEPT_RUBRIC = (
    "Rate how clearly a text fragment expresses a concept.\n"
    "Concept: {concept}\nFragment: {text}\n"
    "0 = the concept is absent; 1 = it appears only in passing or awkwardly; "
    "2 = it is clearly and naturally present.\n"
    "Explain briefly, then end with exactly 'Rating: [[N]]' where N is 0, 1 or 2."
)
FLUENCY_RUBRIC = (
    "Rate the fluency of a text fragment, ignoring what it is about.\n"
    "Fragment: {text}\n"
    "0 = not fluent (incoherent or repetitive); 1 = partly fluent; 2 = fluent.\n"
    "Explain briefly, then end with exactly 'Rating: [[N]]' where N is 0, 1 or 2."
)
_RATING = re.compile(r"Rating:\s*\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_FALLBACK = re.compile(r"(?:Rating:?\s*|\[\[)\s*(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class JudgeConfig:
    """Which judge rates steered continuations (off by default)."""

    backend: Literal["none", "openai", "local"] = "none"
    """none = judge-free only; openai = an OpenAI-compatible endpoint; local = a local model."""
    url: str = ""
    """openai: base URL of the endpoint, e.g. http://localhost:8000/v1."""
    model: str = ""
    """openai: the endpoint's model name; local: a model spec (empty = smollm2-135m)."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: environment variable holding the API key (unset = send none)."""
    cache: str = ""
    """jsonl file caching every answer (empty = no cache)."""
    max_new_tokens: int = 64
    """local: tokens the judge may write per answer."""
    timeout_s: float = 60.0
    """openai: seconds to wait for one answer."""


def parse_rating(answer: str) -> float:
    """The 0-2 rating in an answer; unparsable or out of range → 0."""
    found = _RATING.findall(answer) or _FALLBACK.findall(answer)
    if not found:
        return 0.0
    value = float(found[-1])
    return value if 0.0 <= value <= 2.0 else 0.0


class Judge:
    """Asks a chat model the rubrics; answers cached by prompt hash."""

    def __init__(self, cfg: JudgeConfig) -> None:
        if cfg.backend == "none":
            raise SaekitError("The judge is off (backend: none); set backend openai or local.")
        if cfg.backend == "openai" and not (cfg.url and cfg.model):
            raise SaekitError("The openai judge needs a url and a model name in its config.")
        self.cfg = cfg
        self._local: Any = None
        self._cache: dict[str, str] = {}
        if cfg.cache and Path(cfg.cache).is_file():
            for line in Path(cfg.cache).read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self._cache[row["key"]] = row["answer"]

    def ask(self, prompt: str) -> str:
        key = hashlib.sha256(
            json.dumps([self.cfg.backend, self.cfg.model, prompt]).encode()
        ).hexdigest()
        if key not in self._cache:
            answer = (
                self._openai(prompt) if self.cfg.backend == "openai" else self._ask_local(prompt)
            )
            self._cache[key] = answer
            if self.cfg.cache:
                Path(self.cfg.cache).parent.mkdir(parents=True, exist_ok=True)
                with Path(self.cfg.cache).open("a") as fh:
                    fh.write(json.dumps({"key": key, "prompt": prompt, "answer": answer}) + "\n")
        return self._cache[key]

    def rate(self, concept: str, text: str) -> dict[str, float]:
        """{concept, fluency, score}: the two ratings and their harmonic mean (0-2)."""
        c = parse_rating(self.ask(CONCEPT_RUBRIC.format(concept=concept, text=text)))
        f = parse_rating(self.ask(FLUENCY_RUBRIC.format(text=text)))
        score = 2 * c * f / (c + f) if c > 0 and f > 0 else 0.0
        return {"concept": c, "fluency": f, "score": score}

    def _openai(self, prompt: str) -> str:
        body = {
            "model": self.cfg.model,
            "temperature": 0,
            "messages": [{"role": "user", "content": prompt}],
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(
            self.cfg.url.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as resp:
                reply = json.loads(resp.read())
            return str(reply["choices"][0]["message"]["content"])
        except (OSError, KeyError, IndexError, ValueError) as exc:
            raise SaekitError(
                f"The judge endpoint {self.cfg.url} failed ({exc}); check judge.url and "
                "judge.model, or use backend: local."
            ) from exc

    def _ask_local(self, prompt: str) -> str:
        from saekit.steering.generate import generate

        if self._local is None:
            from saekit.models.hooks import build_hooked_model
            from saekit.models.loading import OFFLINE_DEFAULT, ModelConfig

            spec = ModelConfig(name=self.cfg.model or OFFLINE_DEFAULT, backend="hf")
            self._local = build_hooked_model(spec)
        tok = self._local.tokenizer
        messages = [{"role": "user", "content": prompt}]
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:
            ids = tok(f"User: {prompt}\nAssistant:", add_special_tokens=True)["input_ids"]
        (out,) = generate(self._local, [list(ids)], self.cfg.max_new_tokens)
        return str(tok.decode(out, skip_special_tokens=True))
