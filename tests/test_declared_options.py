"""One declaration per option set: `luna refine`, the refine_images launchpad and Luna Refine (and
`luna search`/`luna condition` and the conditioning nodes) are made from RefineOptions and
AskOptions. Each surface has every option but those it leaves out on purpose, with the same
default, the same bounds and the same refusal."""

from __future__ import annotations

import argparse

import pytest

from comfyui_luna import graph_nodes, refine_nodes, vault_nodes
from comfyui_luna.inputs import NONE, read_inputs, widget_defaults
from luna_assets.defs.refine import jobs
from luna_assets.launchpad import read_config
from luna_cli import refine as refine_cli
from luna_cli import vault as vault_cli
from luna_cli.declared import read_declared
from luna_cli.parser import build_parser
from luna_core.ask.ask_options import AskOptions
from luna_core.declare import declared
from luna_core.errors import LunaConfigError
from luna_core.refine.options import RefineOptions

# What each surface has beside the options: where the images come from, and where the home is.
CLI_REFINE_EXTRA = {"image", "out", "box", "boxes", "detections", "home", "device"}
JOB_EXTRA = {"images", "where", "limit", "boxes", "detections"}
NODE_REFINE_EXTRA = {"image", "home", "detections", "loras", "item_loras"}


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _cli_options(name: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _subparser(name)._actions if not isinstance(a, argparse._HelpAction)}


def _node_inputs(node) -> dict:
    types = node.INPUT_TYPES()
    return {**types["required"], **types.get("optional", {})}


def test_every_omission_is_an_option_with_a_reason():
    for options, omitted in (
        (RefineOptions, refine_cli.OMITTED),
        (RefineOptions, jobs.OMITTED),
        (RefineOptions, refine_nodes.OMITTED),
        (RefineOptions, graph_nodes.CHESS_OMITTED),
        (RefineOptions, graph_nodes.DETAIL_OMITTED),
        (AskOptions, vault_cli.SEARCH_OMITTED),
        (AskOptions, vault_cli.CONDITION_OMITTED),
        (AskOptions, vault_nodes.VAULT_OMITTED),
        (AskOptions, vault_nodes.BLEND_OMITTED),
    ):
        names = {one.name for one in declared(options)}
        assert set(omitted) <= names, set(omitted) - names
        assert all(reason.strip() for reason in omitted.values())


def test_the_three_refine_surfaces_have_the_same_options_and_defaults():
    options = declared(RefineOptions)
    names = {one.name for one in options}
    cli = _cli_options("refine")
    assert set(cli) == names - set(refine_cli.OMITTED) | CLI_REFINE_EXTRA
    launchpad = jobs.RefineConfig.model_fields
    assert set(launchpad) == names - set(jobs.OMITTED) | JOB_EXTRA
    node = _node_inputs(refine_nodes.LunaRefine)
    assert set(node) == names - set(refine_nodes.OMITTED) | NODE_REFINE_EXTRA
    # Nothing given anywhere: each surface reads back the declaration's own defaults.
    empty_cli = _subparser("refine").parse_args(["image.png", "--out", "o.png"])
    assert read_declared(RefineOptions, empty_cli, refine_cli.OMITTED) == RefineOptions()
    assert read_config(RefineOptions, jobs.RefineConfig(), jobs.OMITTED) == RefineOptions()
    widgets = widget_defaults(refine_nodes.LunaRefine)
    assert read_inputs(RefineOptions, widgets, refine_nodes.OMITTED) == RefineOptions()
    for one in options:
        if one.name not in jobs.OMITTED:
            default = launchpad[one.name].default
            assert (tuple(default) if one.repeated else default) == one.default, one.name
            assert launchpad[one.name].description == one.spec.help
        if one.name not in refine_cli.OMITTED and not one.repeated and one.kind is not bool:
            assert cli[one.name].default == one.default, one.name
            assert cli[one.name].help.startswith(one.spec.help.replace("%", "%%")), one.name


GRAPH_EXTRA = {
    "image", "model", "vae", "clip", "sampler_name", "scheduler", "home", "positive", "negative",
    "server_url",
}  # fmt: skip


