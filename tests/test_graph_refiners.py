"""Luna Chess Refiner and Luna Semantic Detailer on a graph's MODEL, VAE and CLIP, against the
ComfyUI double (tests/comfy_double.py); scripts/comfyui-check runs them in a real ComfyUI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfyui_luna.graph_conditioning import Item, PromptEncodings, batch_conditioning
from luna_core.errors import QueryError
from luna_core.prompts.comfy_render import comfy_texts
from luna_core.prompts.parsers import parse
from tests import comfy_double

WRITERS_PROMPTS = [
    ("a (red:1.3) fox, [snow], ((forest))", "a1111"),
    ("a photo of a \\(cat\\) BREAK (dog:0.8) in a field", "a1111"),
    ("(masterpiece:1.2), (a\\(b\\):1.1) lake", "comfy"),
    ("{{castle}}, [[fog]], river", "novelai"),
    ("a cat++ and (dog)1.3, (red hat)--", "compel"),
]


@pytest.mark.parametrize("text, syntax", WRITERS_PROMPTS)
def test_a_writers_prompt_written_in_comfyui_syntax_reads_back_to_its_pieces(text, syntax):
    """What ComfyUI's parser reads from the written text (Luna's reading of ComfyUI's rules,
    checked against ComfyUI's own code in test_writer_fixtures) is the writer's pieces and
    weights; each part between breaks is its own text."""
    parsed = parse(text, syntax)
    texts, _ = comfy_texts(parsed)
    read = [parse(t, "comfy") for t in texts]
    assert len(texts) == len(parsed.breaks) + 1 if syntax != "compel" else len(texts) == 1

    def weights(pieces):
        return [(round(w, 9), c) for p in pieces for c, w in ((ch, p.weight) for ch in p.text)
                if not c.isspace()]  # fmt: skip

    got = [w for r in read for w in weights(r.pieces)]
    if syntax == "compel":
        from compel.prompt_parser import PromptParser

        fragments = PromptParser().parse_conjunction(parsed.plain).prompts[0].children
        want = [(round(f.weight, 9), c) for f in fragments for c in f.text if not c.isspace()]
    else:
        want = weights(parsed.pieces)
    assert got == want


@pytest.fixture
def double(monkeypatch, tiny_models):
    comfy_double.install(monkeypatch)
    return comfy_double.models(tiny_models)


def _items(clip, texts: list[str]) -> list[Item]:
    cache = PromptEncodings()
    out = []
    for text in texts:
        tokens, pooled = cache.encode(clip, (text,))
        negative, negative_pooled = cache.encode(clip, ("blurry",))
        out.append(Item(tokens, pooled, negative, negative_pooled))
    return out


LONG = ", ".join(["a red fox in the snow under a pale winter sky"] * 9)


def _pass(model, vae, items, pixels, picked, sizes, batch_cap=0):
    from comfyui_luna.graph_sampling import PassSettings, refine_pass

    pos = batch_conditioning([items[i].tokens for i in picked], [items[i].pooled for i in picked])
    neg = batch_conditioning(
        [items[i].negative for i in picked], [items[i].negative_pooled for i in picked]
    )
    settings = PassSettings(3, 5.0, "euler", "normal", 0.6, batch_cap)
    return refine_pass(
        model, vae, pixels[picked], pos, neg, [sizes[i] for i in picked], [11 + i for i in picked],
        settings,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_item_refined_in_a_batch_of_four_equals_it_refined_alone(
    monkeypatch, tiny_models, dtype
):
    """One sampler call for 4 items (prompts of 1 and 2 chunks, rows met at 2 by repetition,
    their own sizes and noise) gives each what a call for it alone gives: within 1e-5 in float32,
    1e-12 in float64 (bit for bit where the rows need no repetition)."""
    comfy_double.install(monkeypatch)
    model, clip, vae = comfy_double.models(tiny_models, dtype)
    items = _items(clip, ["a red fox", LONG, "a castle", "a river"])
    assert [int(i.tokens.shape[0]) for i in items] == [77, 154, 77, 77]
    pixels = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    sizes = [(64, 96, 8 * i, 16, 32, 32) for i in range(4)]
    with torch.no_grad():
        batched = _pass(model, vae, items, pixels, [0, 1, 2, 3], sizes)
        capped = _pass(model, vae, items, pixels, [0, 1, 2, 3], sizes, batch_cap=3)
        alone = [_pass(model, vae, items, pixels, [i], sizes)[0] for i in range(4)]
        short_rows = _pass(model, vae, items, pixels, [0, 2, 3], sizes)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    for i in range(4):
        assert float((batched[i] - alone[i]).abs().max()) <= tolerance
        assert float((capped[i] - alone[i]).abs().max()) <= tolerance
        assert float((batched[i] - pixels[i]).abs().max()) > 0.01  # it did refine
    if dtype == torch.float64:
        for row, i in enumerate([0, 2, 3]):
            assert torch.equal(short_rows[row], alone[i])
    assert float((alone[0] - alone[2]).abs().max()) > 0.01  # each item its own conditioning


def test_a_call_that_runs_out_of_memory_is_split_and_gives_the_same_items(double, monkeypatch):
    """ComfyUI's OOM exception from a call of 4 items: two calls of 2 (then of 1 if need be) give
    what the one call would have, and the progress bar ends full, not over."""
    import comfy.sample

    model, clip, vae = double
    items = _items(clip, ["a red fox", "a castle", "a river", "a lake"])
    pixels = torch.rand(4, 16, 16, 3, generator=torch.Generator().manual_seed(4))
    sizes = [(64, 64, 0, 8 * i, 16, 16) for i in range(4)]
    with torch.no_grad():
        whole = _pass(model, vae, items, pixels, [0, 1, 2, 3], sizes)
    sample, calls = comfy.sample.sample, []

    def small_memory(model, noise, *args, **kwargs):
        calls.append(noise.shape[0])
        if noise.shape[0] > 2:
            raise torch.OutOfMemoryError("the double's memory holds 2 items")
        return sample(model, noise, *args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", small_memory)
    comfy_double.BARS.clear()
    with torch.no_grad():
        split = _pass(model, vae, items, pixels, [0, 1, 2, 3], sizes)
    assert calls == [4, 2, 2]
    assert float((split - whole).abs().max()) <= 1e-5
    assert (comfy_double.BARS[0].done, comfy_double.BARS[0].total) == (12, 12)  # 4 items x 3 steps


def test_each_row_gets_its_own_size_conditioning_in_both_halves_of_the_cfg_batch(double):
    model, clip, vae = double
    items = _items(clip, ["a", "b", "c"])
    pixels = torch.rand(3, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    sizes = [(512, 768, 0, 0, 16, 16), (512, 768, 0, 256, 16, 16), (512, 768, 128, 512, 16, 16)]
    model.model.seen_y.clear()
    with torch.no_grad():
        _pass(model, vae, items, pixels, [0, 1, 2], sizes)
    y = model.model.seen_y[0]
    assert y.shape[0] == 6  # cond rows, then uncond rows
    for row in range(6):
        assert y[row, -6:].tolist() == [float(v) for v in sizes[row % 3]]
    # the MODEL the graph holds is left as it was: the wrapper lives on a clone
    assert "model_function_wrapper" not in model.model_options


@pytest.mark.slow
def test_chess_refiner_and_detailer_on_the_graph_models(double, indexed_home):
    """Both nodes on a built vault: every tile of a pass in one call, the neighbours' prompts
    encoded by the graph's CLIP (and cached), an IMAGE batch of 2 gives 2 results each equal to
    its own run, regions outside the masks untouched; the errors a person meets are clear."""
    from comfyui_luna.graph_nodes import LunaChessRefiner, LunaSemanticDetailer
    from comfyui_luna.inputs import widget_defaults

    model, clip, vae = double
    home = str(indexed_home.root)
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    chess = LunaChessRefiner()
    values = {**widget_defaults(LunaChessRefiner), "home": home, "grid": 2, "steps": 2, "k": 3}
    values.update(strength=0.5, sampler_name="euler")
    for name in ("image", "model", "vae", "clip"):
        values.pop(name, None)
    comfy_double.BARS.clear()
    with torch.no_grad():
        out, report = chess.refine(images, model, vae, clip, **values)
        first, _ = chess.refine(images[:1], model, vae, clip, **values)
    assert out.shape == images.shape
    assert "sampler calls: 4" in report  # two passes for each of two images
    # even cells, then odd, of 2x2: a bar over items x steps, filled step by step
    assert [(b.done, b.total) for b in comfy_double.BARS[:2]] == [(4, 4), (4, 4)]
    assert float((out[0] - first[0]).abs().max()) <= 1e-5  # never mixed with the other image
    assert float((out[0] - images[0]).abs().mean()) > 0.01
    encoded = len(clip.encoded)
    assert encoded > 0 and "encoded by the graph's CLIP" in report
    with torch.no_grad():
        chess.refine(images[:1], model, vae, clip, **values)
    assert len(clip.encoded) == encoded  # every prompt from the cache the second time

    detailer = LunaSemanticDetailer()
    dvalues = {k: v for k, v in values.items() if k != "grid"}
    dvalues.update(piece_mode="concat", crop_size=32)
    masks = torch.zeros(2, 64, 64)
    masks[0, 4:20, 6:22] = 1
    masks[1, 40:60, 36:58] = 1
    with torch.no_grad():
        detailed, report = detailer.detail(images[:1], model, vae, clip, masks=masks, **dvalues)
    changed = (detailed[0] - images[0]).abs().amax(-1) > 1e-6
    assert changed[4:20, 6:22].any() and changed[40:60, 36:58].any()
    assert not changed[30:36, :].any()  # between the two regions' crops: untouched
    assert "2 region(s) at 32x32" in report and "sampler calls: 1" in report

    with pytest.raises(QueryError, match="MASK batch is 32x32, the IMAGE 64x64"):
        detailer.detail(images[:1], model, vae, clip, masks=torch.ones(1, 32, 32), **dvalues)
    with pytest.raises(QueryError, match="no region to refine"):
        detailer.detail(images[:1], model, vae, clip, masks=torch.zeros(1, 64, 64), **dvalues)
    with pytest.raises(QueryError, match="connect the regions"):
        detailer.detail(images[:1], model, vae, clip, **dvalues)
    not_sdxl = comfy_double.ModelPatcher(object(), model.latent_format)
    with pytest.raises(QueryError, match="not an SDXL-family model"):
        chess.refine(images, not_sdxl, vae, clip, **values)
    with pytest.raises(QueryError, match="source blend needs the typed prompt"):
        chess.refine(images, model, vae, clip, **{**values, "source": "blend"})
    comfy_double.INTERRUPTED["flag"] = True
    with pytest.raises(comfy_double.Interrupted):
        chess.refine(images, model, vae, clip, **values)


@pytest.mark.slow
def test_typed_blend_and_the_projector_source(double, projector_home):
    """source blend mixes the typed CONDITIONING in by alpha (alpha 0: the typed alone, as source
    prompt gives); source projector answers in the home's dialect and the report says so."""
    from comfyui_luna.graph_nodes import LunaChessRefiner
    from comfyui_luna.inputs import widget_defaults

    model, clip, vae = double
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    values = {**widget_defaults(LunaChessRefiner), "home": str(projector_home.root)}
    values.update(grid=1, steps=2, k=3, strength=0.5, sampler_name="euler")
    for name in ("image", "model", "vae", "clip"):
        values.pop(name, None)
    typed = [
        [clip.encode_from_tokens(clip.tokenize(t), return_pooled=True)[i] for i in (0, 1)]
        for t in ("a lighthouse", "blurry")
    ]
    positive = [[typed[0][0], {"pooled_output": typed[0][1]}]]
    negative = [[typed[1][0], {"pooled_output": typed[1][1]}]]
    node = LunaChessRefiner()
    with torch.no_grad():
        typed_only, _ = node.refine(
            image, model, vae, clip, **{**values, "source": "prompt"},
            positive=positive, negative=negative,
        )  # fmt: skip
        blend0, _ = node.refine(
            image, model, vae, clip, **{**values, "source": "blend", "alpha": 0.0},
            positive=positive, negative=negative,
        )  # fmt: skip
        vault, _ = node.refine(image, model, vae, clip, **values)
        projector = {**values, "source": "projector"}
        projected, report = node.refine(image, model, vae, clip, **projector)
    assert float((typed_only - blend0).abs().max()) <= 1e-5
    assert float((typed_only - vault).abs().max()) > 1e-3
    assert float((projected - vault).abs().max()) > 1e-3
    assert "home's text encoders' dialect" in report
    assert np.isfinite(projected.numpy()).all()
