"""Text conditionings for every unique prompt the store lacks, encoded as its writer encoded it,
in batches (one by one where a batch fails, so one bad prompt is recorded, not the batch)."""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from luna_core.home.home import LunaHome
from luna_core.models.encoders import SDXLTextEncoder, VisionEncoder
from luna_core.models.profiles import (
    ModelProfile,
    check_model_reference,
)
from luna_core.prompts.encode import encode_many
from luna_core.prompts.parsers import parse
from luna_core.prompts.syntax import chunk_key
from luna_core.vault.commits import TEXT, Committer, StoreSpec, store_and_committer
from luna_core.vault.embed import (
    EmbedOptions,
    EmbedReport,
    device_dtype,
    encoder_for,
    finish_report,
    progress_bar,
)
from luna_core.vault.manifests import work_for
from luna_core.vault.segments import (
    Shard,
)
from luna_core.vault.store import TEXT_LAYOUT

log = logging.getLogger(__name__)


def embed_prompts(
    home: LunaHome,
    profile: ModelProfile,
    options: EmbedOptions | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    shard: Shard | None = None,
) -> EmbedReport:
    """SDXL conditionings for every unique prompt text (positive and negative) without one for the
    profile's encoder pair; one row per text, shared by every image that used it. With a `shard`,
    only its prompts, into its own segment store and manifests."""

    options = options or EmbedOptions()
    catalog_path, started = home.catalog_path, time.perf_counter()
    key = profile.text_key
    path = home.text_store(profile)
    report = EmbedReport(TEXT, key, profile.sdxl_model, str(path))
    check_model_reference(profile.sdxl_model, "SDXL model")
    work_sql = """
        SELECT p.prompt_hash, p.prompt, p.syntax FROM prompts p
        WHERE NOT EXISTS (SELECT 1 FROM text_rows t WHERE t.store_key = $key AND t.prompt_hash =
            p.prompt_hash)
          AND NOT EXISTS (SELECT 1 FROM embedding_failures f WHERE f.store_key = $key AND f.item_key
              = p.prompt_hash)
          {shard}
        ORDER BY p.prompt_hash"""
    work, report.already_present, next_row = work_for(
        home, profile, "text_rows", key, work_sql, path, shard
    )
    if not work:
        return finish_report(report, path, started, next_row)

    loading = time.perf_counter()
    encoder = encoder_for(
        SDXLTextEncoder,
        profile.sdxl_model,
        profile.sdxl_revision,
        *device_dtype(profile, options, report),
    )
    report.load_seconds = time.perf_counter() - loading
    fields = {
        "prompt_embeds": (encoder.seq_len, encoder.width),
        "pooled_prompt_embeds": (encoder.pooled_width,),
    }
    spec = StoreSpec(
        TEXT,
        key,
        profile.sdxl_model,
        profile.sdxl_revision,
        path,
        fields,
        TEXT_LAYOUT,
        codec=home.text_codec(),
    )
    store, committer, offset = store_and_committer(
        catalog_path, spec, options.commit_rows, options.commit_seconds, shard
    )
    batch_size = max(1, min(options.batch_size, TEXT_LAYOUT.rows_per_shard))
    bar = progress_bar(len(work), "text conditionings", "prompt", options.progress)
    report.new_rows = (next_row, next_row)
    with store.writer():
        for start in range(0, len(work), batch_size):
            items = work[start : start + batch_size]
            parsed = [parse(text, syntax) for _, text, syntax in items]
            try:
                counts = encoder.token_counts([p.plain for p in parsed])
                t0 = time.perf_counter()
                encoded = encode_many(encoder, parsed)
                report.model_seconds += time.perf_counter() - t0
            except (
                Exception
            ) as exc:  # one bad batch must not stop the rest: retry its prompts one by one
                log.warning("text batch failed (%s); encoding its prompts one at a time", exc)
                items, parsed, counts, encoded = _encode_one_by_one(
                    encoder, items, parsed, committer, report
                )
                if not items:
                    continue
            rows, embeds, pooled = [], [], []
            for (key, _, _), prompt, count, (tokens, pool) in zip(items, parsed, counts, encoded):
                chunks = tokens.shape[0] // encoder.seq_len
                embeds.append(tokens.reshape(chunks, encoder.seq_len, -1))
                # every chunk row carries the prompt's pooled
                pooled.append(np.repeat(pool[None], chunks, axis=0))
                truncated = prompt.syntax == "literal" and count > encoder.seq_len
                rows += [
                    {
                        "key": chunk_key(key, i),
                        "row": next_row + len(rows) + i,
                        "token_count": count,
                        "truncated": truncated,
                        "chunks": chunks if i == 0 else 0,
                    }
                    for i in range(chunks)
                ]
                report.truncated += truncated
                report.chunked += chunks > 1
            store.write(
                next_row - offset,
                {
                    "prompt_embeds": np.concatenate(embeds),
                    "pooled_prompt_embeds": np.concatenate(pooled),
                },
            )
            committer.add_rows(rows)
            next_row += len(rows)
            report.added += len(items)
            bar.update(len(items))
            if on_progress:
                on_progress(min(start + batch_size, len(work)), len(work))
        committer.commit()
    bar.close()
    report.new_rows = (report.new_rows[0], next_row)
    return finish_report(report, path, started, next_row)


def _encode_one_by_one(encoder, items, parsed, committer: Committer, report: EmbedReport):
    """The prompts of a failed batch, each on its own: one that fails is recorded, the rest are
    kept."""
    kept, kept_parsed, counts, encoded = [], [], [], []
    for item, prompt in zip(items, parsed):
        try:
            count = encoder.token_counts([prompt.plain])[0]
            (answer,) = encode_many(encoder, [prompt])
        except Exception as exc:
            committer.add_failure(item[0], None, "encode_failed", f"{type(exc).__name__}: {exc}")
            report.failed += 1
            report.failures_by_reason["encode_failed"] = (
                report.failures_by_reason.get("encode_failed", 0) + 1
            )
            continue
        kept.append(item)
        kept_parsed.append(prompt)
        counts.append(count)
        encoded.append(answer)
    return kept, kept_parsed, counts, encoded


def warm_encoders(home: LunaHome) -> list[str]:
    """Load the home's image and text encoders into this process's cache, as the embedding steps
    ask for them (the home's profile on `models.device` / `models.dtype`): a worker that warms them
    when it starts runs its first step without paying the load. The models loaded."""
    profile = home.profile()
    settings = home.settings()
    options = EmbedOptions(
        device=settings.text("models.device"), dtype=settings.text("models.dtype")
    )
    device, dtype = device_dtype(profile, options, EmbedReport(TEXT, "", "", ""))
    encoder_for(VisionEncoder, profile.vision_model, profile.vision_revision, device, dtype)
    encoder_for(SDXLTextEncoder, profile.sdxl_model, profile.sdxl_revision, device, dtype)
    return [profile.vision_model, profile.sdxl_model]