def test_the_graph_refiners_take_the_refine_options_but_those_omitted(monkeypatch):
    from tests import comfy_double

    comfy_double.install(monkeypatch)  # the graph refiners list ComfyUI's samplers
    names = {one.name for one in declared(RefineOptions)}
    for node, omitted, extra in (
        (graph_nodes.LunaChessRefiner, graph_nodes.CHESS_OMITTED, set()),
        (graph_nodes.LunaSemanticDetailer, graph_nodes.DETAIL_OMITTED, {"crop_size", "masks",
                                                                         "detections"}),
    ):  # fmt: skip
        assert set(_node_inputs(node)) == names - set(omitted) | GRAPH_EXTRA | extra
        assert read_inputs(RefineOptions, widget_defaults(node), omitted) == RefineOptions()


def test_the_node_s_widgets_carry_the_declared_bounds():
    node = _node_inputs(refine_nodes.LunaRefine)
    for one in declared(RefineOptions):
        if one.name in refine_nodes.OMITTED:
            continue
        kind, extra = node[one.name][0], node[one.name][1]
        if one.spec.choices and not one.repeated:
            assert kind == ([NONE] if one.optional else []) + list(one.spec.choices)
        if one.spec.high is not None:
            assert extra["max"] == one.spec.high, one.name
        if one.spec.low is not None:
            low = extra["min"]
            assert low > one.spec.low if one.spec.low_open else low == one.spec.low, one.name
        assert extra["tooltip"].startswith(one.spec.help), one.name
    assert node["grid"][1]["default"] == RefineOptions.grid, "the node's grid is the declared one"


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("lora_cap", 0, "lora_cap must be at least 1"),
        ("strength", 0.0, "strength must be over 0"),
        ("steps", 0, "steps must be at least 1"),
        ("alpha", 1.5, "alpha must be at most 1"),
        ("k", 0, "k must be at least 1"),
        ("composition_blocks", ("down", "sideways"), "composition_blocks must be one of"),
    ],
)
def test_a_value_out_of_bounds_is_refused_alike_on_every_surface(name, value, message):
    """The same refusal from the command line, the launchpad and the node: one check."""
    flag = {one.name: one.flag for one in declared(RefineOptions)}[name]
    as_text = ",".join(value) if isinstance(value, tuple) else str(value)
    args = _subparser("refine").parse_args(["i.png", "--out", "o.png", flag, as_text])
    from_cli = read_declared(RefineOptions, args, refine_cli.OMITTED)
    config_value = list(value) if isinstance(value, tuple) else value
    from_job = read_config(RefineOptions, jobs.RefineConfig(**{name: config_value}), jobs.OMITTED)
    widgets = {
        **widget_defaults(refine_nodes.LunaRefine),
        name: as_text if isinstance(value, tuple) else value,
    }
    from_node = read_inputs(RefineOptions, widgets, refine_nodes.OMITTED)
    assert from_cli == from_job == from_node
    for options in (from_cli, from_job, from_node):
        with pytest.raises(LunaConfigError, match=message):
            options.settings()


def test_the_ask_surfaces_share_the_declared_defaults():
    names = {one.name for one in declared(AskOptions)}
    condition = _cli_options("condition")
    assert names <= set(condition)
    search = _cli_options("search")
    assert names & set(search) == names - set(vault_cli.SEARCH_OMITTED)
    vault = _node_inputs(vault_nodes.LunaVaultConditioning)
    assert names & set(vault) == names - set(vault_nodes.VAULT_OMITTED)
    blend = _node_inputs(vault_nodes.LunaBlend)
    assert set(blend["mode"][0]) == set(vault_nodes.BLEND_MODES)
    widgets = {**widget_defaults(vault_nodes.LunaVaultConditioning)}
    assert read_inputs(AskOptions, widgets, vault_nodes.VAULT_OMITTED) == AskOptions()
    parsed = _subparser("condition").parse_args(["i.png", "--out", "o.safetensors"])
    assert read_declared(AskOptions, parsed, vault_cli.CONDITION_OMITTED) == AskOptions()
    with pytest.raises(LunaConfigError, match="k must be at least 1"):
        read_inputs(AskOptions, {**widgets, "k": 0}, vault_nodes.VAULT_OMITTED).check()
