"""The `catalog` domain (group `catalog`)."""

import dagster as dg

from luna_assets.defs.catalog.assets import luna_catalog
from luna_core.home.home import LunaHome


def definitions(home: LunaHome | None = None) -> dg.Definitions:
    return dg.Definitions(assets=[luna_catalog])
