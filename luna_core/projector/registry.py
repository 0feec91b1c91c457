"""The MLflow registry of a Luna home's projectors: one `Registry` per (home, tracking URI), one
MlflowClient per registry, typed versions, and `champion()` for every caller that needs @champion.

Checkpoints are safetensors plus a JSON config, never pickle; the logged `pyfunc` model wraps
them, so `mlflow.pyfunc.load_model("models:/luna-projector@champion")` maps image embeddings [N,
in_dim] to flattened conditionings [N, 77*D + P]. Registering and promoting: `promotion.py`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from luna_core.errors import CorruptStoreError, LunaConfigError, NotBuiltError
from luna_core.home.home import LunaHome
from luna_core.home.settings import KEYS_BY_NAME

# Re-exported: models registered before checkpoints.py existed import ProjectorPyfunc from this
# module.
from luna_core.projector.checkpoints import ProjectorPyfunc, load_checkpoint  # noqa: F401
from luna_core.projector.request import CHAMPION, REGISTERED_NAME

TRACKING_URI_ENV = KEYS_BY_NAME["operations.tracking_uri"].env
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, "No data"); Luna's
# experiments hold training runs and reports: the classic view.
EXPERIMENT_KIND_TAG, CLASSIC_ML = "mlflow.experimentKind", "custom_model_development"


def resolve_tracking_uri(home: LunaHome, uri: str | None = None) -> str:
    """The registry to use: the URI given, else $LUNA_MLFLOW_URI, else `[operations] tracking_uri`
    of the home's luna.toml (a `luna mlflow-server`), else the home's embedded sqlite store."""
    return (
        home.settings({"operations.tracking_uri": uri}).text("operations.tracking_uri")
        or home.default_tracking_uri()
    )


def name_filter(name: str) -> str:
    """An MLflow search filter matching one registered model name, quoted so the name cannot
    change it."""
    if "'" not in name:
        return f"name='{name}'"
    if '"' not in name:
        return f'name="{name}"'
    raise LunaConfigError(
        f"registered model name {name!r} holds both kinds of quote; choose a plainer name"
    )


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """A remote tracking server must answer before anything is logged: nothing half-registered."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LunaConfigError(
            f"MLflow tracking server {uri} is not reachable ({getattr(exc, 'reason', exc)}); "
            "start it, or leave the tracking URI empty for the embedded sqlite store"
        ) from None


@dataclass(frozen=True)
class ProjectorVersion:
    """One registered version, as Luna reads it back."""

    name: str
    version: int
    aliases: tuple[str, ...]
    run_id: str
    arch: str
    val_loss: str  # as recorded at registration ("" when never scored)
    token_cos: float
    pooled_cos: float
    fingerprint: str
    promoted: str
    subset: str
    tags: dict
    checkpoint_values: int = 0  # parameters and buffers (0: registered before it was recorded)

    @property
    def is_champion(self) -> bool:
        return CHAMPION in self.aliases

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def row(self) -> dict:
        """The version as a table row (CLI, asset metadata)."""
        return {
            "version": self.version,
            "aliases": ",".join(self.aliases),
            "arch": self.arch,
            "values": self.checkpoint_values or "",
            "val_loss": self.val_loss,
            "token_cos": f"{self.token_cos:.4f}",
            "pooled_cos": f"{self.pooled_cos:.4f}",
            "fingerprint": self.fingerprint,
            "promoted": self.promoted,
            "subset": self.subset,
        }


