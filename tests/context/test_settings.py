"""The ``[context]`` section: what a config leaves unset is filled in for its embedder."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from somabrain.config import SomaConfig, load
from somabrain.context.adaptation import PRIOR_PULL, AdaptationSettings
from somabrain.context.settings import ContextSettings, tenant_default_weights
from somabrain.memory.associations import ASSOCIATION, EMBEDDER_DEFAULTS, AssociationSettings
from somabrain.memory.views import default_weights, view_params
from somabrain.supervision.config import ConfigError


def _config(tmp_path: Path, text: str, **environ: str) -> SomaConfig:
    path = tmp_path / "soma.toml"
    path.write_text(text)
    return load(path, environ=environ)


@pytest.mark.parametrize("embedder", ["builtin", "minilm"])
def test_what_the_config_leaves_unset_is_the_embedders(tmp_path: Path, embedder: str) -> None:
    config = _config(tmp_path, f'[context]\nembedder = "{embedder}"\n')
    weight, neighbours = EMBEDDER_DEFAULTS[embedder]
    ctx = config.context
    assert ctx.adaptation.prior_pull == PRIOR_PULL[embedder]
    assert (ctx.associations.weight, ctx.associations.neighbours) == (weight, neighbours)
    # what the memory actor and the search worker build their association view from
    params = view_params(config.memory.extra_views, ctx.views, ctx.associations)
    assert params.association is not None and params.association.neighbours == neighbours
    # every tenant's starting weights carry the association view at the embedder's fraction
    start = tenant_default_weights(config)
    others = sum(default_weights(embedder).values())
    assert start[ASSOCIATION] == pytest.approx(weight * others)


def test_the_embedders_defaults_differ() -> None:
    # else the per-embedder defaults (and this file) have no reason to exist
    assert PRIOR_PULL["builtin"] != PRIOR_PULL["minilm"]
    assert EMBEDDER_DEFAULTS["builtin"] != EMBEDDER_DEFAULTS["minilm"]


def test_what_the_config_sets_is_kept(tmp_path: Path) -> None:
    text = (
        '[context]\nembedder = "minilm"\n'
        "[context.adaptation]\nprior_pull = 0.2\n"
        "[context.associations]\nweight = 0.7\n"
    )
    config = _config(tmp_path, text, SOMA_CONTEXT__ASSOCIATIONS__NEIGHBOURS="9")
    ctx = config.context
    assert ctx.adaptation.prior_pull == 0.2
    assert (ctx.associations.weight, ctx.associations.neighbours) == (0.7, 9)


def test_a_bad_value_names_its_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"context\.adaptation\.prior_pull"):
        _config(tmp_path, "[context.adaptation]\nprior_pull = 1.5\n")


def test_settings_built_in_code_are_filled_in_on_request() -> None:
    ctx = msgspec.structs.replace(ContextSettings(), embedder="minilm")
    # unset until asked: the hashing embedder's values stand in
    assert ctx.adaptation.prior_pull is None and ctx.adaptation.pull == PRIOR_PULL["builtin"]
    assert ctx.associations.neighbour_count == EMBEDDER_DEFAULTS["builtin"][1]
    tuned = ctx.for_embedder()
    assert tuned.adaptation.pull == PRIOR_PULL["minilm"]
    assert (tuned.associations.view_weight, tuned.associations.neighbour_count) == (
        EMBEDDER_DEFAULTS["minilm"]
    )
    assert tuned.for_embedder() == tuned  # filled in once: a second call changes nothing
    explicit = AdaptationSettings(prior_pull=0.0).for_embedder("minilm")
    assert explicit.pull == 0.0  # 0 is a value (no pull), not "unset"
    assert AssociationSettings(neighbours=1).for_embedder("minilm").neighbours == 1
