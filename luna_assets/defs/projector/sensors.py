"""The retrain policy: asks for a new projector when the training pairs grew by a share."""

import dagster as dg

from luna_assets.defs.catalog.assets import LUNA_CATALOG
from luna_assets.defs.projector.assets import PROJECTOR, RETRAIN_CRON, RETRAIN_SENSOR
from luna_assets.resources import LunaHomeResource
from luna_core.errors import LunaConfigError
from luna_core.home.settings import KEYS_BY_NAME
from luna_core.projector.policy import GROWTH, growth_share, retrain_decision


@dg.sensor(
    name=RETRAIN_SENSOR,
    target=[PROJECTOR],
    minimum_interval_seconds=120,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"Requests `projector` when the training pairs grew by a share ({GROWTH.place}; "
    f"default {GROWTH.default:.0%}) since the pairs that trained @champion; looks only after "
    "luna_catalog changed.",
)
def projector_retrain_policy(context: dg.SensorEvaluationContext, luna: LunaHomeResource):
    latest = context.instance.get_latest_materialization_event(LUNA_CATALOG)
    if latest is None:
        return dg.SkipReason("luna_catalog has not been materialized yet")
    marker = f"{latest.run_id}@{latest.timestamp}"
    if marker == context.cursor:
        return dg.SkipReason("luna_catalog has not changed since the last look")
    try:
        share = growth_share(luna.luna_home)
    except LunaConfigError as exc:
        context.log.warning(f"{exc}; using the default {GROWTH.default}")
        share = GROWTH.default
    decision = retrain_decision(luna.luna_home, share)
    context.update_cursor(marker)
    if not decision.due:
        # Shown on the projector's page beside Dagster's "Unsynced" badge: why no retrain follows.
        note = dg.AssetObservation(
            PROJECTOR,
            metadata={
                "retrain policy": f"not due: {decision.reason}",
                "why Unsynced": "luna_catalog changed since the last training; the projector "
                "retrains when the pairs "
                f"grew by {share:.0%} ({GROWTH.place}), weekly "
                f"({KEYS_BY_NAME[RETRAIN_CRON].place}), or when you "
                "materialize it",
            },
        )
        return dg.SensorResult(skip_reason=decision.reason, asset_events=[note])
    context.log.info(decision.reason)
    return dg.RunRequest(
        run_key=f"train-pairs-{decision.train_pairs}",
        asset_selection=[PROJECTOR],
        tags={"luna/trigger": RETRAIN_SENSOR, "luna/train-pairs": str(decision.train_pairs)},
    )
