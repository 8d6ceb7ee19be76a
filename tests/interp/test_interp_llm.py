"""The optional LLM scorer: reply parsing, an oracle judge scores planted features perfectly and
a constant judge at chance, and the local-model path runs on the tiny HF Llama (no network)."""

from __future__ import annotations

import re

import pytest
from planted_corpus import PLANTED, VOCAB, S, batches, planted_codes

from saekit.errors import SaekitError
from saekit.interp import InterpConfig
from saekit.interp.llm import LocalChat, make_client, parse_answers, score_with_llm
from saekit.interp.run import collect_codes
from saekit.interp.scores import Scorer


def text(tid: int) -> str:
    return f" w{tid};"


class Oracle:
    """Answers from the passages and the explanation alone, as a perfect judge would."""

    name = "oracle"

    def complete(self, system: str, user: str) -> str:
        grams = set(re.findall(r'"([^"]*)"', user.split("\n", 1)[0]))
        passages = re.findall(r"Passage \d+: (.*)", user)
        if "highlight" in system:
            marked = [re.findall(r"<<(.*?)>>", p) for p in passages]
            answers = [int(bool(m) and all(t in grams for t in m)) for m in marked]
        else:
            answers = [int(any(g in p for g in grams)) for p in passages]
        return f"Sure: {answers}"


class Constant:
    name = "yes-man"

    def complete(self, system: str, user: str) -> str:
        return "[" + ", ".join("1" for _ in re.findall(r"Passage \d+:", user)) + "]"


@pytest.fixture(scope="module")
def planted_scorer():
    cfg = InterpConfig(example_len=8, reservoir=48, controls=())
    data = collect_codes(batches(*planted_codes(), shuffle=False), S, VOCAB, cfg)["codes"]
    scorer = Scorer(data, cfg, VOCAB)
    return scorer, scorer.score(list(range(S)), progress=False)


def test_parse_answers():
    assert parse_answers("[1, 0, 1]", 3) == [1, 0, 1]
    assert parse_answers("Answer: [0,1] then [1, 1, 0]", 3) == [1, 1, 0]
    assert parse_answers("1 0 0 1", 4) == [1, 0, 0, 1]
    assert parse_answers("I am not sure", 2) is None
    assert parse_answers("[1, 0]", 3) is None


def test_oracle_judge_is_perfect_and_constant_judge_is_chance(planted_scorer):
    scorer, scores = planted_scorer
    feats = list(range(PLANTED))
    oracle = score_with_llm(
        scorer, {s: dict(v) for s, v in scores.items()}, feats, Oracle(), text, n_examples=10
    )
    assert oracle["scored"] == PLANTED and oracle["unparsed_replies"] == 0
    assert oracle["detection_mean"] == 1.0 and oracle["fuzzing_mean"] == 1.0
    const = score_with_llm(
        scorer, {s: dict(v) for s, v in scores.items()}, feats, Constant(), text, n_examples=10
    )
    assert const["detection_mean"] == 0.5 and const["fuzzing_mean"] == 0.5


def test_local_model_path_runs_offline(planted_scorer, hf_model, tokenizer):
    scorer, scores = planted_scorer
    scores = {s: dict(v) for s, v in scores.items()}
    client = LocalChat(hf_model, tokenizer, max_new_tokens=8)
    assert isinstance(client.complete("Say 1.", "Passage 1: w1"), str)
    out = score_with_llm(scorer, scores, [0, 1], client, text, n_examples=5)
    assert out["scored"] == 2 and out["scorer"].startswith("local")
    # The tiny model's vocabulary has no digits or brackets: every reply (2 features × 2 tasks
    # × 2 prompts of 5 passages) is unparsable, counted and scored as all-0, i.e. chance.
    assert out["unparsed_replies"] == 8
    for s in (0, 1):
        assert scores[s]["llm_detection"] == 0.5 and scores[s]["llm_fuzzing"] == 0.5


def test_bad_llm_spec_is_a_clear_error():
    with pytest.raises(SaekitError, match="use 'local' or an http"):
        make_client("gpt4")
    with pytest.raises(SaekitError, match="--llm-model"):
        make_client("http://localhost:9/v1")
    with pytest.raises(SaekitError, match="LLM endpoint .* failed"):
        make_client("http://127.0.0.1:9/v1", "m").complete("s", "u")  # port 9: nothing listens
