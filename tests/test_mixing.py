"""One definition of each mix mode: the query layer, the refiners' blend source and the ComfyUI node
give the same numbers for the same inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from luna_core.ask.boxes import Box, BoxError, load_boxes
from luna_core.ask.mixing import MODES, Parts, PromptMix, mix, mix_side, typed_parts
from luna_core.errors import QueryError

rng = np.random.default_rng(0)


def _parts(tokens: int = 77) -> Parts:
    return Parts(
        rng.normal(size=(tokens, 8)).astype(np.float32),
        rng.normal(size=4).astype(np.float32),
        rng.normal(size=(tokens, 8)).astype(np.float32),
        rng.normal(size=4).astype(np.float32),
    )


def test_each_mode_mixes_both_sides_by_one_rule():
    answer, typed = _parts(), _parts()
    assert mix(answer, typed, "replace", 0.3) is answer
    blended = mix(answer, typed, "blend", 0.3)
    for got, t, a in zip(blended, typed, answer):
        np.testing.assert_allclose(got, 0.7 * t + 0.3 * a, rtol=1e-6)
    joined = mix(answer, typed, "concat", 0.3)
    assert joined.embeds.shape == (154, 8) and joined.negative.shape == (154, 8)
    np.testing.assert_array_equal(joined.embeds[:77], typed.embeds)
    np.testing.assert_array_equal(joined.negative[77:], answer.negative)
    np.testing.assert_array_equal(joined.pooled, typed.pooled)
    np.testing.assert_array_equal(joined.negative_pooled, typed.negative_pooled)


def test_without_a_typed_negative_the_negative_side_mixes_with_zeros():
    answer = _parts()
    typed = typed_parts((answer.embeds * 0 + 1, answer.pooled * 0 + 1), None)
    blended = mix(answer, typed, "blend", 0.25)
    np.testing.assert_allclose(blended.negative, 0.25 * answer.negative, rtol=1e-6)
    np.testing.assert_allclose(blended.embeds, 0.75 + 0.25 * answer.embeds, rtol=1e-6)


@pytest.mark.parametrize("mode", ["blend", "concat"])
def test_the_comfyui_node_mixes_as_the_core_does(mode):
    from comfyui_luna.vault_nodes import LunaBlend

    answer, typed = _parts(), _parts()
    vault = [
        [
            torch.from_numpy(answer.embeds[None]),
            {"pooled_output": torch.from_numpy(answer.pooled[None])},
        ]
    ]
    conditioning = [
        [
            torch.from_numpy(typed.embeds[None]),
            {"pooled_output": torch.from_numpy(typed.pooled[None])},
        ]
    ]
    (((tokens, extra),),) = LunaBlend().blend(conditioning, vault, alpha=0.4, mode=mode)
    expected = mix(answer, typed, mode, 0.4)
    np.testing.assert_allclose(tokens[0].numpy(), expected.embeds, rtol=1e-6)
    np.testing.assert_allclose(extra["pooled_output"][0].numpy(), expected.pooled, rtol=1e-6)
    side = mix_side(
        typed.negative, typed.negative_pooled, answer.negative, answer.negative_pooled, mode, 0.4
    )
    np.testing.assert_allclose(side[0], expected.negative, rtol=1e-6)


def test_bad_modes_and_shares_are_query_errors():
    from luna_core.ask.mixing import check_mix

    with pytest.raises(QueryError, match="not one of replace, blend, concat"):
        check_mix("average", 0.5, "a cat")
    with pytest.raises(QueryError, match="within"):
        check_mix("blend", 1.5, "a cat")
    with pytest.raises(QueryError, match="give --prompt"):
        check_mix("concat", 0.5, None)
    assert MODES == ("replace", "blend", "concat")


def test_one_box_type_and_parser(tmp_path):
    assert Box.parse("1,2,3,4") == Box(1, 2, 3, 4) and str(Box(1, 2, 3, 4)) == "1,2,3,4"
    assert Box(1, 2, 3, 4).edges == (1, 2, 4, 6)
    with pytest.raises(BoxError, match="X,Y,W,H"):
        Box.parse("1,2,3")
    with pytest.raises(BoxError, match="outside the 10x10 image a.png"):
        Box(5, 5, 6, 1).check_within(10, 10, "a.png")
    (tmp_path / "b.json").write_text(
        '{"boxes": [[0, 0, 2, 2], {"x": 1, "y": 1, "width": 3, "height": 4}]}'
    )
    assert load_boxes(tmp_path / "b.json") == [Box(0, 0, 2, 2), Box(1, 1, 3, 4)]


def test_the_vault_and_the_refiner_blend_alike(indexed_home):
    from PIL import Image

    from luna_core.ask.vault_query import VaultQuery
    from luna_core.models.profiles import resolve_profile
    from luna_core.refine.conditioning import Conditioner
    from luna_core.refine.options import SourceSettings

    profile = resolve_profile("tiny", indexed_home.models_dir)
    vault = VaultQuery(indexed_home, profile)
    image = sorted(Path(indexed_home.roots()[0]).rglob("*_a1111_png.png"))[0]
    crops = [
        Image.open(image).convert("RGB").crop((0, 0, 48, 48)),
        Image.open(image).convert("RGB"),
    ]
    served = vault.condition_crops(
        crops, "vault", k=3, with_prompt=PromptMix("a red fox", "blurry", "blend", 0.3)
    )
    refined = Conditioner(
        vault, SourceSettings("blend", prompt="a red fox", negative_prompt="blurry", alpha=0.3, k=3)
    ).condition(crops)
    for i, item in enumerate(refined):
        np.testing.assert_allclose(served.prompt_embeds[i], item.prompt_embeds, atol=1e-5)
        np.testing.assert_allclose(
            served.negative_prompt_embeds[i], item.negative_prompt_embeds, atol=1e-5
        )
        np.testing.assert_allclose(
            served.negative_pooled_prompt_embeds[i], item.negative_pooled_prompt_embeds, atol=1e-5
        )


def test_conditionings_of_different_lengths_meet_by_repetition():
    from luna_core.ask.mixing import aligned, common_length, repeat_to

    one, two, three = (
        np.arange(77 * c * 2, dtype=np.float32).reshape(77 * c, 2) for c in (1, 2, 3)
    )
    assert (
        common_length([77, 154]) == 154
        and common_length([154, 231]) == 462
        and common_length([77]) == 77
    )
    a, b = aligned([one, two])
    assert a.shape == b.shape == (154, 2) and np.array_equal(a[77:], one) and np.array_equal(b, two)
    assert repeat_to(three, 462).shape == (462, 2)
    blended = mix(Parts(two, two[0], two, two[0]), Parts(one, one[0], one, one[0]), "blend", 0.5)
    assert blended.embeds.shape == (154, 2) and np.allclose(
        blended.embeds[77:], (one + two[77:]) / 2
    )


def test_a_long_prompt_s_neighbour_answers_with_every_chunk(indexed_home):
    import duckdb

    from luna_core.ask.vault_query import VaultQuery
    from luna_core.models.profiles import resolve_profile

    with duckdb.connect(str(indexed_home.catalog_path), read_only=True) as con:
        found = con.execute("""SELECT image_id, vision_row, prompt_row, prompt_chunks FROM library
                               WHERE prompt_chunks > 1 ORDER BY image_id LIMIT 1""").fetchone()
    assert found, "the sample library holds prompts longer than one chunk"
    image_id, vision_row, prompt_row, chunks = found
    vault = VaultQuery(indexed_home, resolve_profile("tiny", indexed_home.models_dir))
    from luna_core.vault.segments import open_vision_store

    embedding = open_vision_store(indexed_home, vault.profile).read(
        "embeds", np.array([vision_row])
    )[0]
    embeds, pooled, negative, _, neighbors = vault.vault_answer(embedding.astype(np.float32), k=1)
    assert (
        neighbors[0].image_id == image_id
        and embeds.shape[0] == 77 * chunks
        and negative.shape == embeds.shape
    )
    rows = vault.text_store.read_rows("prompt_embeds", np.arange(prompt_row, prompt_row + chunks))
    assert np.allclose(embeds, rows.reshape(-1, rows.shape[-1]), atol=1e-3)


def test_a_typed_prompt_is_read_by_the_prompt_syntax_setting(indexed_home, monkeypatch):
    from luna_core.ask.vault_query import VaultQuery
    from luna_core.models.profiles import resolve_profile

    vault = VaultQuery(indexed_home, resolve_profile("tiny", indexed_home.models_dir))
    weighted, _ = vault.encode_prompt("a (red:1.5) fox")
    literal, _ = vault.encode_prompt("a (red:1.5) fox", "literal")
    assert weighted.shape == literal.shape == (77, 96) and not np.allclose(weighted, literal)
    long_text = ", ".join(f"a red fox number {i}" for i in range(30))
    assert vault.encode_prompt(long_text)[0].shape[0] >= 154
    monkeypatch.setenv("LUNA_PROMPT_SYNTAX", "literal")
    assert vault.encode_prompt(long_text)[0].shape[0] == 77
    image = sorted(Path(indexed_home.roots()[0]).rglob("*_a1111_png.png"))[0]
    answer = vault.condition(image, k=3, prompt=long_text, mode="concat")
    assert (
        answer.prompt_embeds.shape[1] >= 154
        and answer.negative_prompt_embeds.shape == answer.prompt_embeds.shape
    )
