"""The `refine` domain: refining is an action, not an asset (job `refine_images`)."""

import dagster as dg

from luna_assets.defs.refine.jobs import refine_images
from luna_core.home.home import LunaHome


def definitions(home: LunaHome | None = None) -> dg.Definitions:
    return dg.Definitions(jobs=[refine_images])
