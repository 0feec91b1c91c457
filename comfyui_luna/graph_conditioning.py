"""Each tile's or crop's conditioning in the graph checkpoint's own dialect.

For the vault: the item's k neighbours in the library, each neighbour's prompt read by its writer's
rules (luna_core.prompts), written in ComfyUI's syntax and encoded by the graph's CLIP (its LoRAs
included), then averaged by the neighbours' weights, lengths met by repetition. For the projector:
its answer as it is, in the Luna home's text encoders' dialect.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

from luna_core.ask.mixing import aligned, mix_side
from luna_core.errors import QueryError
from luna_core.prompts.comfy_render import comfy_texts
from luna_core.prompts.parsers import parse
from luna_core.prompts.syntax import syntax_for

CACHE_PER_CLIP = 4096  # encoded prompts kept per CLIP: a few minutes of encoding on a GPU


def join_tokens(parts):
    # torch: the nodes run inside ComfyUI, which has it loaded already
    import torch

    return torch.cat(list(parts), dim=-2)


@dataclass
class Item:
    """One tile's or crop's conditioning: tokens [L, D] and pooled [P] for each side."""

    tokens: object
    pooled: object
    negative: object
    negative_pooled: object
    notes: list[str] = field(default_factory=list)


class PromptEncodings:
    """Prompts encoded by a CLIP, kept while that CLIP lives: a LoRA-patched CLIP is another
    object, so another cache; the oldest entries go past CACHE_PER_CLIP."""

    def __init__(self, limit: int = CACHE_PER_CLIP):
        self.limit = limit
        self._by_clip: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.hits = 0
        self.misses = 0

    def encode(self, clip, texts: tuple[str, ...]):
        """(tokens [L, D], pooled [P]) of texts encoded one by one and joined (pooled from the
        first), float32 on the CPU."""
        kept = self._by_clip.setdefault(clip, OrderedDict())
        if texts in kept:
            self.hits += 1
            kept.move_to_end(texts)
            return kept[texts]
        self.misses += 1
        parts = [clip.encode_from_tokens(clip.tokenize(t), return_pooled=True) for t in texts]
        if parts[0][1] is None:
            raise QueryError("the graph's CLIP gives no pooled output: it is not an SDXL CLIP")
        tokens = join_tokens([p[0][0].float().cpu() for p in parts])
        encoded = (tokens, parts[0][1][0].float().cpu())
        kept[texts] = encoded
        if len(kept) > self.limit:
            kept.popitem(last=False)
        return encoded


def _side(clip, neighbours: list, negative: bool, cache: PromptEncodings, notes: list[str]):
    # torch: the nodes run inside ComfyUI, which has it loaded already
    import torch

    encoded = []
    for n in neighbours:
        parsed = parse(
            n.negative_prompt if negative else n.prompt, n.prompt_syntax or syntax_for(n.generator)
        )
        texts, more = comfy_texts(parsed)
        notes.extend(more)
        encoded.append(cache.encode(clip, texts))
    weights = torch.tensor([float(n.weight) for n in neighbours], dtype=torch.float32)
    tokens = torch.stack(aligned([t for t, _ in encoded], join_tokens))
    pooled = torch.stack([p for _, p in encoded])
    return (weights[:, None, None] * tokens).sum(0), (weights[:, None] * pooled).sum(0)


def vault_item(clip, neighbours: list, cache: PromptEncodings) -> Item:
    """The weighted mean of the neighbours' prompts (and negatives) encoded by the graph's CLIP."""
    notes: list[str] = []
    tokens, pooled = _side(clip, neighbours, False, cache, notes)
    negative, negative_pooled = _side(clip, neighbours, True, cache, notes)
    return Item(tokens, pooled, negative, negative_pooled, sorted(set(notes)))


def typed_rows(conditioning, count: int, what: str) -> list | None:
    """A typed CONDITIONING's first entry as `count` (tokens [L, D], pooled [P] or None) pairs: a
    batch of 1 serves every item, a batch of `count` one row each."""
    if conditioning is None:
        return None
    tokens, extra = conditioning[0]
    pooled = extra.get("pooled_output")
    if tokens.shape[0] not in (1, count):
        raise QueryError(f"the typed {what} CONDITIONING has {tokens.shape[0]} rows for {count}")
    pick = (lambda i: 0) if tokens.shape[0] == 1 else (lambda i: i)
    return [
        (tokens[pick(i)].float().cpu(), None if pooled is None else pooled[pick(i)].float().cpu())
        for i in range(count)
    ]


def mixed(items: list[Item], positive, negative, mode: str, alpha: float) -> list[Item]:
    """Each item's answer met with the typed conditionings by luna_core.ask.mixing's rule (replace:
    the answer alone). A side with no typed conditioning keeps the answer's."""
    if mode == "replace":
        return items
    if positive is None:
        raise QueryError(f"mode {mode} mixes a typed prompt: connect a positive CONDITIONING")
    typed = typed_rows(positive, len(items), "positive")
    typed_negative = typed_rows(negative, len(items), "negative")
    out = []
    for i, item in enumerate(items):
        width = item.tokens.shape[-1]
        if typed[i][0].shape[-1] != width:
            raise QueryError(
                f"the typed CONDITIONING is {typed[i][0].shape[-1]} wide, the answer {width}: "
                "they come from different text encoders"
            )
        tokens, pooled = mix_side(*typed[i], item.tokens, item.pooled, mode, alpha, join_tokens)
        negative_tokens, negative_pooled = item.negative, item.negative_pooled
        if typed_negative is not None:
            negative_tokens, negative_pooled = mix_side(
                *typed_negative[i], item.negative, item.negative_pooled, mode, alpha, join_tokens
            )
        out.append(Item(tokens, pooled, negative_tokens, negative_pooled, item.notes))
    return out


def batch_conditioning(tokens: list, pooled: list, extra: dict | None = None) -> list:
    """One CONDITIONING entry with a row per item (row i meets latent i): the rows' lengths met by
    repetition to the least common multiple of their chunk counts, ComfyUI's own rule for
    conditionings of different lengths, never zero padding."""
    # torch: the nodes run inside ComfyUI, which has it loaded already
    import torch

    rows = torch.stack(aligned(tokens, join_tokens))
    return [[rows, {**(extra or {}), "pooled_output": torch.stack(pooled)}]]
