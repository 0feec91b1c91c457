"""The `luna` command line's grammar: every command, its options and their help."""

from __future__ import annotations

import argparse

from luna_assets.executor import WORKER_CONCURRENCY, WORKER_LOGLEVEL
from luna_cli import (
    build,
    demo,
    doctor,
    inspect,
    operations,
    projector,
    refine,
    report,
    serve,
    tiny_world,
    vault,
)
from luna_cli.declared import add_declared
from luna_core.ask.ask_options import AskOptions
from luna_core.containers.probe import ProbeLimits
from luna_core.home.settings import LOCAL_HOST, MLFLOW_PORT, SERVE_PORT, UI_PORT
from luna_core.ingest.run import IngestOptions
from luna_core.models.profiles import AUTO, PROFILES
from luna_core.operations.mlflow_server import MLFLOW_WORKERS
from luna_core.projector.names import DEFAULT_PROJECTOR, REGISTERED_NAME

HOME_HELP = "Luna home folder (default: $LUNA_HOME, else ./luna_home)"
TRACKING_HELP = (
    "MLflow registry holding the projectors (default: $LUNA_MLFLOW_URI, else the home's own)"
)
# Options whose value may start with '-' (a crop at negative coordinates): see `normalize_argv`.
VALUE_OPTIONS = ("--box",)


