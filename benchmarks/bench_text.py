"""Prompt fidelity's cost, measured side by side in one run.

# parsed + encoded vs literal prompts/s on the tiny encoders, the parser alone on 500k prompts, and
# the share of a sample library's prompts the parse changes
.venv/bin/python benchmarks/bench_text.py --prompts 500000

# the encoding side at SDXL's real widths (CLIP ViT-L + OpenCLIP ViT-bigG architecture, RANDOM
# weights: speed only) so the parser's share is measured against the encoding it rides on
.venv/bin/python benchmarks/bench_text.py --encoder sdxl-random --encode-prompts 32

# the text store's codecs side by side (bytes, worst token cosine error, the k-NN answer's cosine,
# a 16-row read) on the full-size random-weight SDXL encoders (benchmarks/fullsize_models.py)
.venv/bin/python benchmarks/bench_text.py --encoder fullsize-random --encode-prompts 8 \
    --codec-prompts 400
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

from luna_core.ask.answers import weighted_sum
from luna_core.home.home import LunaHome
from luna_core.ingest.run import IngestOptions, ingest
from luna_core.prompts.chunking import chunk_tokens
from luna_core.prompts.encode import apply_weights, encode_many
from luna_core.prompts.parsers import parse
from luna_core.prompts.syntax import syntax_for
from luna_core.samples import make_sample_library
from luna_core.vault.codec import CODECS, FLOAT16
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
    if kind == "fullsize-random":
        from fullsize_models import ensure_fullsize_models

        folder = ensure_fullsize_models(single_files=False).sdxl_folder
        return SDXLTextEncoder(str(folder), None, "cpu", torch.float32)
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


def codec_prompts(encoder, count: int) -> list[tuple[str, str]]:
    """Half people-like prompts, half words drawn from CLIP's whole vocabulary (3 to 140 of them):
    the hard case for a store-fitted basis."""
    rng = random.Random(1)
    vocab = sorted(
        w[:-4] for w in encoder.tokenizer.get_vocab() if w.endswith("</w>") and w[:-4].isalpha()
    )
    prompts = synthetic_prompts(count // 2, seed=3)
    prompts += [
        (" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 140))), "a1111")
        for _ in range(count - len(prompts))
    ]
    rng.shuffle(prompts)
    return prompts


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def codec_figures(rows: np.ndarray, work: Path, k: int = 16) -> dict[str, dict]:
    """The text store's codecs side by side: the same chunk rows written through each in the
    pipeline's batches of 64 (pca-zstd fits on the first), then read back. Bytes of the rows per
    chunk row against float16's (a store's one-off fit apart), the worst token cosine error, the
    k-NN answer's cosine (the softmax-weighted mean of k random rows, 200 answers, the worst), and
    a k-row read with its weighted mean as a k-NN answer makes it, p50 of 200."""
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(rows), (200, k))
    weights = rng.dirichlet(np.ones(k), 200)
    truth = np.einsum("ak,aktd->atd", weights, rows[picks].astype(np.float64))
    figures = {}
    for codec in CODECS:
        path = work / f"{codec}.zarr"
        store = RowStore.open(path, {"prompt_embeds": rows.shape[1:]}, TEXT_LAYOUT, codec=codec)
        for start in range(0, len(rows), TEXT_LAYOUT.rows_per_shard):
            store.write(start, {"prompt_embeds": rows[start : start + TEXT_LAYOUT.rows_per_shard]})
        store = RowStore.open_readonly(path, TEXT_LAYOUT)
        read = store.read_rows("prompt_embeds", np.arange(len(rows))).astype(np.float64)
        fit_bytes = sum(
            store_bytes(path / f"prompt_embeds{suffix}") for suffix in ("_template", "_basis")
        )
        answers = np.einsum("ak,aktd->atd", weights, read[picks])
        times = []
        for pick, weight in zip(picks, weights):
            started = time.perf_counter()  # as a k-NN answer reads and sums (VaultQuery)
            values, finish = store.read_rows_linear("prompt_embeds", pick)
            finish(weighted_sum(weight, values).reshape(rows.shape[1:]), float(weight.sum()))
            times.append(time.perf_counter() - started)
        figures[codec] = {
            "row_bytes": (store_bytes(path) - fit_bytes) / len(rows),
            "fit_bytes": fit_bytes,
            "worst_token_cosine_error": float((1 - _cosine(read, rows.astype(np.float64))).max()),
            "answer_cosine": float(_cosine(answers, truth).min()),
            "read_p50_ms": float(np.median(times) * 1e3),
        }
    for codec in CODECS:
        figures[codec]["bytes_over_float16"] = (
            figures[codec]["row_bytes"] / figures[FLOAT16]["row_bytes"]
        )
        figures[codec]["read_p50_over_float16"] = (
            figures[codec]["read_p50_ms"] / figures[FLOAT16]["read_p50_ms"]
        )
    return figures


def print_codecs(figures: dict[str, dict], rows: int, encoder: str) -> None:
    print(f"text store codecs ({rows} chunk rows, {encoder} encoders, fitted on the first 64):")
    for codec, f in figures.items():
        print(
            f"codec {codec}: bytes {f['bytes_over_float16']:.3f} of float16, worst token cosine "
            f"error {f['worst_token_cosine_error']:.2e}, answer cosine {f['answer_cosine']:.6f}"
            f"  (16-row read p50 {f['read_p50_ms']:.2f} ms = "
            f"{f['read_p50_over_float16']:.2f}x float16's; fit {f['fit_bytes'] / 1e6:.2f} MB "
            "once per store)"
        )


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
    parser.add_argument(
        "--encoder", choices=["tiny", "sdxl-random", "fullsize-random"], default="tiny"
    )
    parser.add_argument(
        "--codec-prompts", type=int, default=400, help="prompts encoded for the codec figures"
    )
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
    parsed_seconds = time.perf_counter() - started
    hard_mix = codec_prompts(encoder, args.codec_prompts)
    for start in range(0, len(hard_mix), batch):
        chosen = hard_mix[start : start + batch]
        answers = encode_many(encoder, [parse(t, s) for t, s in chosen])
        kept += [tokens.reshape(-1, 77, tokens.shape[-1]) for tokens, _ in answers]
    codec_rows = np.concatenate(kept).astype(np.float16)
    codecs = codec_figures(codec_rows, work)
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
        "codecs": codecs,
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
    print_codecs(codecs, len(codec_rows), args.encoder)
    print(json.dumps(figures), file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
