"""Each tile's or crop's own SDXL conditioning, from one source:

- `vault`: k-NN in the library on the crop's own CLIP-ViT embedding (as `luna condition --box`
  does);
- `projector`: a registered projector (default `models:/luna-projector@champion`) on that embedding;
- `prompt`: one typed prompt for every item;
- `blend`: the vault's answer blended with the typed prompt, item by item (`luna_core.ask.mixing`'s
  blend: (1 - alpha) * typed + alpha * answer, the negative side too).

A detection's prompt piece is mixed into its item's answer by `piece_mode` (default concat: the
piece's tokens, then the answer's, pooled from the piece; blend: by alpha, the answer's share).

Everything a source needs (index, projector, text encoders) is opened when the conditioner is made,
so a missing index or an unknown projector is reported before any pixel is refined.
"""

from __future__ import annotations

import numpy as np

from luna_core.ask.mixing import Parts, mix
from luna_core.ask.vault_query import VaultQuery
from luna_core.refine.lora_files import neighbour_loras, parse_lora_hashes
from luna_core.refine.options import SourceSettings
from luna_core.refine.sampler import ItemConditioning


class Conditioner:
    def __init__(self, vault: VaultQuery, settings: SourceSettings, projector=None):
        """`projector`: an already loaded (model, config) for the projector source (else loaded
        from the URI)."""
        settings.check()
        self.vault, self.settings = vault, settings
        self._typed = None
        self._projector = None
        self._pieces: dict[str, Parts] = {}
        if settings.source in ("vault", "blend"):
            vault.index  # noqa: B018 - opened now: "not built yet" before any work
        if settings.source == "projector":
            self._projector = projector or vault.load_projector(
                settings.projector, settings.tracking_uri
            )
        if settings.source in ("prompt", "blend"):
            self._typed = vault.typed(settings.prompt, settings.negative_prompt)

    def condition(
        self,
        crops: list,
        exclude: frozenset[int] = frozenset(),
        pieces: list | None = None,
        lora_cap: int = 0,
    ) -> list[ItemConditioning]:
        """One conditioning per crop (PIL images), in order; vault answers skip the image ids in
        `exclude` (an evaluation refining a library image must not answer it with itself).
        `pieces`: a prompt piece per crop (or None), mixed into its conditioning by `piece_mode`.
        `lora_cap` > 0: each item's info carries `vault_loras`, the weighted union of its k
        neighbours' LoRAs, the `lora_cap` strongest."""
        out = self._answers(crops, exclude, lora_cap)
        for item, piece in zip(out, pieces or []):
            if piece:
                parts = mix(
                    Parts(
                        item.prompt_embeds,
                        item.pooled_prompt_embeds,
                        item.negative_prompt_embeds,
                        item.negative_pooled_prompt_embeds,
                    ),
                    self._piece(piece),
                    self.settings.piece_mode,
                    self.settings.alpha,
                )
                (
                    item.prompt_embeds,
                    item.pooled_prompt_embeds,
                    item.negative_prompt_embeds,
                    item.negative_pooled_prompt_embeds,
                ) = parts
                item.info["piece"] = piece
        return out

    def _piece(self, piece: str) -> Parts:
        if piece not in self._pieces:
            self._pieces[piece] = self.vault.typed(piece, None)
        return self._pieces[piece]

    def _answers(
        self, crops: list, exclude: frozenset[int], lora_cap: int
    ) -> list[ItemConditioning]:
        s = self.settings
        if s.source == "prompt":
            out = [ItemConditioning(*self._typed, {"source": "prompt"}) for _ in crops]
        elif s.source == "projector":
            model, _ = self._projector
            tokens, pooled = self.vault.projector_answers(
                model, self.vault.embed_pictures(crops, use_index=False)
            )
            out = [
                ItemConditioning(
                    t,
                    p,
                    np.zeros_like(t),
                    np.zeros_like(p),
                    {"source": "projector", "projector": s.projector},
                )
                for t, p in zip(tokens, pooled)
            ]
        else:
            out = []
            for embedding in self.vault.embed_pictures(crops):
                *answer, neighbors = self.vault.vault_answer(embedding, s.k, s.temperature, exclude)
                info = {"source": s.source, "neighbors": [n.path for n in neighbors]}
                if lora_cap:
                    info.update(_neighbour_loras(neighbors, lora_cap))
                parts = (
                    mix(Parts(*answer), self._typed, "blend", s.alpha)
                    if s.source == "blend"
                    else Parts(*answer)
                )
                out.append(ItemConditioning(*parts, info))
            return out
        if lora_cap:  # the neighbours of each crop, for their LoRAs only
            for item, embedding in zip(out, self.vault.embed_pictures(crops)):
                item.info.update(
                    _neighbour_loras(
                        self.vault.nearest(embedding, s.k, s.temperature, exclude), lora_cap
                    )
                )
        return out


def _neighbour_loras(neighbors, cap: int) -> dict:
    """`vault_loras`: the weighted union of the neighbours' LoRAs (the `cap` strongest);
    `lora_hashes`: the hashes their metadata recorded for them, by name."""
    hashes: dict[str, str] = {}
    for n in neighbors:
        hashes.update(parse_lora_hashes(n.lora_hashes))
    return {
        "vault_loras": neighbour_loras([(n.weight, n.loras) for n in neighbors], cap),
        "lora_hashes": hashes,
    }
