"""Frozen dataclass configs ↔ YAML recipes ↔ dotted command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from saekit.activations.cache import CacheConfig
from saekit.activations.stream import StreamConfig
from saekit.config import (
    add_config_flags,
    field_docs,
    flag_overrides,
    from_dict,
    load_recipe,
    save_yaml,
    to_dict,
)
from saekit.data.text import DataConfig
from saekit.errors import SaekitError
from saekit.models.loading import ModelConfig
from saekit.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def parse_flags(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Recipe)
    return flag_overrides(parser.parse_args(argv))


def test_yaml_sections_map_onto_the_dataclasses(tmp_path):
    path = write(
        tmp_path,
        """
model: {name: ./my-model, backend: hf}
data: {source: corpus.jsonl, context_size: 64, max_documents: null}
stream:
  hooks: [model.layers.3, model.layers.5]
  batch_size: 1024
  max_norm_multiple: 10
cache: {dtype: bfloat16}
""",
    )
    recipe = load_recipe(Recipe, path)
    assert recipe.model.backend == "hf" and recipe.model.dtype == "float32"
    assert recipe.data.context_size == 64 and recipe.data.max_documents is None
    assert recipe.stream.hooks == ("model.layers.3", "model.layers.5")
    assert recipe.stream.max_norm_multiple == 10.0
    assert isinstance(recipe.stream.max_norm_multiple, float)
    assert recipe.cache.dtype == "bfloat16"


def test_a_single_hook_string_becomes_a_tuple(tmp_path):
    recipe = load_recipe(Recipe, write(tmp_path, "stream: {hooks: blocks.3.hook_resid_post}"))
    assert recipe.stream.hooks == ("blocks.3.hook_resid_post",)


def test_round_trip_through_yaml(tmp_path):
    recipe = load_recipe(
        Recipe,
        None,
        {"stream.hooks": ["a", "b"], "data.max_documents": 9, "stream.max_norm_multiple": 4.5},
    )
    path = tmp_path / "saved.yaml"
    save_yaml(recipe, path)
    assert load_recipe(Recipe, path) == recipe
    assert yaml.safe_load(path.read_text())["stream"]["hooks"] == ["a", "b"]
    assert from_dict(Recipe, to_dict(Recipe())) == Recipe()


def test_unknown_key_names_the_key_and_the_valid_keys(tmp_path):
    path = write(tmp_path, "stream: {batch_sise: 8}")
    with pytest.raises(SaekitError) as err:
        load_recipe(Recipe, path)
    message = str(err.value)
    assert "'stream.batch_sise'" in message
    assert "Did you mean 'batch_size'" in message
    assert "Valid keys: hooks, batch_size, buffer_sequences" in message


def test_unknown_section_lists_the_sections(tmp_path):
    with pytest.raises(SaekitError, match="Unknown key 'trainer'.*Valid keys: model, data, stream"):
        load_recipe(Recipe, write(tmp_path, "trainer: {lr: 1}"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("stream: {batch_size: lots}", r"stream.batch_size: expected int, got 'lots'"),
        ("stream: {batch_size: 8.5}", r"stream.batch_size: expected int, got 8.5"),
        ("stream: {batch_size: true}", r"stream.batch_size: expected int, got True"),
        ("data: {prepend_bos: 1}", r"data.prepend_bos: expected true or false, got 1"),
        (
            "model: {backend: jax}",
            r"model.backend: 'jax' is not one of \['transformer_lens', 'hf'\]",
        ),
        ("stream: {max_norm_multiple: high}", r"stream.max_norm_multiple: expected float"),
        ("stream: {hooks: {a: 1}}", r"stream.hooks: expected a list"),
        ("stream: 5", r"stream: expected a mapping of StreamConfig fields"),
    ],
)
def test_wrong_types_name_the_field(tmp_path, text, match):
    with pytest.raises(SaekitError, match=match):
        load_recipe(Recipe, write(tmp_path, text))


def test_validation_errors_name_the_section(tmp_path):
    with pytest.raises(SaekitError, match="stream.batch_size must be ≥ 1, got 0"):
        load_recipe(Recipe, write(tmp_path, "stream: {batch_size: 0}"))


def test_unreadable_recipes(tmp_path):
    with pytest.raises(SaekitError, match="not found"):
        load_recipe(Recipe, tmp_path / "missing.yaml")
    with pytest.raises(SaekitError, match="not valid YAML"):
        load_recipe(Recipe, write(tmp_path, "stream: {batch_size: [8"))
    with pytest.raises(SaekitError, match="must be a mapping of sections"):
        load_recipe(Recipe, write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("text", ["", "# all commented out\n", "{}\n"])
def test_an_empty_recipe_is_refused_not_run_with_every_default(tmp_path, text):
    with pytest.raises(SaekitError) as err:
        load_recipe(Recipe, write(tmp_path, text))
    message = str(err.value)
    assert "is empty" in message and "2,000,000 tokens into runs/quickstart" in message
    # Following the advice: start from a recipe of recipes/.
    named = message.split("`")[1]
    assert named == "recipes/smollm2-quickstart.yaml"
    assert load_recipe(Recipe, REPO / named).train.output_dir == "runs/smollm2-quickstart"


def test_flags_override_the_recipe(tmp_path):
    path = write(tmp_path, "stream: {batch_size: 4096, hooks: [x]}\nmodel: {backend: hf}")
    overrides = parse_flags(
        [
            "--stream.batch_size",
            "8",
            "--stream.hooks",
            "[a, b]",
            "--stream.max_norm_multiple",
            "null",
            "--data.source",
            "c.jsonl",
        ]
    )
    assert overrides == {
        "stream.batch_size": 8,
        "stream.hooks": ["a", "b"],
        "stream.max_norm_multiple": None,
        "data.source": "c.jsonl",
    }
    recipe = load_recipe(Recipe, path, overrides)
    assert recipe.stream.batch_size == 8 and recipe.stream.hooks == ("a", "b")
    assert recipe.model.backend == "hf"  # untouched keys keep the recipe's value
    assert recipe.data.source == "c.jsonl"


def test_flag_values_are_type_checked(tmp_path):
    with pytest.raises(SaekitError, match="stream.batch_size: expected int, got 'eight'"):
        load_recipe(Recipe, None, parse_flags(["--stream.batch_size", "eight"]))


def test_flags_only_exist_for_real_fields():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Recipe)
    with pytest.raises(SystemExit):
        parser.parse_args(["--stream.batch_sise", "8"])


def test_every_field_has_a_docstring_that_becomes_its_help():
    for cls in [Recipe, ModelConfig, DataConfig, StreamConfig, CacheConfig]:
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Recipe)
    help_text = " ".join(parser.format_help().split())
    assert "--stream.batch_size V Tokens per served batch. (default: 4096)" in help_text


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Recipe().stream.batch_size = 8  # type: ignore[misc]


def test_scientific_notation_without_a_dot_is_a_float(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-3` as a string; users write learning rates that way."""
    from saekit.train.config import TrainConfig

    recipe = load_recipe(Recipe, write(tmp_path, "train: {lr: 1e-3, grad_clip_norm: 2E+1}"))
    assert recipe.train.lr == 1e-3 and recipe.train.grad_clip_norm == 20.0
    for text in ("nan", "inf", "1e", "e3", "0x10"):
        with pytest.raises(SaekitError, match="expected float"):
            from_dict(TrainConfig, {"lr": text})
