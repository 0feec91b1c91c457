"""The `projector` domain: image embedding → SDXL conditioning networks, versioned in MLflow."""

import dagster as dg

from luna_assets.automation import AC, GPU_POOL, cron_setting
from luna_assets.defs.catalog.assets import LUNA_CATALOG
from luna_assets.metadata import md_table
from luna_assets.resources import LunaHomeResource, LunaModelsResource
from luna_core.home.home import LunaHome
from luna_core.projector.config import ProjectorConfig, TrainSettings
from luna_core.projector.request import REGISTERED_NAME, ProjectorRequest

PROJECTOR = dg.AssetKey("projector")
PROJECTOR_CODE_VERSION = "1"
RETRAIN_CRON = "schedules.retrain_cron"  # default weekly, Sunday 04:00
RETRAIN_SENSOR = "projector_retrain_policy"
CHECK_CHAMPION = "champion_is_best"
CHECK_FINGERPRINTS = "versions_have_fingerprints"
_ARCH, _TRAIN = ProjectorConfig(), TrainSettings()


class ProjectorTrainConfig(dg.Config):
    """Launchpad settings of a projector training run (defaults: luna_core's ProjectorConfig and
    TrainSettings)."""

    arch: str = _ARCH.arch  # kernel | linear | mlp | resampler
    hidden: int = _ARCH.hidden
    layers: int = _ARCH.layers
    heads: int = _ARCH.heads
    rank: int = _ARCH.rank
    anchors: int = _ARCH.anchors  # kernel: training embeddings compared with
    epochs: int = _TRAIN.epochs
    batch_size: int = _TRAIN.batch_size
    lr: float = _TRAIN.lr
    weight_decay: float = _TRAIN.weight_decay
    patience: int = _TRAIN.patience
    seed: int = _TRAIN.seed
    margin: float = ProjectorRequest.margin  # val-loss improvement needed to move @champion
    model_name: str = REGISTERED_NAME  # a subset specialist gets a name of its own
    where: str = ""  # SQL condition over the `library` view, e.g. prompt ILIKE '%face%'
    force: bool = False  # train even when this data, config and code already have a version
    min_train_pairs: int = _TRAIN.min_train_pairs  # fewer is refused: no meaningless models
    min_val_pairs: int = _TRAIN.min_val_pairs
    tracking_uri: str = ""  # empty: $LUNA_MLFLOW_URI, else the embedded sqlite under the Luna home

    def request(self, run_id: str) -> ProjectorRequest:
        arch = ProjectorConfig(
            arch=self.arch,
            hidden=self.hidden,
            layers=self.layers,
            heads=self.heads,
            rank=self.rank,
            anchors=self.anchors,
        )
        settings = TrainSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            patience=self.patience,
            seed=self.seed,
            min_train_pairs=self.min_train_pairs,
            min_val_pairs=self.min_val_pairs,
        )
        return ProjectorRequest(
            arch,
            settings,
            self.model_name,
            self.where or None,
            self.margin,
            self.force,
            self.tracking_uri or None,
            PROJECTOR_CODE_VERSION,
            {"dagster_run_id": run_id},
        )


