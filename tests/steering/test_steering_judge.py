"""The optional judge: rating parsing, an OpenAI-compatible endpoint (a local fake), caching,
and the local-model backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from saekit.errors import SaekitError
from saekit.steering.judge import Judge, JudgeConfig, parse_rating


def test_parse_rating():
    assert parse_rating("fine. Rating: [[2]]") == 2.0
    assert parse_rating("Rating: [[1]] then Rating: [[0]]") == 0.0  # the last one counts
    assert parse_rating("Rating: [[1.5]]") == 1.5
    assert parse_rating("I'd say [[1]]") == 1.0
    assert parse_rating("Rating: 2") == 2.0
    assert parse_rating("Rating: [[7]]") == 0.0  # out of range
    assert parse_rating("no idea") == 0.0


def test_openai_backend_rates_and_caches(steer_fake_endpoint, tmp_path: Path):
    url, asked = steer_fake_endpoint
    cache = tmp_path / "judge.jsonl"
    cfg = JudgeConfig(backend="openai", url=url, model="fake", cache=str(cache))
    judge = Judge(cfg)
    assert judge.rate("cats", "the cat sat") == {
        "concept": 2.0,
        "fluency": 1.0,
        "score": pytest.approx(4 / 3),
    }
    assert judge.rate("cats", "a dog ran")["score"] == 0.0  # concept 0 → harmonic mean 0
    assert len(asked) == 4 and asked[0]["temperature"] == 0 and asked[0]["model"] == "fake"
    again = Judge(cfg)  # answers come from the cache file: nothing is asked twice
    assert again.rate("cats", "the cat sat")["concept"] == 2.0
    assert len(asked) == 4


def test_judge_config_errors():
    with pytest.raises(SaekitError, match="off"):
        Judge(JudgeConfig())
    with pytest.raises(SaekitError, match="url"):
        Judge(JudgeConfig(backend="openai"))
    judge = Judge(JudgeConfig(backend="openai", url="http://127.0.0.1:9/v1", model="m"))
    with pytest.raises(SaekitError, match="endpoint"):
        judge.ask("hello")


def test_local_backend_runs_offline(tiny_model_dir: Path):
    judge = Judge(JudgeConfig(backend="local", model=str(tiny_model_dir), max_new_tokens=4))
    out = judge.rate("cats", "the cat sat")
    # The tiny model's vocabulary has no digits or brackets, so no answer parses: as in
    # AxBench, an unparsable rating counts 0.
    assert out == {"concept": 0.0, "fluency": 0.0, "score": 0.0}


@pytest.mark.e2e
def test_local_smollm2_judge_answers():
    judge = Judge(JudgeConfig(backend="local", max_new_tokens=48))
    answer = judge.ask("Is 'The cat sat on the mat.' fluent English? End with 'Rating: [[2]]'.")
    assert isinstance(answer, str) and answer.strip()
