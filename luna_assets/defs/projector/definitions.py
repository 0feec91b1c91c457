"""The `projector` domain (group `projector`): image embedding → SDXL conditioning networks,
versioned in MLflow, and the retrain policy's sensor."""

import dagster as dg

from luna_assets.defs.projector.assets import projector_asset
from luna_assets.defs.projector.sensors import projector_retrain_policy
from luna_core.home.home import LunaHome


def definitions(home: LunaHome | None = None) -> dg.Definitions:
    return dg.Definitions(assets=[projector_asset(home)], sensors=[projector_retrain_policy])
