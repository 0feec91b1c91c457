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

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
from luna_core.errors import CorruptStoreError, NotBuiltError, QueryError
from luna_core.files import write_atomically
from luna_core.home.home import LunaHome
from luna_core.images import read_picture
from luna_core.index.faiss_index import omp_threads
from luna_core.index.reranked import search_index
from luna_core.index.store import LoadedIndex, index_store, load_index
from luna_core.models.encoders import SDXLTextEncoder, VisionEncoder
from luna_core.models.profiles import ModelProfile, choose_device, choose_dtype
from luna_core.projector.registry import Registry, parse_model_uri
from luna_core.prompts.encode import encode_parsed
from luna_core.prompts.parsers import parse
from luna_core.vault.segments import open_text_store, open_vision_store, store_exists
from luna_core.vault.store import RowStore


@dataclass
class Neighbor:
    image_id: int
    similarity: float
    weight: float
    path: str
    prompt: str | None
    negative_prompt: str | None
    generator: str | None
    content_hash: str
    loras: list = field(
        default_factory=list
    )  # [{"name", "weight"}] the catalog read from the image's metadata
    lora_hashes: str | None = (
        None  # A1111's "Lora hashes" ("name: hash, ..."), where the metadata has it
    )


@dataclass
class Conditioning:
    prompt_embeds: np.ndarray  # [1, 77 (154 for concat), D]
    pooled_prompt_embeds: np.ndarray  # [1, P]
    negative_prompt_embeds: np.ndarray
    negative_pooled_prompt_embeds: np.ndarray
    neighbors: list[Neighbor] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def _tensors(self) -> tuple[dict, dict]:
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        tensors = {
            name: torch.from_numpy(np.ascontiguousarray(getattr(self, name), dtype=np.float32))
            for name in (
                "prompt_embeds",
                "pooled_prompt_embeds",
                "negative_prompt_embeds",
                "negative_pooled_prompt_embeds",
            )
        }
        metadata = {
            "luna": json.dumps(
                {**self.info, "neighbors": [n.__dict__ for n in self.neighbors]}, default=str
            )
        }
        return tensors, metadata

    def save(self, path: str | Path) -> Path:
        """A safetensors file diffusers' SDXL pipelines take as keyword arguments, unchanged."""
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        from safetensors.torch import save_file

        tensors, metadata = self._tensors()
        return write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    def to_bytes(self) -> bytes:
        """The same safetensors content as `save`, in memory (what `luna serve` answers)."""
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        from safetensors.torch import save

        tensors, metadata = self._tensors()
        return save(tensors, metadata=metadata)


