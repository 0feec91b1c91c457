"""What the graph refiners ask Luna for each tile or crop: the vault's neighbours (in this process
or from a running `luna serve`), or the projector's answer, and the conditioning rows made from
them in the graph checkpoint's dialect (comfyui_luna.graph_conditioning)."""

from __future__ import annotations

import dataclasses
import json
import time

from comfyui_luna.comfy_types import png_bytes, to_pictures
from comfyui_luna.graph_conditioning import (
    Item,
    PromptEncodings,
    join_tokens,
    mixed,
    typed_rows,
    vault_item,
)
from comfyui_luna.kept import kept
from comfyui_luna.vault_nodes import _service
from luna_core.ask.answers import Neighbor
from luna_core.ask.mixing import mix_side
from luna_core.errors import NotBuiltError, QueryError
from luna_core.refine.options import SourceSettings
from luna_service.client import post

PROJECTOR_DIALECT = (
    "source projector: its answer is in the Luna home's text encoders' dialect, used as it is, "
    "not the graph CLIP's (source vault encodes the neighbours' prompts with the graph's CLIP)"
)


def prompt_cache() -> PromptEncodings:
    """One cache for the whole ComfyUI process: entries live as long as their CLIP."""
    return kept(("prompt-encodings",), PromptEncodings)


def _search(server: str, picture, k: int, temperature: float) -> list[Neighbor]:
    params = [("k", str(k)), ("temperature", str(temperature))]
    found = json.loads(post(server, "/search", params, png_bytes(picture), "server_url"))
    names = {f.name for f in dataclasses.fields(Neighbor)}
    return [
        Neighbor(**{key: value for key, value in row.items() if key in names})
        for row in found["results"][0]["neighbors"]
    ]


def neighbours(pictures: list, source: SourceSettings, home: str, server_url: str) -> list:
    """Each picture's k nearest library images, weighted by softmax(similarity / temperature)."""
    if server_url:
        return [_search(server_url, p, source.k, source.temperature) for p in pictures]
    vault = _service(home, source.projector).state.vault
    return [
        vault.nearest(embedding, source.k, source.temperature)
        for embedding in vault.embed_pictures(pictures)
    ]


def _projector_items(pictures: list, source: SourceSettings, home: str) -> list[Item]:
    # torch: the nodes run inside ComfyUI, which has it loaded already
    import torch

    state = _service(home, source.projector).state
    if state.projector is None:
        raise NotBuiltError(f"no projector at {source.projector}: register one (luna build)")
    c = state.vault.condition_crops(
        pictures, "projector", source.k, source.temperature, projector=state.projector
    )
    parts = [
        torch.from_numpy(a).float()
        for a in (
            c.prompt_embeds,
            c.pooled_prompt_embeds,
            c.negative_prompt_embeds,
            c.negative_pooled_prompt_embeds,
        )
    ]
    return [Item(*(p[i] for p in parts), [PROJECTOR_DIALECT]) for i in range(len(pictures))]


class Answers:
    """Per-item conditionings for one node execution, and what they cost."""

    def __init__(self, clip, source: SourceSettings, home: str, server_url: str):
        if source.source == "projector" and server_url:
            raise QueryError("source projector runs in this process: leave server_url empty")
        self.clip, self.source, self.home, self.server_url = clip, source, home, server_url
        self.cache = prompt_cache()
        self._cache_before = (self.cache.hits, self.cache.misses)
        self.seconds = 0.0
        self.notes: set[str] = set()
        self._width: int | None = None

    def cache_use(self) -> tuple[int, int]:
        """(hits, prompts encoded) of the shared prompt cache during this execution."""
        return (
            self.cache.hits - self._cache_before[0],
            self.cache.misses - self._cache_before[1],
        )

    def items(self, pixels, positive, negative, pieces: list | None = None) -> list[Item]:
        """Items for [B, H, W, 3] pixels: the source's answer, mixed with the typed CONDITIONINGs
        (`prompt`: the typed alone; `blend`: by alpha), then each detection's prompt piece."""
        started = time.perf_counter()
        source = self.source.source
        count = pixels.shape[0]
        if source in ("prompt", "blend") and positive is None:
            raise QueryError(f"source {source} needs the typed prompt: connect positive")
        if source == "prompt":
            items = self._typed(positive, negative, count)
        else:
            pictures = to_pictures(pixels)
            if source == "projector":
                items = _projector_items(pictures, self.source, self.home)
            else:
                found = neighbours(pictures, self.source, self.home, self.server_url)
                items = [vault_item(self.clip, n, self.cache) for n in found]
            if source == "blend":
                items = mixed(items, positive, negative, "blend", self.source.alpha)
        items = self._with_pieces(items, pieces or [None] * count)
        self._check_width(items)
        for item in items:
            self.notes.update(item.notes)
        self.seconds += time.perf_counter() - started
        return items

    def _typed(self, positive, negative, count: int) -> list[Item]:
        if negative is None:
            raise QueryError("source prompt needs the typed negative as well: connect negative")
        rows = typed_rows(positive, count, "positive")
        negatives = typed_rows(negative, count, "negative")
        return [Item(t, p, nt, np_) for (t, p), (nt, np_) in zip(rows, negatives)]

    def _with_pieces(self, items: list[Item], pieces: list) -> list[Item]:
        out = []
        for item, piece in zip(items, pieces):
            if piece:
                tokens, pooled = self.cache.encode(self.clip, (piece,))
                mode, alpha = self.source.piece_mode, self.source.alpha
                tokens, pooled = mix_side(
                    tokens, pooled, item.tokens, item.pooled, mode, alpha, join_tokens
                )
                item = dataclasses.replace(item, tokens=tokens, pooled=pooled)
            out.append(item)
        return out

    def _check_width(self, items: list[Item]) -> None:
        if self._width is None:
            self._width = int(self.cache.encode(self.clip, ("",))[0].shape[-1])
        for item in items:
            if item.tokens.shape[-1] != self._width:
                raise QueryError(
                    f"the answer's tokens are {item.tokens.shape[-1]} wide, the graph's CLIP "
                    f"gives {self._width}: the projector was trained for another text encoder"
                )
