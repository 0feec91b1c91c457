"""The real CLIP BPE vocabulary, from the file OpenAI's CLIP (and open_clip) ship, as a Hugging Face
CLIPTokenizer: token ids and 77-token truncation are then exactly those of the real SDXL tokenizers.

The file, `bpe_simple_vocab_16e6.txt.gz`, comes from the `open_clip_torch` wheel on PyPI;
`scripts/bootstrap` puts it under `<venv>/share/luna/`. `LUNA_CLIP_BPE` may point at another copy.
"""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path

from luna_core.errors import LunaConfigError
from luna_core.home.settings import environment_settings

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
N_MERGES = 49152 - 256 - 2  # the merges CLIP uses: vocab = 512 byte symbols + merges + 2 specials


def find_bpe_file() -> Path:
    candidates = []
    chosen = environment_settings().text("models.clip_bpe")
    if chosen:
        candidates.append(Path(chosen).expanduser())
    candidates.append(Path(sys.prefix) / "share" / "luna" / BPE_FILE)
    try:  # an installed open_clip package, located without importing it (it needs torchvision)
        spec = importlib.util.find_spec("open_clip")
        if spec and spec.submodule_search_locations:
            candidates.append(Path(list(spec.submodule_search_locations)[0]) / BPE_FILE)
    except (ImportError, ValueError):
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise LunaConfigError(
        f"the CLIP BPE vocabulary ({BPE_FILE}) was not found in "
        f"{', '.join(str(c) for c in candidates)}. "
        "Run scripts/bootstrap (it extracts it from the open_clip_torch wheel), or set "
        "LUNA_CLIP_BPE to the file."
    )


def byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-level BPE alphabet: each of the 256 bytes as a printable character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def clip_vocab_and_merges(
    bpe_path: Path | None = None,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(bpe_path or find_bpe_file(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : N_MERGES + 1]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != VOCAB_SIZE:
        raise LunaConfigError(
            f"unexpected CLIP BPE file: {len(tokens)} tokens, expected {VOCAB_SIZE}"
        )
    return {token: i for i, token in enumerate(tokens)}, [tuple(m.split()) for m in merges]


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A CLIPTokenizer over the real vocabulary, 77 tokens long like SDXL's two tokenizers.

    SDXL's first tokenizer pads with <|endoftext|>, its second with '!' (id 0)."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)
