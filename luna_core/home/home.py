"""The Luna home: one folder that holds every store, and the library roots it catalogues."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from luna_core.errors import LunaConfigError, NotBuiltError
from luna_core.home.settings import Settings, environment_settings, read_toml
from luna_core.home.storage import is_remote, location
from luna_core.models.profiles import ModelProfile, resolve_profile, with_named_model
from luna_core.operations.dagster_instance import ensure_instance
from luna_core.prompts.syntax import writer_overrides
from luna_core.vault.codec import check_codec

CONFIG_NAME = "luna.toml"


@dataclass(frozen=True)
class LunaHome:
    """Where every store of one Luna home lives. No other module builds paths under the home.

    catalog.duckdb                   the DuckDB catalog
    vault/vision/<vision key>.zarr   CLIP-ViT image embeddings of one vision model
    vault/text/<text key>.zarr       SDXL conditionings of one text-encoder pair
    index/<vision key>__<text key>/  FAISS index versions (vectors of one model, rows of the other)
    mlflow/                          the embedded MLflow registry (sqlite + artifacts)
    models/                          locally built model profiles (tiny)
    refined/, reports/               refinement outputs and benchmark reports
    dagster_home/                    the Dagster instance
    """

    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> "LunaHome":
        """The home given, else $LUNA_HOME, else ./luna_home; always an absolute path."""
        chosen = environment_settings(
            {"home": os.fspath(home) if home not in (None, "") else None}
        ).get("home")
        return cls(Path(chosen).expanduser().absolute())

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def samples_dir(self) -> Path:
        return self.root / "sample_library"

    @classmethod
    def existing(cls, home: str | os.PathLike[str] | None = None) -> "LunaHome":
        """An existing home; a path that is missing or is a file is a clear error (a typo must not
        silently create an empty home)."""
        resolved = cls.resolve(home)
        if resolved.root.exists() and not resolved.root.is_dir():
            raise LunaConfigError(f"Luna home {resolved.root} is a file, not a folder")
        if not resolved.root.is_dir():
            raise NotBuiltError(
                f"no Luna home at {resolved.root}: check --home (or $LUNA_HOME), "
                "or make one with `luna demo` or `luna ingest ROOT`"
            )
        return resolved

    def ensure(self) -> "LunaHome":
        """Create the home's folders (and its Dagster instance settings) if missing."""
        if self.root.exists() and not self.root.is_dir():
            raise LunaConfigError(f"Luna home {self.root} is a file, not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LunaConfigError(
                f"cannot create the Luna home {self.root}: {exc.strerror or exc}"
            ) from None
        self.dagster_home.mkdir(exist_ok=True)
        ensure_instance(self.dagster_home, self.settings())
        return self

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def storage_root(self):
        """Where the vault and the index live when not in the home: `[storage] root` in luna.toml or
        $LUNA_STORAGE_ROOT (e.g. s3://bucket/luna); None: in the home."""
        root = self.settings().text("storage.root")
        return location(root.rstrip("/")) if root else None

    @property
    def vault_dir(self) -> Path:
        return (self.storage_root or self.root) / "vault"

    def mlflow_artifacts(self) -> str:
        """Where MLflow keeps checkpoints and report files: under [storage] root when set, else
        the home."""
        root = self.storage_root
        if root is not None:
            return f"{root}/mlflow-artifacts"
        return (self.mlflow_dir / "artifacts").absolute().as_uri()

    def store_label(self, path) -> str:
        """How a store is recorded (catalog, index metadata): relative to the home, or its URL."""
        return str(path) if is_remote(path) else str(Path(path).relative_to(self.root))

    def recorded_store(self, recorded: str):
        """A store as the catalog records it: a URL, or a path relative to the home."""
        return location(recorded) if "://" in recorded else self.root / recorded

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def refined_dir(self) -> Path:
        return self.root / "refined"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def thumbnails_dir(self) -> Path:
        """The search page's thumbnail cache (luna_core.ask.thumbnails): safe to delete at any
        time."""
        return self.root / "cache" / "thumbnails"

    # ------------------------------------------------------------ stores of a model profile

    def vision_store(self, profile: ModelProfile) -> Path:
        return self.vault_dir / "vision" / f"{profile.vision_key}.zarr"

    def text_store(self, profile: ModelProfile) -> Path:
        return self.vault_dir / "text" / f"{profile.text_key}.zarr"

    def index_dir(self, profile: ModelProfile) -> Path:
        """Index versions of one (vision model, text-encoder pair): the vectors come from the first,
        the published conditioning rows from the second, so a change of either is another index."""
        return self.index_root / f"{profile.vision_key}__{profile.text_key}"

    @property
    def index_root(self) -> Path:
        return (self.storage_root or self.root) / "index"

    def default_tracking_uri(self) -> str:
        """The embedded MLflow store: sqlite under the home (absolute, as MLflow 3 wants)."""
        return f"sqlite:///{(self.mlflow_dir / 'mlflow.db').absolute()}"

    # ------------------------------------------------------------ luna.toml

    def config(self) -> dict:
        """luna.toml as written (a copy; parsed again only when the file changed)."""
        return read_toml(self.config_path)

    def settings(self, arguments: Mapping[str, object] | None = None) -> Settings:
        """The effective settings: `arguments` (e.g. {"models.profile": "tiny"}) > $LUNA_* >
        luna.toml > defaults."""
        return Settings(self.config(), os.environ, arguments, self.config_path)

    def _write_config(self, config: dict) -> None:
        # json.dumps quoting is valid TOML basic-string quoting for paths and names.
        lines = [
            "# Luna home settings. Library roots are scanned by `luna ingest`, the UI and the "
            "sensor."
        ]
        for table, values in config.items():
            lines.append(f"[{table}]")
            for key, value in values.items():
                rendered = (
                    "[" + ", ".join(json.dumps(v) for v in value) + "]"
                    if isinstance(value, list)
                    else json.dumps(value)
                )
                lines.append(f"{key} = {rendered}")
            lines.append("")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".toml.tmp")
        tmp.write_text("\n".join(lines), encoding="utf-8")
        os.replace(tmp, self.config_path)

    def roots(self) -> list[str]:
        """Library roots recorded in luna.toml (absolute paths), in the order they were added."""
        roots = self.config().get("library", {}).get("roots", [])
        if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
            raise LunaConfigError(f"{self.config_path}: [library] roots must be a list of paths")
        return roots

    def add_roots(self, roots: list[str | os.PathLike[str]]) -> list[str]:
        """Record library roots (idempotent) so the UI, the sensor and later runs scan them."""
        config = self.config()
        known = self.roots()
        for root in roots:
            path = str(Path(root).expanduser().absolute())
            if path not in known:
                known.append(path)
        config.setdefault("library", {})["roots"] = known
        self._write_config(config)
        return known

    @property
    def library_fingerprint_path(self) -> Path:
        return self.root / "library_fingerprint.json"

    def record_library_fingerprint(self, roots: list[str], digest: str) -> None:
        """The roots' stat fingerprint as the last completed ingest saw them (taken before it
        scanned)."""
        tmp = self.library_fingerprint_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"roots": sorted(roots), "digest": digest}))
        os.replace(tmp, self.library_fingerprint_path)

    def recorded_library_fingerprint(self, roots: list[str]) -> str | None:
        try:
            recorded = json.loads(self.library_fingerprint_path.read_text())
        except (OSError, ValueError):
            return None
        return recorded.get("digest") if recorded.get("roots") == sorted(roots) else None

    def set_operations_setting(self, key: str, value: str | int) -> None:
        """One `[operations]` setting of luna.toml (postgres_url, tracking_uri, gpu_slots)."""
        self.set_setting("operations", key, value)

    def set_setting(self, table: str, key: str, value: str | int | list[str]) -> None:
        config = self.config()
        config.setdefault(table, {})[key] = value
        self._write_config(config)

    def vault_shards(self) -> int:
        """How many partitions embed the vault ([vault] shards in luna.toml, or $LUNA_VAULT_SHARDS;
        1 = one store, the single-machine default). With more, each shard embeds into its own
        segment store."""
        return self.settings().integer("vault.shards", 1, 1024)

    def text_codec(self) -> str:
        """How a new text store keeps its conditionings (`vault.text_codec`: pca-zstd, int8 or
        float16)."""
        setting = self.settings().setting("vault.text_codec")
        try:
            return check_codec(self.settings().text("vault.text_codec"))
        except LunaConfigError as exc:
            raise LunaConfigError(f"{setting.where()}: {exc}") from None

    def lora_dirs(self) -> tuple[Path, ...]:
        """The folders LoRA files are looked for in ([models] lora_dirs, or $LUNA_LORA_DIRS)."""
        return self.settings().paths("models.lora_dirs", self.root)

    def set_vault_shards(self, shards: int) -> None:
        self.set_setting("vault", "shards", int(shards))
        self.vault_shards()  # refuse a bad count now, not at the next load

    def model_profile(self, argument: str | None = None) -> str:
        """The model profile to use: the argument, else $LUNA_PROFILE, else the one the home
        recorded ([models] profile in luna.toml), else sdxl."""
        return self.settings({"models.profile": argument}).text("models.profile")

    def profile(
        self,
        argument: str | None = None,
        vision_model: str | None = None,
        sdxl_model: str | None = None,
    ) -> ModelProfile:
        """The models this home uses: its profile (`model_profile`) resolved, with the models
        named by an argument, else by `models.vision_model` / `models.sdxl_model`: the one place
        every surface (CLI, Dagster, service, ComfyUI) gets them."""
        settings = self.settings(
            {"models.vision_model": vision_model, "models.sdxl_model": sdxl_model}
        )
        profile = resolve_profile(self.model_profile(argument), self.models_dir)
        for part in ("vision", "sdxl"):
            model = self._model_setting(settings, f"{part}_model")
            if not model:
                continue
            try:
                profile = with_named_model(profile, part, model, self.models_dir)
            except LunaConfigError as exc:
                where = settings.setting(f"models.{part}_model").where()
                raise LunaConfigError(f"{exc} (set by {where})") from None
        return profile

    def _model_setting(self, settings, field: str) -> str | None:
        """A named model: a path relative to the home is made absolute; a hub id is kept."""
        value = settings.text(f"models.{field}")
        if not value:
            return None
        local = Path(value).expanduser()
        if not local.is_absolute() and (self.root / local).exists():
            return str(self.root / local)
        return value

    def writer_syntax(self) -> tuple[tuple[str, str], ...]:
        """(generator, prompt syntax) pairs overriding the writers' own rules
        (`prompts.writers`)."""
        setting = self.settings().setting("prompts.writers")
        try:
            return tuple(writer_overrides(str(setting.value)).items())
        except ValueError as exc:
            raise LunaConfigError(f"{setting.where()}: {exc}") from None

    def recorded_model_profile(self) -> str | None:
        """The model profile this home was built with, if luna.toml records one."""
        name = self.config().get("models", {}).get("profile")
        return name if isinstance(name, str) else None

    def set_model_profile(self, name: str) -> None:
        config = self.config()
        config.setdefault("models", {})["profile"] = name
        self._write_config(config)
