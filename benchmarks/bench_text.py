"""Prompt fidelity's cost, measured side by side in one run.

# parsed + encoded vs literal prompts/s on the tiny encoders, the parser alone on 500k prompts, and
# the share of a sample library's prompts the parse changes
.venv/bin/python benchmarks/bench_text.py --prompts 500000

# the encoding side at SDXL's real widths (CLIP ViT-L + OpenCLIP ViT-bigG architecture, RANDOM
# weights: speed only) so the parser's share is measured against the encoding it rides on
.venv/bin/python benchmarks/bench_text.py --encoder sdxl-random --encode-prompts 32
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from luna_core.home.home import LunaHome
from luna_core.ingest.run import IngestOptions, ingest
from luna_core.prompts.chunking import chunk_tokens
from luna_core.prompts.encode import apply_weights, encode_many
from luna_core.prompts.parsers import parse
from luna_core.prompts.syntax import syntax_for
from luna_core.samples import make_sample_library
from luna_core.vault.codec import CODECS
from luna_core.vault.segments import store_bytes
from luna_core.vault.store import TEXT_LAYOUT, RowStore

WORDS = (
    "portrait",
    "red",
    "dress",
    "forest",
    "light",
    "detailed",
    "castle",
    "river",
    "cinematic",
    "soft",
    "sky",
    "golden hour",
    "masterpiece",
    "best quality",
    "1girl",
    "smile",
    "rain",
    "neon",
    "city",
    "night",
)


def synthetic_prompts(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(text, syntax) prompts shaped like people's: weights, nested brackets, LoRA tags, BREAK,
    long tails."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        parts = []
        for _ in range(rng.randint(6, 60)):
            word = rng.choice(WORDS)
            roll = rng.random()
            if roll < 0.15:
                word = f"({word}:{rng.uniform(0.5, 1.6):.2f})"
            elif roll < 0.22:
                word = f"(({word}))"
            elif roll < 0.26:
                word = f"[{word}]"
            parts.append(word)
        if rng.random() < 0.3:
            parts.append(f"<lora:style_{rng.randint(1, 50)}:{rng.uniform(0.3, 1.0):.1f}>")
        if rng.random() < 0.1:
            parts.insert(len(parts) // 2, "BREAK")
        out.append((", ".join(parts), ("a1111", "comfy", "novelai")[i % 3]))
    return out


def _encoder(kind: str, work: Path):
    import torch

    from luna_core.models.encoders import SDXLTextEncoder
    from luna_core.models.profiles import tiny_profile
    from luna_core.models.tiny import ensure_tiny_models

    if kind == "tiny":
        return SDXLTextEncoder(
            tiny_profile(ensure_tiny_models()).sdxl_model, None, "cpu", torch.float32
        )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = work / "sdxl_random"
    tiny = ensure_tiny_models()
    # the real CLIP BPE vocabulary, as the tiny profile ships it
    for name in (
        "tokenizer",
        "tokenizer_2",
    ):
        shutil.copytree(
            Path(tiny_profile(tiny).sdxl_model) / name, folder / name, dirs_exist_ok=True
        )
    torch.manual_seed(0)
    CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
    ).save_pretrained(folder / "text_encoder")
    CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=20,
            projection_dim=1280,
            hidden_act="gelu",
        )
    ).save_pretrained(folder / "text_encoder_2")
    return SDXLTextEncoder(str(folder), None, "cpu", torch.float32)


def codec_figures(rows: np.ndarray, work: Path) -> dict[str, float]:
    """The text store's codecs side by side: the same chunk rows written through each, then read
    back. Bytes per chunk row on disk, and the token cosine error of int8 against what float16
    keeps."""
    figures, read_back = {}, {}
    for codec in CODECS:
        store = RowStore.open(
            work / f"{codec}.zarr", {"prompt_embeds": rows.shape[1:]}, TEXT_LAYOUT, codec=codec
        )
        store.write(0, {"prompt_embeds": rows})
        read_back[codec] = store.read_rows("prompt_embeds", np.arange(len(rows))).astype(np.float64)
        figures[f"{codec}_bytes_per_chunk_row"] = store_bytes(work / f"{codec}.zarr") / len(rows)
    plain, coded = read_back["float16"], read_back["int8"]
    error = 1 - (plain * coded).sum(-1) / (
        np.linalg.norm(plain, axis=-1) * np.linalg.norm(coded, axis=-1)
    )
    figures.update(
        int8_bytes_over_float16=figures["int8_bytes_per_chunk_row"]
        / figures["float16_bytes_per_chunk_row"],
        int8_max_token_cosine_error=float(error.max()),
        int8_mean_token_cosine_error=float(error.mean()),
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--prompts", type=int, default=500_000, help="prompts for the parser-alone timing"
    )
    parser.add_argument(
        "--encode-prompts", type=int, default=512, help="prompts for the encoding timings"
    )
    parser.add_argument("--encoder", choices=["tiny", "sdxl-random"], default="tiny")
    parser.add_argument(
        "--library", type=int, default=200, help="sample library images for the changed share"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="luna-bench-text-"))

    corpus = synthetic_prompts(args.prompts)
    started = time.perf_counter()
    for text, syntax in corpus:
        parse(text, syntax)
    parse_seconds = time.perf_counter() - started
    parse_per_prompt = parse_seconds / len(corpus)

    encoder = _encoder(args.encoder, work)
    sample = corpus[: args.encode_prompts]
    batch = 16
    started = time.perf_counter()
    for start in range(0, len(sample), batch):
        encoder.encode([t for t, _ in sample[start : start + batch]])
    literal_seconds = time.perf_counter() - started
    started = time.perf_counter()
    chunks, kept = 0, []
    for start in range(0, len(sample), batch):
        parsed = [parse(t, s) for t, s in sample[start : start + batch]]
        answers = encode_many(encoder, parsed)
        chunks += sum(tokens.shape[0] // 77 for tokens, _ in answers)
        kept += [tokens.reshape(-1, 77, tokens.shape[-1]) for tokens, _ in answers[:4]]
    parsed_seconds = time.perf_counter() - started
    codec = codec_figures(np.concatenate(kept), work)
    # The writers' own rules beside the encoders: tokenizing and chunking by each writer's rules,
    # and the weighting (A1111's mean restored per encoder, ComfyUI's move from the empty prompt)
    tokenizers = (encoder.tokenizer, encoder.tokenizer_2)
    plans = [(p, chunk_tokens(tokenizers, p)) for p in (parse(t, s) for t, s in sample)]
    started = time.perf_counter()
    for text, syntax in sample:
        chunk_tokens(tokenizers, parse(text, syntax))
    rules_seconds = time.perf_counter() - started - parse_per_prompt * len(sample)
    width = sum(encoder.widths)
    started = time.perf_counter()
    for prompt, plan in plans:
        states = np.ones((plan.count, 77, width), np.float32)
        rule = "comfy" if prompt.syntax in ("comfy", "comfy_words") else "a1111"
        apply_weights(states, states[0], plan.weights, rule, encoder.widths[0])
    weighting_seconds = time.perf_counter() - started

    library = make_sample_library(
        work / "library", args.library, seed=5, size=(64, 64), broken=False
    )
    home = LunaHome.resolve(work / "home").ensure()
    ingest(home.catalog_path, [str(library.root)], IngestOptions(progress=False))
    import duckdb

    with duckdb.connect(str(home.catalog_path), read_only=True) as con:
        rows = con.execute(
            "SELECT generator, prompt FROM generations WHERE prompt IS NOT NULL"
        ).fetchall()
    changed = sum(
        1
        for generator, text in rows
        if (p := parse(text, syntax_for(generator))).plain != text
        or p.weighted
        or p.breaks
        or p.removed
    )
    figures = {
        "parser_prompts": len(corpus),
        "parser_prompts_per_s": len(corpus) / parse_seconds,
        "encoder": args.encoder,
        "encode_prompts": len(sample),
        "chunks_encoded": chunks,
        "literal_prompts_per_s": len(sample) / literal_seconds,
        "parsed_prompts_per_s": len(sample) / parsed_seconds,
        "parsed_over_literal_time": parsed_seconds / literal_seconds,
        "parser_share_of_parsed_encoding": parse_per_prompt / (parsed_seconds / len(sample)),
        "rules_share_of_parsed_encoding": (
            parse_per_prompt * len(sample) + rules_seconds + weighting_seconds
        )
        / parsed_seconds,
        "library_prompts": len(rows),
        "library_prompts_changed_by_parse": changed,
        **codec,
        "int8_bytes_over_float16_at_sdxl_width": (77 * 2048 + 2 * 2048) / (77 * 2048 * 2),
    }
    print(
        f"parser alone: {len(corpus):,} prompts in {parse_seconds:.1f}s = "
        f"{figures['parser_prompts_per_s']:,.0f}/s"
    )
    print(
        "writers' rules (parse, tokenize and chunk, weight per encoder) share of the encoding: "
        f"{figures['rules_share_of_parsed_encoding']:.1%}"
    )
    print(f"encoding ({args.encoder} encoders, batches of {batch}, CPU):")
    print(
        f"  literal (one chunk, cut at 77)       {figures['literal_prompts_per_s']:10.1f} prompts/s"
    )
    print(
        f"  parsed and chunked ({chunks} chunks)  {figures['parsed_prompts_per_s']:10.1f} prompts/s"
        f"   time ratio parsed/literal {figures['parsed_over_literal_time']:.2f}"
    )
    print(
        "  parser's share of the parsed path     "
        f"{figures['parser_share_of_parsed_encoding']:10.4f}"
    )
    print(
        f"sample library: {changed} of {len(rows)} prompts read differently than their literal text"
    )
    print(
        f"text store, int8 codec vs float16 ({len(np.concatenate(kept))} chunk rows written and "
        "read back): "
        f"{codec['int8_bytes_per_chunk_row']:,.0f} vs "
        f"{codec['float16_bytes_per_chunk_row']:,.0f} bytes per chunk "
        f"row = {codec['int8_bytes_over_float16']:.3f} "
        f"({figures['int8_bytes_over_float16_at_sdxl_width']:.3f} "
        f"at SDXL width); token cosine error max {codec['int8_max_token_cosine_error']:.2e}, mean "
        f"{codec['int8_mean_token_cosine_error']:.2e} ({args.encoder} encoders)"
    )
    print(json.dumps(figures), file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
