"""Luna's conditioning against each writer's own code. The fixtures under tests/fixtures/writers/
were made by running AUTOMATIC1111's, ComfyUI's (a current core and one from before 2024-12-10)
and Fooocus's own prompt code, outside the project, on the tiny world's tokenizers and encoders,
over the prompts in prompts.txt: token ids, weights, and the conditioning (per-row norms of each
encoder's half, 16 columns, the pooled output). Only their outputs are committed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from luna_core.prompts.chunking import chunk_tokens
from luna_core.prompts.encode import encode_parsed
from luna_core.prompts.parsers import parse

FIXTURES = Path(__file__).parent / "fixtures" / "writers"
# Where Luna knowingly reads a prompt otherwise than A1111, and says so in the parse notes or
# the docs: each prompt below differs, and no other may.
A1111_KNOWN = {
    "a [cat:dog:0.5] in a [red|blue] hat": (
        "alternation changes every step: Luna encodes one choice"
    ),
    "tags_with_underscores, blue_eyes, long_hair, __wildcard__ left, hair_ornament": (
        "a wildcard left unexpanded is taken out, not encoded as text"
    ),
}


@pytest.fixture(scope="module")
def encoder(tiny_models):
    import torch

    from luna_core.models.encoders import SDXLTextEncoder

    return SDXLTextEncoder(str(tiny_models / "sdxl"), None, torch.device("cpu"), torch.float32)


def _differs(encoder, data, index, start) -> str | None:
    """Why prompt `index` differs from the writer's code, or None when it does not."""
    syntax = str(data["syntax"])
    count = int(data["chunk_counts"][index])
    rows = slice(start, start + count)
    parsed = parse(str(data["prompts"][index]), syntax)
    chunks = chunk_tokens((encoder.tokenizer, encoder.tokenizer_2), parsed)
    if chunks.count != count:
        return f"{chunks.count} chunks, the writer's code makes {count}"
    if (
        not (chunks.ids[0] == data["ids_l"][rows]).all()
        or not (chunks.ids[1] == data["ids_g"][rows]).all()
    ):
        return "other token ids"
    if not np.allclose(chunks.weights, data["weights"][rows], rtol=1e-6, atol=0):
        return "other weights"
    embeds, pooled = encode_parsed(encoder, parsed)
    width = encoder.widths[0]
    norms = np.stack(
        [np.linalg.norm(embeds[:, :width], axis=1), np.linalg.norm(embeds[:, width:], axis=1)], 1
    )
    tokens = slice(start * 77, (start + count) * 77)
    for got, want in (
        (norms, data["cond_norms"][tokens]),
        (embeds[:, data["columns"]], data["cond_cols"][tokens]),
        (pooled, data["pooled"][index]),
    ):
        error = np.abs(got - want).max() / np.abs(want).max()
        if not error <= 1e-5:
            return f"conditioning off by {error:.2e} of its scale"
    return None


@pytest.mark.parametrize("syntax", ["a1111", "comfy", "comfy_words", "fooocus"])
def test_luna_computes_what_each_writer_s_own_code_computes(encoder, tiny_models, syntax):
    data = dict(np.load(FIXTURES / f"{syntax}.npz"))
    data["syntax"] = syntax
    assert str(data["world"]) == tiny_models.name, (
        f"the fixtures were made on tiny world {data['world']}, this one is {tiny_models.name}: "
        "make them again from the writers' code (docs/usage.md#prompt-fidelity)"
    )
    start, differing = 0, {}
    for index in range(len(data["prompts"])):
        why = _differs(encoder, data, index, start)
        if why:
            differing[str(data["prompts"][index])] = why
        start += int(data["chunk_counts"][index])
    known = A1111_KNOWN if syntax == "a1111" else {}
    assert set(differing) == set(known), differing
    print(f"{syntax}: {len(data['prompts']) - len(differing)} of {len(data['prompts'])} equal")