def weighted_sum(weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """sum_i w_i * rows[i] in float32 for float16 rows (torch converts float16 ~10x faster than
    numpy)."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    flat = torch.from_numpy(np.ascontiguousarray(rows).reshape(len(rows), -1)).float()
    return (torch.from_numpy(np.asarray(weights, dtype=np.float32)) @ flat).numpy()


def load_image(path: str | Path, box: Box | None = None):
    """The query picture (optionally cropped), with errors that name the file and the reason."""
    return crop(read_picture(path), box, str(path))


def crop(image, box: Box | None, name: str):
    """The part of `image` inside `box` (the whole image without one); a box outside it is an
    error."""
    if box is None:
        return image
    box.check_within(image.width, image.height, name)
    return image.crop(box.edges)


class VaultQuery:
    """The published index plus the conditioning store, and the encoders to embed queries."""

    def __init__(
        self, home: LunaHome, profile: ModelProfile, device: str = "auto", dtype: str = "auto"
    ):
        self.home, self.profile = home, profile
        self.device_name, self.dtype_name = device, dtype
        self._index: LoadedIndex | None = None
        self._vision = None
        self._text = None
        self._store: RowStore | None = None

    # ------------------------------------------------------------ lazily opened parts

    @property
    def index(self) -> LoadedIndex:
        if self._index is None:
            loaded = load_index(index_store(self.home, self.profile), fall_back=True)
            if loaded.meta.get("vision_key") != self.profile.vision_key:
                raise QueryError(
                    f"the index at {loaded.version.path} was built with vision model "
                    f"{loaded.meta.get('vision_key')}, not the configured "
                    f"{self.profile.vision_key}; "
                    "rebuild it or configure that model"
                )
            if loaded.index.ntotal == 0:
                raise QueryError(
                    f"the index at {loaded.version.path} is empty: ingest and embed some images "
                    "first"
                )
            self._index = loaded.reranked_from(open_vision_store(self.home, self.profile))
        return self._index

    def _device_dtype(self):
        device = choose_device(self.device_name)
        dtype = choose_dtype(
            device, self.profile.default_dtype if self.dtype_name == "auto" else self.dtype_name
        )
        return device, dtype

    def _encoder(self):
        if self._vision is None:
            self._vision = VisionEncoder(
                self.profile.vision_model, self.profile.vision_revision, *self._device_dtype()
            )
        return self._vision

    def adopt_encoders(self, other: "VaultQuery") -> None:
        """Use the encoders `other` already loaded (same profile and device): a new index, no
        model reload."""
        self._vision, self._text = other._vision, other._text

    @property
    def vision(self):
        """The vision encoder, checked against the index it queries."""
        encoder = self._encoder()
        if encoder.width != self.index.meta.get("dims"):
            raise QueryError(
                f"the vision model gives {encoder.width}-d embeddings, the index holds "
                f"{self.index.meta.get('dims')}-d ones"
            )
        return encoder

    @property
    def text_store(self) -> RowStore:
        if self._store is None:
            self._store = open_text_store(self.home, self.profile)
        return self._store

    # ------------------------------------------------------------ queries

    def embed(self, image) -> np.ndarray:
        return self.embed_pictures([image])[0]

    def nearest(
        self,
        embedding: np.ndarray,
        k: int,
        temperature: float = DEFAULT_TEMPERATURE,
        exclude: frozenset[int] = frozenset(),
        allow=None,
    ) -> list[Neighbor]:
        """The k nearest images still in the library, weighted by softmax(similarity / temperature);
        image ids in `exclude` are skipped (an evaluation leaves the query image out of its own
        answer). `allow(lookup_rows) -> bool per row`, when given, says which candidates a
        person's filters let through: then fewer than k may come back, never none."""
        check_inputs(k=k, temperature=temperature)
        index = self.index
        total, present = int(index.index.ntotal), int(index.lookup.num_rows)
        if k > present:
            raise QueryError(
                f"k={k} is larger than the library the index answers for ({present} images)"
            )
        # Images gone since the build are still in the index (until the next rebuild) but not in the
        # lookup: search deeper until k present ones are found or the whole index has been seen.
        query = np.ascontiguousarray(embedding[None], dtype=np.float32)
        fetch = min(total, (k if allow is None else 8 * k) + len(exclude) + 16)
        exhaustive = False
        while True:
            with omp_threads(
                1
            ):  # OpenMP's thread count is per calling thread: concurrent queries keep theirs
                sims, ids = search_index(index.index, query, fetch, every_list=exhaustive)
            rows = index.rows_for(ids[0])
            found = [
                (float(s), int(i), int(r))
                for s, i, r in zip(sims[0], ids[0], rows)
                if r >= 0 and i >= 0 and int(i) not in exclude
            ]
            if allow is not None and found:
                allowed = allow(np.array([r for _, _, r in found], dtype=np.int64))
                found = [f for f, ok in zip(found, allowed) if ok]
            keep = found[:k]
            if len(keep) == k or (fetch >= total and exhaustive):
                break
            # The whole index asked for and still short: an IVF index probed only some lists; probe
            # all.
            exhaustive = fetch >= total
            fetch = min(total, fetch * 4)
        if not keep and allow is not None:
            raise QueryError("no image in the library matches the filters")
        if len(keep) < k and allow is None:
            raise QueryError(
                f"only {len(keep)} of the k={k} nearest indexed images are still in the library; "
                "lower k or rebuild the index"
            )
        scores = np.array([s for s, _, _ in keep])
        weights = np.exp((scores - scores.max()) / temperature)
        weights /= weights.sum()
        lookup = index.lookup
        out = []
        for (sim, image_id, row), weight in zip(keep, weights):
            values = {
                column: lookup.column(column)[row].as_py()
                for column in ("path", "prompt", "negative_prompt", "generator", "content_hash")
            }
            for column, empty in (
                ("loras", []),
                ("lora_hashes", None),
            ):  # indexes published before them lack these
                values[column] = (
                    (lookup.column(column)[row].as_py() or empty)
                    if column in lookup.column_names
                    else empty
                )
            out.append(Neighbor(image_id, sim, float(weight), **values))
        return out

    def search(self, image_path: str | Path, box: Box | None = None, k: int = 5) -> list[Neighbor]:
        return self.nearest(self.embed(load_image(image_path, box)), k)

    def search_text(self, prompt: str, k: int = 5) -> list[Neighbor]:
        """The library images nearest to a prompt's pooled embedding: only where the profile's
        vision tower shares SDXL's pooled space (the trained tiny world); elsewhere the two
        spaces are unrelated."""
        if not self.profile.shared_space:
            raise QueryError(
                f"text search needs a vision encoder trained in SDXL's pooled text space; the "
                f"'{self.profile.name}' profile's vision encoder and text encoders are different "
                "CLIP models"
            )
        if not prompt.strip():
            raise QueryError("text search needs some text")
        pooled = self.encode_prompt(prompt)[1].astype(np.float32)
        return self.nearest(pooled / max(float(np.linalg.norm(pooled)), 1e-12), k)

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
        tokens = store.read_rows("prompt_embeds", picked)
        firsts = np.cumsum([0, *counts[:-1]])
        pooled = weighted_sum(
            weights[present], store.read_rows("pooled_prompt_embeds", picked[firsts])
        )
        parts = [
            tokens[f : f + c].reshape(c * seq_width[0], seq_width[1])
            for f, c in zip(firsts, counts)
        ]
        stacked = np.stack(aligned(parts))
        embeds = weighted_sum(weights[present], stacked).reshape(stacked.shape[1:])
        if not (
            np.isfinite(embeds).all() and np.isfinite(pooled).all()
        ):  # stores written before checksums
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

    def embed_pictures(self, images: list, use_index: bool = True) -> np.ndarray:
        """[N, D] embeddings of N pictures in one forward pass; `use_index=False` skips opening the
        index (a projector needs none), else the encoder is checked against the index's width."""
        encoder = self.vision if use_index else self._encoder()
        return encoder.embed_pixels(np.stack([encoder.preprocess(image) for image in images]))

    def encode_prompt(
        self, prompt: str, syntax: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A typed prompt's conditioning ([77·c, D], [P]), read by `syntax` (default: the
        `prompts.syntax` setting, a1111): weights, BREAK and long prompts as that writer reads
        them."""
        if self._text is None:
            self._text = SDXLTextEncoder(
                self.profile.sdxl_model, self.profile.sdxl_revision, *self._device_dtype()
            )
        syntax = syntax or self.home.settings().text("prompts.syntax")
        return encode_parsed(self._text, parse(prompt, syntax))