def train_projector(
    context: dg.AssetExecutionContext,
    config: ProjectorTrainConfig,
    luna: LunaHomeResource,
    models: LunaModelsResource,
) -> dg.MaterializeResult:
    """A projector trained on the train split, registered in MLflow as a new version; @champion
    moves only when it beats the champion on the val split. "Unsynced" after a library change
    is expected: it retrains weekly, or when the training pairs grew enough (see its latest
    "retrain policy" observation)."""
    # torch (through training and the registry's checkpoints): only this step pays its import, not
    # every process that loads the definitions
    from luna_core.projector.pipeline import train_and_register
    from luna_core.projector.promotion import verify_champion
    from luna_core.projector.registry import Registry
    from luna_core.projector.train import validation_scorer

    home = luna.luna_home
    profile = models.resolve(home)
    request = config.request(context.run.run_id)
    outcome = train_and_register(
        home,
        profile,
        request,
        on_epoch=lambda row: context.log.info(
            "epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
            "val token cosine {val_token_cosine:.4f}".format(**row)
        ),
    )
    registry = Registry(home, request.tracking_uri)
    versions = registry.versions(request.name)
    metadata = {
        "trained": outcome.trained,
        "reason": outcome.reason,
        "registered model": request.name,
        "tracking uri": registry.uri,
        "versions": md_table(
            [v.row() for v in versions],
            ["version", "aliases", "arch", "val_loss", "token_cos", "pooled_cos"],
        ),
    }
    if outcome.trained:
        result, reg = outcome.result, outcome.registration
        metadata.update(
            {
                "version": reg.version,
                "promoted": reg.promoted,
                "decision": reg.decision,
                "candidate val loss": dg.MetadataValue.float(round(reg.candidate_score, 6)),
                "champion val loss": dg.MetadataValue.float(round(reg.champion_score, 6))
                if reg.champion_score is not None
                else "none",
                "train pairs": result.train_pairs,
                "val pairs": result.val_pairs,
                "epochs run": len(result.history),
                "pairs/s": dg.MetadataValue.float(round(result.pairs_per_s, 1)),
                "data fingerprint": result.data_fingerprint,
                "val token cosine": dg.MetadataValue.float(
                    round(result.val_metrics["token_cosine"], 4)
                ),
                "val pooled cosine": dg.MetadataValue.float(
                    round(result.val_metrics["pooled_cosine"], 4)
                ),
            }
        )
    scorer = validation_scorer(home, profile, request.settings.batch_size, request.where)
    verdict = verify_champion(registry, scorer, request.name)
    checks = [
        dg.AssetCheckResult(
            check_name=CHECK_CHAMPION,
            passed=verdict.passed,
            description=verdict.description,
            metadata=verdict.metadata,
        ),
        dg.AssetCheckResult(
            check_name=CHECK_FINGERPRINTS,
            passed=all(v.fingerprint for v in versions),
            metadata={"versions": len(versions)},
        ),
    ]
    # Downstream (the report) follows new versions and a moved @champion, not a run that trained
    # nothing.
    champion = next((v.version for v in versions if v.is_champion), None)
    latest = versions[-1].version if versions else None
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=checks,
        data_version=dg.DataVersion(f"{request.name}: latest v{latest}, @champion v{champion}"),
    )


def projector_asset(home: LunaHome | None) -> dg.AssetsDefinition:
    """The projector asset, its weekly retrain cron taken from the home's settings."""
    return dg.asset(
        key=PROJECTOR,
        deps=[LUNA_CATALOG],
        group_name="projector",
        kinds={"pytorch", "mlflow"},
        code_version=PROJECTOR_CODE_VERSION,
        # Not on every new image: trained when missing, weekly when the catalog changed, and by the
        # retrain-policy sensor once the training pairs grew by a share.
        automation_condition=(
            # Not while a run that will train it (`luna build`, the UI's build-all) is in progress:
            # else the automation sensor trains a second version beside it.
            (AC.missing() & ~AC.any_deps_missing() & ~AC.any_deps_in_progress() & ~AC.in_progress())
            .newly_true()
            .with_label("missing, once the catalog is built")
            | AC.on_cron(cron_setting(home, RETRAIN_CRON)[0])
        ).with_label("trained when missing, else weekly"),
        pool=GPU_POOL,
        check_specs=[
            dg.AssetCheckSpec(
                CHECK_CHAMPION,
                asset=PROJECTOR,
                blocking=True,
                description="@champion's checkpoint, re-scored on the val pairs, reproduces its "
                "recorded "
                "val loss, the lowest among versions scored on the same pairs.",
            ),
            dg.AssetCheckSpec(
                CHECK_FINGERPRINTS,
                asset=PROJECTOR,
                description="Every registered version carries the fingerprint of the pairs that "
                "trained it.",
            ),
        ],
    )(train_projector)
