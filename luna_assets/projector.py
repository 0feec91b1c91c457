"""The `projector` group: image embedding → SDXL conditioning networks, versioned in MLflow."""

import dagster as dg

from dagster_project.resources import LunaHomeResource, LunaModelsResource
from luna_assets.index import LUNA_CATALOG
from luna_core.projector.models import ProjectorConfig
from luna_core.projector.pipeline import train_and_register
from luna_core.projector.registry import REGISTERED_NAME, list_versions, tracking_uri
from luna_core.projector.train import TrainSettings

PROJECTOR = dg.AssetKey("projector")
PROJECTOR_CODE_VERSION = "1"


class ProjectorTrainConfig(dg.Config):
    """Launchpad settings of a projector training run."""

    arch: str = "resampler"  # linear | mlp | resampler
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    rank: int = 48
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 3
    seed: int = 0
    margin: float = 0.0  # val-loss improvement needed to move @champion
    model_name: str = REGISTERED_NAME  # a subset specialist gets a name of its own
    where: str = ""  # SQL condition over the `library` view, e.g. prompt ILIKE '%face%'
    force: bool = False  # train even when this data, config and code already have a version
    min_train_pairs: int = 32  # fewer is refused: no meaningless models
    min_val_pairs: int = 4
    tracking_uri: str = ""  # empty: the embedded sqlite under the Luna home; else e.g. http://mlflow:5000


@dg.asset(
    key=PROJECTOR,
    deps=[LUNA_CATALOG],
    group_name="projector",
    kinds={"pytorch", "mlflow"},
    code_version=PROJECTOR_CODE_VERSION,
    # Follows the catalog; a run whose pairs, config and code already have a version trains nothing.
    automation_condition=dg.AutomationCondition.eager(),
    check_specs=[
        dg.AssetCheckSpec("champion_is_best", asset=PROJECTOR, blocking=True,
                          description="@champion points at a version at least as good (val loss) as the candidate."),
        dg.AssetCheckSpec("versions_have_fingerprints", asset=PROJECTOR,
                          description="Every registered version carries the fingerprint of the pairs that trained it."),
    ],
)
def projector(context: dg.AssetExecutionContext, config: ProjectorTrainConfig, luna: LunaHomeResource,
              models: LunaModelsResource) -> dg.MaterializeResult:
    """A projector trained on the train split, registered in MLflow as a new version; @champion moves only when it beats the champion on the val split."""
    home = luna.luna_home
    profile = models.resolve(home)
    arch = ProjectorConfig(arch=config.arch, hidden=config.hidden, layers=config.layers, heads=config.heads,
                           rank=config.rank)
    settings = TrainSettings(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                             patience=config.patience, seed=config.seed, min_train_pairs=config.min_train_pairs,
                             min_val_pairs=config.min_val_pairs)
    outcome = train_and_register(home.root, home.catalog_path, profile, arch, settings, config.model_name,
                                 config.where or None, config.margin, PROJECTOR_CODE_VERSION,
                                 tags={"dagster_run_id": context.run_id}, force=config.force,
                                 uri=config.tracking_uri or None,
                                 on_epoch=lambda row: context.log.info(
                                     "epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                                     "val token cosine {val_token_cosine:.4f}".format(**row)))
    versions = list_versions(home.root, config.model_name, uri=config.tracking_uri or None)
    table = "\n".join(["| version | aliases | arch | val loss | token cos | pooled cos |", "|---|---|---|---|---|---|"] + [
        f"| {v['version']} | {v['aliases']} | {v['arch']} | {v['val_loss']} | {v['token_cos']} | {v['pooled_cos']} |"
        for v in versions])
    metadata = {"trained": outcome.trained, "reason": outcome.reason, "registered model": config.model_name,
                "tracking uri": config.tracking_uri or tracking_uri(home.root), "versions": dg.MetadataValue.md(table)}
    checks = [dg.AssetCheckResult(check_name="versions_have_fingerprints",
                                  passed=all(v["fingerprint"] for v in versions),
                                  metadata={"versions": len(versions)})]
    if outcome.trained:
        result, reg = outcome.result, outcome.registration
        metadata.update({
            "version": reg.version, "promoted": reg.promoted, "decision": reg.decision,
            "candidate val loss": dg.MetadataValue.float(round(reg.candidate_score, 6)),
            "champion val loss": dg.MetadataValue.float(round(reg.champion_score, 6)) if reg.champion_score is not None
            else "none", "train pairs": result.train_pairs, "val pairs": result.val_pairs,
            "epochs run": len(result.history), "pairs/s": dg.MetadataValue.float(round(result.pairs_per_s, 1)),
            "data fingerprint": result.data_fingerprint,
            "val token cosine": dg.MetadataValue.float(round(result.val_metrics["token_cosine"], 4)),
            "val pooled cosine": dg.MetadataValue.float(round(result.val_metrics["pooled_cosine"], 4)),
        })
        champion_ok = reg.promoted or (reg.champion_score is not None and reg.champion_score <= reg.candidate_score + config.margin)
        checks.append(dg.AssetCheckResult(check_name="champion_is_best", passed=bool(champion_ok),
                                          metadata={"decision": reg.decision}))
    else:
        checks.append(dg.AssetCheckResult(check_name="champion_is_best", passed=True,
                                          metadata={"decision": "no new candidate"}))
    return dg.MaterializeResult(metadata=metadata, check_results=checks)
