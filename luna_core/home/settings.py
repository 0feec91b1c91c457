"""Luna's settings: one table of every key, and one precedence for all of them:
an argument (a CLI flag, a Dagster config field) > the environment ($LUNA_*) > the home's
luna.toml > the default.

`LunaHome.settings()` gives the effective settings of a home; `luna config` prints them with
where each came from. luna.toml is parsed once and read again only when the file changes (its
mtime or size), so a served request never parses it.
"""

from __future__ import annotations

import copy
import os
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from luna_core.errors import LunaConfigError


@dataclass(frozen=True)
class Key:
    """One setting: its luna.toml place (`table.key`), its environment variable and its default."""

    name: str
    env: str
    default: str | int | float
    doc: str
    # False: not a property of a home (where the home is; a file of the install)
    in_toml: bool = True

    @property
    def place(self) -> str:
        """Where a person sets it: luna.toml's table and key, and the environment variable."""
        return (
            f"[{self.table}] {self.field} in luna.toml, or ${self.env}"
            if self.in_toml
            else f"${self.env}"
        )

    @property
    def table(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def field(self) -> str:
        return self.name.split(".", 1)[1]


KEYS: tuple[Key, ...] = (
    Key("home", "LUNA_HOME", "./luna_home", "the Luna home folder", in_toml=False),
    Key(
        "models.profile",
        "LUNA_PROFILE",
        "sdxl",
        "model profile: sdxl (the real models) or tiny (trained locally on generated shapes)",
    ),
    Key(
        "models.sdxl_model",
        "LUNA_SDXL_MODEL",
        "",
        "the SDXL model instead of the profile's: a diffusers folder, a hub id, or a single-file "
        "SDXL checkpoint (.safetensors, as A1111 and ComfyUI keep them); relative to the home",
    ),
    Key(
        "models.vision_model",
        "LUNA_VISION_MODEL",
        "",
        "the CLIP vision model instead of the profile's: a Hugging Face folder, a hub id, or a "
        "ComfyUI clip_vision .safetensors file; relative to the home",
    ),
    Key(
        "models.device",
        "LUNA_DEVICE",
        "auto",
        "where the models run when a run does not say: auto (a CUDA GPU if there is one), cpu, "
        "cuda or cuda:N",
    ),
    Key(
        "models.dtype",
        "LUNA_DTYPE",
        "auto",
        "the models' number type when a run does not say: auto (bfloat16 where the device has "
        "it natively, float16 on older GPUs, else float32), float32, float16 or bfloat16",
    ),
    Key(
        "models.tiny_cache",
        "LUNA_TINY_CACHE",
        "",
        "where this machine keeps the trained tiny world (default: "
        "$XDG_CACHE_HOME/luna/tiny-world, else ~/.cache/luna/tiny-world)",
        in_toml=False,
    ),
    Key(
        "models.clip_bpe",
        "LUNA_CLIP_BPE",
        "",
        "CLIP's BPE vocabulary file (default: the copy scripts/bootstrap "
        "puts under <venv>/share/luna/)",
        in_toml=False,
    ),
    Key(
        "models.lora_dirs",
        "LUNA_LORA_DIRS",
        "",
        "folders of LoRA .safetensors files for refinement (a list in "
        "luna.toml; separated by ':' in the environment); relative to the home",
    ),
    Key(
        "storage.root",
        "LUNA_STORAGE_ROOT",
        "",
        "where the vault and the index live when not in the home (a folder or s3://bucket/prefix)",
    ),
    Key(
        "vault.shards",
        "LUNA_VAULT_SHARDS",
        1,
        "partitions that embed the vault, 1 to 1024 (1: one store)",
    ),
    Key(
        "vault.text_codec",
        "LUNA_TEXT_CODEC",
        "pca-zstd",
        "how a new text store keeps conditionings: pca-zstd (a per-store basis, every token "
        "within cosine error 9e-4, about 0.22 of float16's bytes), int8 (0.51) or float16; a "
        "store keeps the codec it was made with (luna doctor --recode converts it)",
    ),
    Key(
        "operations.tracking_uri",
        "LUNA_MLFLOW_URI",
        "",
        "the MLflow registry (default: the home's sqlite file)",
    ),
    Key(
        "operations.postgres_url",
        "LUNA_POSTGRES_URL",
        "",
        "PostgreSQL for the Dagster instance (default: files under the home)",
    ),
    Key(
        "operations.gpu_slots",
        "LUNA_GPU_SLOTS",
        0,
        "slots of the `gpu` pool (0: one per GPU found, one on a CPU; with a Celery broker "
        "the workers' queue decides)",
    ),
    Key(
        "serve.workers",
        "LUNA_SERVE_WORKERS",
        0,
        "worker threads of `luna serve` that run searches side by side "
        "(0: one per core, at most 8)",
    ),
    Key(
        "serve.token",
        "LUNA_SERVE_TOKEN",
        "",
        "the token `luna serve` asks of every request but /health (sent as 'Authorization: "
        "Bearer TOKEN'; the page asks once); required to listen beyond this machine",
    ),
    Key(
        "scale.celery_broker",
        "LUNA_CELERY_BROKER",
        "",
        "Redis URL of the Celery broker (default: steps run here)",
    ),
    Key(
        "schedules.reindex_cron",
        "LUNA_REINDEX_CRON",
        "0 3 * * *",
        "when the index is rebuilt (cron)",
    ),
    Key(
        "schedules.retrain_cron",
        "LUNA_RETRAIN_CRON",
        "0 4 * * 0",
        "when the projector retrains (cron)",
    ),
    Key(
        "schedules.benchmark_cron",
        "LUNA_BENCHMARK_CRON",
        "0 5 * * 0",
        "when the refinement benchmark runs (cron)",
    ),
    Key(
        "projector.retrain_growth",
        "LUNA_RETRAIN_GROWTH",
        0.25,
        "retrain once the training pairs grew by this share",
    ),
    Key(
        "prompts.syntax",
        "LUNA_PROMPT_SYNTAX",
        "a1111",
        "how a typed prompt is read (luna condition --prompt, "
        "serve, refine): a1111, comfy, compel, novelai or literal",
    ),
    Key(
        "prompts.writers",
        "LUNA_PROMPT_WRITERS",
        "",
        "a catalogued generator's prompt syntax instead of its "
        "writer's own, e.g. 'ComfyUI=a1111, SwarmUI=comfy' (applied at the next ingest)",
    ),
)
KEYS_BY_NAME = {key.name: key for key in KEYS}

ARGUMENT, DEFAULT, TOML = "argument", "default", "luna.toml"

# Where the commands' servers listen unless told otherwise: this machine only.
LOCAL_HOST = "127.0.0.1"
SERVE_PORT = 7861  # luna serve
UI_PORT = 3000  # luna ui (Dagster's webserver)
MLFLOW_PORT = 5000  # luna mlflow-server


@dataclass(frozen=True)
class Setting:
    key: Key
    value: str | int | float
    source: str  # "argument", "$LUNA_…", "luna.toml" or "default"

    def where(self) -> str:
        """Where the value came from, in the words a person fixes it with."""
        if self.source == TOML:
            return f"luna.toml [{self.key.table}] {self.key.field}"
        return self.source


class Settings:
    """The effective settings of one home (or of no home: environment and defaults only)."""

    def __init__(
        self,
        toml: Mapping,
        env: Mapping[str, str],
        arguments: Mapping[str, object] | None = None,
        config_path: Path | None = None,
    ):
        unknown = set(arguments or ()) - set(KEYS_BY_NAME)
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        self.config_path = config_path
        self._settings = {key.name: _choose(key, toml, env, arguments or {}) for key in KEYS}

    def setting(self, name: str) -> Setting:
        return self._settings[name]

    def get(self, name: str):
        return self._settings[name].value

    def text(self, name: str) -> str:
        """A text setting, stripped; a non-text value in luna.toml is an error naming its place."""
        setting = self._settings[name]
        if not isinstance(setting.value, str):
            raise LunaConfigError(f"{self._place(setting)} = {setting.value!r}: need text")
        return setting.value.strip()

    def integer(self, name: str, low: int, high: int) -> int:
        setting = self._settings[name]
        try:
            value = int(setting.value) if not isinstance(setting.value, float) else None
        except (TypeError, ValueError):
            value = None
        if value is None or not low <= value <= high:
            raise LunaConfigError(
                f"{self._place(setting)} = {setting.value!r}: need a whole number from {low} to "
                f"{high}"
            )
        return value

    def number(self, name: str, low_exclusive: float) -> float:
        setting = self._settings[name]
        try:
            value = float(setting.value)
        except (TypeError, ValueError):
            value = float("nan")
        if not value > low_exclusive or value == float("inf"):
            raise LunaConfigError(
                f"{self._place(setting)} = {setting.value!r}: need a number above {low_exclusive}"
            )
        return value

    def paths(self, name: str, base: Path) -> tuple[Path, ...]:
        """A list of folders: a TOML list of strings, or one string of paths joined by os.pathsep;
        relative paths are relative to `base` (the home), `~` is the user's."""
        setting = self._settings[name]
        value = setting.value
        items = value.split(os.pathsep) if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise LunaConfigError(f"{self._place(setting)} = {value!r}: need a list of folders")
        return tuple(base / Path(v.strip()).expanduser() for v in items if v.strip())

    def all(self) -> list[Setting]:
        return list(self._settings.values())

    def _place(self, setting: Setting) -> str:
        if setting.source == TOML and self.config_path is not None:
            return f"{self.config_path} [{setting.key.table}] {setting.key.field}"
        return (
            setting.where() if setting.source != DEFAULT else f"the default of {setting.key.name}"
        )


def _choose(
    key: Key, toml: Mapping, env: Mapping[str, str], arguments: Mapping[str, object]
) -> Setting:
    argument = arguments.get(key.name)
    if argument not in (None, ""):
        return Setting(key, argument, ARGUMENT)
    from_env = env.get(key.env, "").strip()
    if from_env:
        return Setting(key, from_env, f"${key.env}")
    if key.in_toml:
        table = toml.get(key.table, {})
        if isinstance(table, Mapping) and table.get(key.field) not in (None, ""):
            return Setting(key, table[key.field], TOML)
    return Setting(key, key.default, DEFAULT)


_toml_cache: dict[Path, tuple[tuple[int, int], dict]] = {}
_toml_lock = threading.Lock()


def read_toml(path: Path) -> dict:
    """luna.toml as a dict ({} when missing), parsed again only when the file changed; the caller
    gets its own copy to change."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    stamp = (stat.st_mtime_ns, stat.st_size)
    with _toml_lock:
        cached = _toml_cache.get(path)
    if cached is None or cached[0] != stamp:
        try:
            parsed = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise LunaConfigError(f"{path}: not valid TOML ({exc})") from None
        except FileNotFoundError:
            return {}
        cached = (stamp, parsed)
        with _toml_lock:
            _toml_cache[path] = cached
    return copy.deepcopy(cached[1])


def environment_settings(arguments: Mapping[str, object] | None = None) -> Settings:
    """The settings without a home: arguments, the environment and the defaults."""
    return Settings({}, os.environ, arguments)