class Registry:
    """The projectors registered for one home, in the registry its settings name."""

    def __init__(self, home: LunaHome, uri: str | None = None):
        self.home = home
        self.uri = resolve_tracking_uri(home, uri)
        self._client = None

    @property
    def embedded(self) -> bool:
        return self.uri == self.home.default_tracking_uri()

    @property
    def exists(self) -> bool:
        """False for the home's embedded store before anything was registered: reading must not
        create a database in a home that has none."""
        return not self.embedded or (self.home.mlflow_dir / "mlflow.db").exists()

    @property
    def client(self):
        """The registry's one MlflowClient, made on first use (a remote server must answer
        first)."""
        if self._client is None:
            # mlflow takes about a second to import: only code that reads the registry pays for it.
            from mlflow import MlflowClient

            check_reachable(self.uri)
            # A checkpoint is a few files: MLflow's download bar would only clutter the CLI's
            # output.
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
            if self.embedded:
                self.home.mlflow_dir.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def log_run(
        self,
        experiment: str,
        run_name: str,
        params: dict | None = None,
        metrics: list[tuple[str, float, int]] = (),
        tags: dict | None = None,
        artifacts: dict[str, Path] | None = None,
    ) -> tuple[str, str]:
        """One finished run through this registry's client (never MLflow's process-wide URI):
        params, metrics as (key, value, step), tags, and folders logged under their artifact
        paths. Returns (run id, artifact URI); a failure marks the run FAILED."""

        # mlflow takes about a second to import: only code that reads or writes the registry pays
        # for it
        from mlflow.entities import Metric, Param, RunTag

        run = self.client.create_run(self.experiment(experiment), run_name=run_name)
        run_id, now = run.info.run_id, int(time.time() * 1000)
        try:
            self.client.log_batch(
                run_id, params=[Param(k, str(v)) for k, v in (params or {}).items()]
            )
            for start in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics a batch
                self.client.log_batch(
                    run_id,
                    metrics=[
                        Metric(k, float(v), now, int(step))
                        for k, v, step in metrics[start : start + 900]
                    ],
                )
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
            for artifact_path, folder in (artifacts or {}).items():
                self.client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return run_id, run.info.artifact_uri

    # ------------------------------------------------------------ reading

    def versions(self, name: str = REGISTERED_NAME) -> list[ProjectorVersion]:
        """Every version of `name`, oldest first; [] when the model or the registry does not
        exist."""
        if not self.exists:
            return []
        # mlflow takes about a second to import: only code that reads or writes the registry pays
        # for it
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            return []
        aliases: dict[str, list[str]] = {}
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
        out = []
        for v in sorted(
            self.client.search_model_versions(name_filter(name)), key=lambda v: int(v.version)
        ):
            metrics = self.client.get_run(v.run_id).data.metrics
            out.append(
                ProjectorVersion(
                    name=name,
                    version=int(v.version),
                    aliases=tuple(sorted(aliases.get(str(v.version), []))),
                    run_id=v.run_id,
                    arch=v.tags.get("arch", ""),
                    checkpoint_values=int(v.tags.get("checkpoint_values", 0) or 0),
                    val_loss=v.tags.get("candidate_val_loss", ""),
                    token_cos=float(metrics.get("final_val_token_cosine", float("nan"))),
                    pooled_cos=float(metrics.get("final_val_pooled_cosine", float("nan"))),
                    fingerprint=v.tags.get("data_fingerprint", ""),
                    promoted=v.tags.get("promoted", ""),
                    subset=v.tags.get("subset", ""),
                    tags=dict(v.tags),
                )
            )
        return out

    def _model_version(self, name: str, ref: int | str):
        """MLflow's version record for a number or an alias; NotBuiltError naming what is
        missing."""
        if not self.exists:
            raise NotBuiltError(
                f"no projector is registered in {self.home.root} yet: materialize `projector` "
                "(or run `luna demo`), or give the registry with --tracking-uri / "
                f"${TRACKING_URI_ENV}"
            )
        # mlflow takes about a second to import: only code that reads or writes the registry pays
        # for it
        from mlflow.exceptions import MlflowException

        try:
            return (
                self.client.get_model_version(name, str(ref))
                if str(ref).isdigit()
                else self.client.get_model_version_by_alias(name, str(ref))
            )
        except MlflowException as exc:
            raise NotBuiltError(
                f"no projector {name} {'version' if str(ref).isdigit() else 'alias'} {ref} in "
                f"{self.uri} ({str(exc).splitlines()[0][:160]})"
            ) from None

    def champion(self, name: str = REGISTERED_NAME) -> ProjectorVersion | None:
        """@champion of `name` (its alias list, never a substring of a label); None when there is
        none."""
        return next((v for v in self.versions(name) if v.is_champion), None)

    def resolve(self, name: str, ref: int | str) -> int:
        """The version number an alias (or number) names now, without loading the checkpoint."""
        return int(self._model_version(name, ref).version)

    def load(self, name: str, ref: int | str, expect: dict | None = None):
        """(model, config) of a version by number or alias, from its safetensors checkpoint."""
        # mlflow takes about a second to import: only code that reads or writes the registry pays
        # for it
        from mlflow.exceptions import MlflowException

        version = self._model_version(name, ref)
        own = self._home_artifact(self.client.get_run(version.run_id).info.artifact_uri)
        if own is not None:
            return load_checkpoint(own / "checkpoint", expect)
        target = Path(tempfile.mkdtemp(prefix="luna-projector-load-"))
        try:
            local = self.client.download_artifacts(version.run_id, "checkpoint", str(target))
            return load_checkpoint(Path(local), expect)
        except (MlflowException, OSError) as exc:
            raise CorruptStoreError(
                f"the checkpoint of {name} v{version.version} is missing ({exc})"
            ) from None
        finally:
            shutil.rmtree(target, ignore_errors=True)

    def champion_training(self, name: str = REGISTERED_NAME) -> dict | None:
        """@champion's version, data fingerprint and number of training pairs; None when there is
        none."""
        champion = self.champion(name)
        if champion is None:
            return None
        pairs = self.client.get_run(champion.run_id).data.params.get("train_pairs", "0")
        return {
            "version": champion.version,
            "fingerprint": champion.fingerprint,
            "train_pairs": int(pairs),
        }

    def experiment(self, name: str) -> str:
        """The id of experiment `name`, created (artifacts under the home unless a server decides)
        as a classic ML experiment; an existing one without a kind gets the classic kind too."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
                self.client.set_experiment_tag(
                    experiment.experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML
                )
            return experiment.experiment_id
        tags = {EXPERIMENT_KIND_TAG: CLASSIC_ML}
        if self.uri.startswith(("http://", "https://")):
            # the server decides where artifacts go
            return self.client.create_experiment(name, tags=tags)
        return self.client.create_experiment(
            name, artifact_location=self.home.mlflow_artifacts(), tags=tags
        )

    def _home_artifact(self, artifact_uri: str) -> Path | None:
        """A run's artifact folder inside *this* home, for the embedded registry: MLflow records
        absolute artifact locations, so a moved or copied home would otherwise read the original
        home's files."""
        if not self.embedded or not artifact_uri.startswith("file:"):
            return None
        parts = Path(unquote(urlparse(artifact_uri).path)).parts
        for i in range(len(parts) - 1):
            if parts[i : i + 2] == ("mlflow", "artifacts"):
                local = self.home.mlflow_dir.joinpath("artifacts", *parts[i + 2 :])
                return local if local.is_dir() else None
        return None


def parse_model_uri(uri: str) -> tuple[str, str]:
    """'models:/name@alias' or 'models:/name/3' → (name, alias-or-version)."""
    if not uri.startswith("models:/"):
        raise LunaConfigError(
            f"projector reference {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    rest = uri[len("models:/") :]
    if "@" in rest:
        name, ref = rest.split("@", 1)
    elif "/" in rest:
        name, ref = rest.rsplit("/", 1)
    else:
        raise LunaConfigError(f"projector reference {uri!r} names no alias or version")
    return name, ref
