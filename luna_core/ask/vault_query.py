"""Ask the vault: image or crop in, the most similar library images and their SDXL conditioning out.

Reads only the published index version (index, lookup, meta) and the Zarr conditioning store:
never the catalog, so answers keep coming while any asset is being materialized.

Weighting: neighbour i with cosine similarity s_i gets w_i = softmax(s_i / T) over the k
neighbours (T = `temperature`, default 0.05): near-ties share evenly, a clearly closer image
dominates. The answer is sum_i w_i * conditioning_i, token by token and for the pooled vector;
the negative conditioning likewise, a neighbour without a negative prompt counting as zeros (what
SDXL uses for an empty negative).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from luna_core.ask.answers import Conditioning, load_image, weighted_sum
from luna_core.ask.boxes import Box
from luna_core.ask.mixing import (
    DEFAULT_TEMPERATURE,
    Parts,
    PromptMix,
    aligned,
    check_inputs,
    mix,
    typed_parts,
)
from luna_core.ask.vault_search import VaultSearch
from luna_core.errors import CorruptStoreError, NotBuiltError, QueryError
from luna_core.projector.registry import Registry, parse_model_uri
from luna_core.vault.segments import store_exists


class VaultQuery(VaultSearch):
    """The published index plus the conditioning store, and the encoders to embed queries."""

    # ------------------------------------------------------------ lazily opened parts

    # ------------------------------------------------------------ queries

    def _mean_rows(
        self, rows: list[int], chunks: list[int], weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The weighted mean of the neighbours' conditionings: each of `chunks[i]` rows from
        `rows[i]`, repeated to their common length (luna_core.ask.mixing); pooled from each one's
        first row."""
        store = self.text_store
        seq_width, pooled_width = (
            store.fields["prompt_embeds"],
            store.fields["pooled_prompt_embeds"],
        )
        present = [i for i, r in enumerate(rows) if r >= 0]
        if not present:
            return np.zeros(seq_width, np.float32), np.zeros(pooled_width, np.float32)
        counts = [max(1, chunks[i]) for i in present]
        picked = np.concatenate(
            [np.arange(rows[i], rows[i] + c, dtype=np.int64) for i, c in zip(present, counts)]
        )
        tokens, finish = store.read_rows_linear("prompt_embeds", picked)
        firsts = np.cumsum([0, *counts[:-1]])
        pooled = weighted_sum(
            weights[present], store.read_rows("pooled_prompt_embeds", picked[firsts])
        )
        parts = [
            tokens[f : f + c].reshape(c * seq_width[0], seq_width[1])
            for f, c in zip(firsts, counts)
        ]
        stacked = np.stack(aligned(parts))
        summed = weighted_sum(weights[present], stacked).reshape(-1, *seq_width)
        embeds = finish(summed, float(weights[present].sum())).reshape(stacked.shape[1:])
        # stores written before checksums
        if not (np.isfinite(embeds).all() and np.isfinite(pooled).all()):
            raise CorruptStoreError(
                f"conditioning store {store.path} holds non-finite values in rows "
                f"{picked.tolist()}: it is damaged; rebuild it (delete it and run luna build)"
            )
        return embeds, pooled

    def vault_answer(
        self,
        embedding: np.ndarray,
        k: int = 5,
        temperature: float = DEFAULT_TEMPERATURE,
        exclude: frozenset[int] = frozenset(),
        allow=None,
    ):
        """(prompt_embeds, pooled, negative_embeds, negative_pooled, neighbours) for one image
        embedding: the neighbours' conditionings (every chunk) weighted by softmax(similarity /
        temperature); the two sides repeated to one length."""
        neighbors = self.nearest(embedding, k, temperature, exclude, allow)
        weights = np.array([n.weight for n in neighbors])
        rows = self.index.lookup
        lookup_rows = self.index.rows_for(np.array([n.image_id for n in neighbors], dtype=np.int64))

        def column(
            name: str, default: int
        ) -> list[int]:  # indexes published before chunks: one row each
            if name not in rows.column_names:
                return [default] * len(lookup_rows)
            return [int(rows.column(name)[r].as_py()) for r in lookup_rows]

        pos_rows, neg_rows = column("prompt_row", -1), column("negative_row", -1)
        if all(r < 0 for r in pos_rows):
            raise NotBuiltError(
                "none of the neighbours has an encoded prompt yet: materialize text_conditionings"
            )
        embeds, pooled = self._mean_rows(pos_rows, column("prompt_chunks", 1), weights)
        neg_embeds, neg_pooled = self._mean_rows(neg_rows, column("negative_chunks", 1), weights)
        embeds, neg_embeds = aligned([embeds, neg_embeds])
        return embeds, pooled, neg_embeds, neg_pooled, neighbors

    def condition(
        self,
        image_path: str | Path,
        box: Box | None = None,
        k: int = 5,
        prompt: str | None = None,
        mode: str = "replace",
        alpha: float = 0.5,
        temperature: float = DEFAULT_TEMPERATURE,
        negative_prompt: str | None = None,
    ) -> Conditioning:
        check_inputs(mode, alpha, prompt, k, temperature)
        *answer, neighbors = self.vault_answer(
            self.embed(load_image(image_path, box)), k, temperature
        )
        info = {
            "source": "vault",
            "vision_key": self.profile.vision_key,
            "text_key": self.index.meta.get("text_key"),
            "k": k,
            "mode": mode,
            "alpha": alpha,
            "temperature": temperature,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "index_version": self.index.version.number,
            "box": None if box is None else box.__dict__,
        }
        return self._conditioning(
            mix(Parts(*answer), self.typed(prompt, negative_prompt, mode), mode, alpha),
            neighbors,
            info,
        )

    def typed(
        self, prompt: str | None, negative_prompt: str | None, mode: str = "blend"
    ) -> Parts | None:
        """A typed prompt's four parts for mixing (None when `mode` does not use it); see
        luna_core.ask.mixing."""
        if prompt is None or mode == "replace":
            return None
        return typed_parts(
            self.encode_prompt(prompt),
            self.encode_prompt(negative_prompt) if negative_prompt else None,
        )

    @staticmethod
    def _conditioning(parts: Parts, neighbors: list, info: dict) -> Conditioning:
        return Conditioning(
            parts.embeds[None],
            parts.pooled[None],
            parts.negative[None],
            parts.negative_pooled[None],
            neighbors,
            info,
        )

    def condition_with_projector(
        self,
        image_path: str | Path,
        projector_uri: str,
        box: Box | None = None,
        prompt: str | None = None,
        mode: str = "replace",
        alpha: float = 0.5,
        tracking_uri: str | None = None,
        negative_prompt: str | None = None,
    ) -> Conditioning:
        """The registered projector's answer for the image (`models:/NAME@ALIAS` or
        `models:/NAME/VERSION`), looked up at `tracking_uri` (default: $LUNA_MLFLOW_URI, else the
        home's embedded registry). Its negative is zeros: SDXL's empty negative prompt."""
        check_inputs(mode, alpha, prompt)
        image = load_image(image_path, box)
        model, config = self.load_projector(projector_uri, tracking_uri)
        tokens, pooled = self.projector_answers(
            model, self.embed_pictures([image], use_index=False)
        )
        embeds, pooled = tokens[0], pooled[0]
        info = {
            "source": "projector",
            "projector": projector_uri,
            "arch": config.arch,
            "mode": mode,
            "alpha": alpha,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "box": None if box is None else box.__dict__,
        }
        answer = Parts(embeds, pooled, np.zeros_like(embeds), np.zeros_like(pooled))
        return self._conditioning(
            mix(answer, self.typed(prompt, negative_prompt, mode), mode, alpha), [], info
        )

    def condition_crops(
        self,
        crops: list,
        source: str = "vault",
        k: int = 5,
        temperature: float = DEFAULT_TEMPERATURE,
        with_prompt: PromptMix = PromptMix(),
        projector=None,
        allow=None,
    ) -> Conditioning:
        """One conditioning per crop (PIL images), stacked on the batch axis [N, 77, D]: crop i gets
        its own vault answer (`source` vault; `allow` as in `nearest`) or projector answer
        (`projector`: a loaded (model, config)), then mixed `with_prompt` as `condition` does.
        One forward pass of the vision encoder for all crops."""
        prompt, negative_prompt, mode, alpha = with_prompt
        if source not in ("vault", "projector"):
            raise QueryError(f"source {source!r} is not one of vault, projector")
        check_inputs(
            mode,
            alpha,
            prompt,
            k if source == "vault" else None,
            temperature if source == "vault" else None,
        )
        if not crops:
            raise QueryError("no image to condition")
        parts, neighbors_per_item = [], []
        typed = self.typed(prompt, negative_prompt, mode)  # encoded once for every crop
        if source == "projector":
            if projector is None:
                raise QueryError("the projector source needs a projector (models:/NAME@ALIAS)")
            model, config = projector
            tokens, pooled = self.projector_answers(
                model, self.embed_pictures(crops, use_index=False)
            )
            for t, p in zip(tokens, pooled):
                parts.append(
                    self._conditioning(
                        mix(Parts(t, p, np.zeros_like(t), np.zeros_like(p)), typed, mode, alpha),
                        [],
                        {},
                    )
                )
                neighbors_per_item.append([])
        else:
            for embedding in self.embed_pictures(crops):
                *answer, neighbors = self.vault_answer(embedding, k, temperature, allow=allow)
                parts.append(
                    self._conditioning(mix(Parts(*answer), typed, mode, alpha), neighbors, {})
                )
                neighbors_per_item.append(neighbors)
        # Items whose conditionings span different chunk counts meet at one length, both sides
        # alike.
        tokens = aligned(
            [part.prompt_embeds for part in parts] + [part.negative_prompt_embeds for part in parts]
        )
        stacked = {
            "prompt_embeds": np.concatenate(tokens[: len(parts)]),
            "negative_prompt_embeds": np.concatenate(tokens[len(parts) :]),
            **{
                name: np.concatenate([getattr(part, name) for part in parts])
                for name in ("pooled_prompt_embeds", "negative_pooled_prompt_embeds")
            },
        }
        info = {
            "source": source,
            "items": len(crops),
            "k": k,
            "mode": mode,
            "alpha": alpha,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "vision_key": self.profile.vision_key,
            "neighbors_per_item": [[n.path for n in items] for items in neighbors_per_item],
        }
        if source == "vault":
            info["index_version"] = self.index.version.number
        return Conditioning(
            **stacked, neighbors=[n for items in neighbors_per_item for n in items], info=info
        )

    def load_projector(self, projector_uri: str, tracking_uri: str | None = None):
        """(model, config) of a registered projector, checked against the configured encoders'
        widths."""
        name, ref = parse_model_uri(projector_uri)
        model, config = Registry(self.home, tracking_uri).load(name, ref)
        width = self._encoder().width
        if config.in_dim != width:
            raise QueryError(
                f"projector {projector_uri} expects {config.in_dim}-d image embeddings; the "
                "configured "
                f"vision model gives {width}-d ones"
            )
        if store_exists(self.home.text_store(self.profile)):
            seq, text_width = self.text_store.fields["prompt_embeds"]
            if (config.seq_len, config.width) != (seq, text_width):
                raise QueryError(
                    f"projector {projector_uri} answers [{config.seq_len}, {config.width}] "
                    "conditionings; "
                    f"the configured SDXL encoders give [{seq}, {text_width}]"
                )
        return model, config

    @staticmethod
    def projector_answers(model, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([N, 77, D], [N, P]) float32 conditionings of N image embeddings, in one forward pass."""
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        with torch.no_grad():
            tokens, pooled = model(torch.from_numpy(np.asarray(embeddings, dtype=np.float32)))
        return tokens.numpy(), pooled.numpy()
