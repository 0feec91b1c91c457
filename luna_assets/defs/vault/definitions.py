"""The `vault` domain (group `embeddings`): the two Zarr stores, filled incrementally after every
ingest."""

import dagster as dg

from luna_assets.defs.vault.assets import store_assets, text_conditionings, vision_embeddings
from luna_core.home.home import LunaHome


def definitions(home: LunaHome | None = None) -> dg.Definitions:
    """The vault's assets; partitioned by shard when the home asks for more than one ([vault]
    shards)."""
    shards = home.vault_shards() if home is not None else 1
    return dg.Definitions(
        assets=store_assets(shards) if shards > 1 else [vision_embeddings, text_conditionings]
    )