def whole(low: int, high: int | None = None):
    """An argparse type: a whole number from `low` (to `high`), refused with the bounds
    otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range: give {low} to {high}"
                if high is not None
                else f"{value} is too small: give {low} or more"
            )
        return value

    return parse


PORT = whole(1, 65535)


def normalize_argv(argv: list[str]) -> list[str]:
    """`--box -10,-10,50,50` as `--box=-10,-10,50,50`: argparse would read the value as an
    option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in VALUE_OPTIONS and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luna", description="Luna: your image library as an SDXL conditioning vault."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    cmd = sub.add_parser(
        "demo", help="generate a sample library and build every asset through Dagster"
    )
    cmd.add_argument("--home", help=HOME_HELP)
    cmd.add_argument(
        "--images",
        type=whole(1),
        default=demo.DEMO_IMAGES,
        help="sample images to generate (default %(default)s)",
    )
    cmd.add_argument(
        "--size",
        type=whole(16, 8192),
        default=demo.DEMO_SIZE,
        help="sample image side in pixels (default %(default)s)",
    )
    cmd.add_argument(
        "--seed", type=int, default=demo.DEMO_SEED, help="sample library seed (default %(default)s)"
    )
    cmd.add_argument(
        "--profile",
        default=demo.DEMO_PROFILE,
        choices=list(PROFILES),
        help="model profile (default tiny: small local encoders, no download)",
    )
    _model_arguments(cmd)
    cmd.set_defaults(func=demo.cmd_demo)

    cmd = sub.add_parser("ingest", help="catalog the images under one or more folders")
    cmd.add_argument("roots", nargs="+", metavar="ROOT", help="library folder")
    cmd.add_argument("--home", help=HOME_HELP)
    cmd.add_argument(
        "--workers",
        type=whole(0, 256),
        default=IngestOptions.workers,
        help="reader processes (default 0: one per core)",
    )
    cmd.add_argument(
        "--max-pixels",
        type=whole(1),
        default=ProbeLimits.max_pixels,
        help="decompression-bomb bound (default %(default)s)",
    )
    cmd.add_argument(
        "--no-record", action="store_true", help="do not record the roots in the home's luna.toml"
    )
    cmd.set_defaults(func=build.cmd_ingest)

    cmd = sub.add_parser(
        "inspect", help="what Luna reads from image files (generator, prompt, settings, where)"
    )
    cmd.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG or WebP file")
    cmd.add_argument(
        "--json", action="store_true", help="print JSON (one object, or a list for several files)"
    )
    cmd.add_argument("--raw", action="store_true", help="also print the metadata items verbatim")
    cmd.set_defaults(func=inspect.cmd_inspect)

    cmd = sub.add_parser(
        "build", help="materialize every asset for the recorded library roots through Dagster"
    )
    cmd.add_argument("--home", help=HOME_HELP)
    cmd.add_argument("--profile", choices=list(PROFILES), help="record and use this model profile")
    _model_arguments(cmd)
    cmd.set_defaults(func=build.cmd_build)

    cmd = sub.add_parser(
        "search",
        help="the library images most similar to an image or a crop of it "
        "(or, on the tiny profile, to a text: --text)",
    )
    _query_arguments(cmd, image_optional=True)
    add_declared(cmd, AskOptions, vault.SEARCH_OMITTED)
    cmd.add_argument(
        "--text",
        help="search by a prompt instead of an image (profiles whose vision encoder shares "
        "SDXL's pooled space: the tiny world)",
    )
    cmd.add_argument("--json", action="store_true", help="print JSON")
    cmd.set_defaults(func=vault.cmd_search)

    cmd = sub.add_parser(
        "condition", help="an SDXL conditioning (safetensors) for an image or a crop of it"
    )
    _query_arguments(cmd)
    add_declared(cmd, AskOptions, vault.CONDITION_OMITTED)
    cmd.add_argument(
        "--projector",
        help="answer with a registered projector instead of the vault, "
        "e.g. models:/luna-projector@champion",
    )
    cmd.add_argument("--tracking-uri", help=TRACKING_HELP)
    cmd.add_argument("--out", required=True, help="output .safetensors file")
    cmd.set_defaults(func=vault.cmd_condition)

    cmd = sub.add_parser(
        "serve",
        help="serve the vault and the projector over HTTP, loaded once (for ComfyUI, scripts)",
    )
    cmd.add_argument("--home", help=HOME_HELP)
    cmd.add_argument(
        "--host",
        default=LOCAL_HOST,
        help="address to listen on (default %(default)s: this machine only)",
    )
    cmd.add_argument(
        "--port", type=PORT, default=SERVE_PORT, help="port to listen on (default %(default)s)"
    )
    cmd.add_argument("--device", default=AUTO, help="auto | cpu | cuda[:N]")
    cmd.add_argument(
        "--projector",
        default=DEFAULT_PROJECTOR,
        help="the projector answering source=projector (default models:/luna-projector@champion)",
    )
    cmd.add_argument("--tracking-uri", help=TRACKING_HELP)
    cmd.set_defaults(func=serve.cmd_serve)

    refine.add_parser(sub)
    report.add_parser(sub)
    doctor.add_parser(sub)
    tiny_world.add_parser(sub)

    cmd = sub.add_parser("projector", help="registered projectors (MLflow)")
    projector_sub = cmd.add_subparsers(dest="projector_command", required=True)
    cmd = projector_sub.add_parser("list", help="versions, aliases and key metrics")
    cmd.add_argument(
        "--name", default=REGISTERED_NAME, help="registered model name (default %(default)s)"
    )
    cmd.add_argument("--home", help=HOME_HELP)
    cmd.add_argument("--tracking-uri", help=TRACKING_HELP)
    cmd.set_defaults(func=projector.cmd_projector_list)

    cmd = sub.add_parser("status", help="what the catalog holds, and what is quarantined and why")
    cmd.add_argument("--home", help=HOME_HELP)
    cmd.set_defaults(func=build.cmd_status)

    cmd = sub.add_parser(
        "ui",
        help="open the Dagster UI (webserver and daemon) on a Luna home; Ctrl-C or SIGTERM "
        "stops it and its processes within seconds",
    )
    cmd.add_argument("--home", help=HOME_HELP)
    cmd.add_argument(
        "--host",
        default=LOCAL_HOST,
        help="address to listen on (default %(default)s: this machine only)",
    )
    cmd.add_argument(
        "--port", type=PORT, default=UI_PORT, help="port to listen on (default %(default)s)"
    )
    cmd.set_defaults(func=build.cmd_ui)

    cmd = sub.add_parser(
        "mlflow-server", help="run the home's MLflow tracking server (registry and UI)"
    )
    cmd.add_argument("--home", help=HOME_HELP)
    cmd.add_argument(
        "--host",
        default=LOCAL_HOST,
        help="address to listen on (default %(default)s: this machine only)",
    )
    cmd.add_argument(
        "--port", type=PORT, default=MLFLOW_PORT, help="port to listen on (default %(default)s)"
    )
    cmd.add_argument(
        "--backend-store-uri",
        help="default: PostgreSQL beside the Dagster instance's database (luna.toml [operations] "
        "postgres_url or $LUNA_POSTGRES_URL, database <name>_mlflow), else the home's sqlite file",
    )
    cmd.add_argument(
        "--workers",
        type=whole(1, 64),
        default=MLFLOW_WORKERS,
        help="server worker processes (default %(default)s)",
    )
    cmd.add_argument(
        "--record",
        action="store_true",
        help="record this server as the home's registry ([operations] tracking_uri in luna.toml)",
    )
    cmd.set_defaults(func=operations.cmd_mlflow_server)

    cmd = sub.add_parser(
        "scale", help="scale-out settings: vault shards, the Celery broker, the gpu pool's size"
    )
    cmd.add_argument("--home", help=HOME_HELP)
    cmd.add_argument(
        "--shards",
        type=whole(1, 1024),
        help="partitions of the embedding assets (1: one store, the default)",
    )
    cmd.add_argument(
        "--celery-broker", help="Redis URL: every run's steps go to `luna worker` processes"
    )
    cmd.add_argument(
        "--gpu-slots",
        type=whole(0, 64),
        help="steps running models at once, over all workers (the gpu pool)",
    )
    cmd.set_defaults(func=operations.cmd_scale)

    cmd = sub.add_parser(
        "config",
        help="every setting's effective value and where it came from "
        "(argument > $LUNA_* > luna.toml > default)",
    )
    cmd.add_argument("--home", help=HOME_HELP)
    cmd.add_argument("--json", action="store_true", help="as JSON")
    cmd.set_defaults(func=operations.cmd_config)

    cmd = sub.add_parser(
        "worker", help="a Celery worker running the home's steps (with [scale] celery_broker)"
    )
    cmd.add_argument("--home", help=HOME_HELP)
    cmd.add_argument("--name", help="worker name (default luna-<host>-<pid>)")
    cmd.add_argument(
        "--concurrency",
        type=whole(1, 256),
        default=WORKER_CONCURRENCY,
        help="steps at once (default %(default)s: one per GPU)",
    )
    cmd.add_argument("--loglevel", default=WORKER_LOGLEVEL)
    cmd.set_defaults(func=operations.cmd_worker)
    return parser


def _model_arguments(cmd) -> None:
    """--sdxl-model / --vision-model: recorded in the home's luna.toml like --profile."""
    cmd.add_argument(
        "--sdxl-model",
        metavar="MODEL",
        help="record and use this SDXL model: a diffusers folder, a hub id or a single-file "
        "checkpoint (.safetensors); '' goes back to the profile's",
    )
    cmd.add_argument(
        "--vision-model",
        metavar="MODEL",
        help="record and use this CLIP vision model: a folder, a hub id or a ComfyUI "
        "clip_vision .safetensors file; '' goes back to the profile's",
    )


def _query_arguments(cmd: argparse.ArgumentParser, image_optional: bool = False) -> None:
    cmd.add_argument(
        "image", help="PNG, JPEG or WebP file", **({"nargs": "?"} if image_optional else {})
    )
    cmd.add_argument("--box", help="crop X,Y,W,H in pixels")
    cmd.add_argument("--home", help=HOME_HELP)
    cmd.add_argument("--device", default=AUTO, help="auto | cpu | cuda[:N]")
    cmd.add_argument(
        "--server",
        help="ask a running `luna serve` at this URL (e.g. http://127.0.0.1:7861) "
        "instead of loading the models here",
    )
