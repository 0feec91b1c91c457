"""Single-file models, as A1111, ComfyUI and Civitai keep them, read offline.

- An SDXL checkpoint (`.safetensors` in the SGM layout): its text encoders for the vault, its UNet
  and VAE for refinement. The configurations come from Luna's own copy of SDXL base's (and from the
  profile's local folders, such as the tiny world's), chosen by the file's tensor shapes: nothing
  asks a hub.
- A CLIP vision model as ComfyUI keeps it in `models/clip_vision/` (Hugging Face's key names).

A file is classified from its safetensors header alone (bounded, never executed) before any
weights are read; anything else (SD 1.5, SD3, Flux, a LoRA, a VAE alone, a truncated file) is
refused in one line that names the file and what it looks like. A model's identity is the file's
content hash, so the same file under a new path is the same model and an edited file is another.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from luna_core.errors import LunaConfigError
from luna_core.models import sgm_layout
from luna_core.models.clip_vocab import clip_tokenizer
from luna_core.models.tiny_world import tiny_world_root

CONFIGS = Path(__file__).parent / "configs"
SDXL_BASE = CONFIGS / "sdxl-base"
VISION_CONFIGS = tuple(
    CONFIGS / name for name in ("clip-vit-h-14", "clip-vit-l-14", "clip-vit-bigg-14")
)
MAX_HEADER_BYTES = 100 * 2**20  # SDXL's header is about 200 KB; a larger one is not a checkpoint
SUFFIXES = (".safetensors", ".sft")


def is_single_file(model: str) -> bool:
    path = Path(model).expanduser()
    return path.suffix.lower() in SUFFIXES or path.is_file()


@dataclass(frozen=True)
class Header:
    """A safetensors file's tensor names and shapes, read from its header."""

    path: Path
    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def read(cls, path: Path) -> "Header":
        path = Path(path).expanduser()
        if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
            raise LunaConfigError(
                f"{path}: a pickled checkpoint; Luna reads only .safetensors (pickles can run "
                "code). Convert it to .safetensors first."
            )
        try:
            size = path.stat().st_size
            with open(path, "rb") as file:
                (length,) = struct.unpack("<Q", file.read(8))
                if length > min(MAX_HEADER_BYTES, size - 8):
                    raise ValueError(f"a header of {length} bytes in a file of {size}")
                header = json.loads(file.read(length))
        except (OSError, ValueError, struct.error) as exc:
            raise LunaConfigError(f"{path}: not a readable safetensors file ({exc})") from None
        header.pop("__metadata__", None)
        end = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
        if 8 + length + end > size:
            raise LunaConfigError(
                f"{path}: truncated ({size:,} bytes; its header describes {8 + length + end:,})"
            )
        return cls(path, {key: tuple(entry["shape"]) for key, entry in header.items()})

    def has(self, prefix: str) -> bool:
        return any(key.startswith(prefix) for key in self.shapes)


KINDS = {"sdxl": "an SDXL checkpoint", "clip_vision": "a CLIP vision model"}


def describe(header: Header) -> str:
    """What the file looks like, from its key names: 'sdxl', 'clip_vision', or a refusal's words."""
    has = header.has
    if has(sgm_layout.CLIP_L) and has(sgm_layout.BIGG) and has(sgm_layout.UNET):
        return "sdxl"
    if has("vision_model.") and has("visual_projection."):
        return "clip_vision"
    looks = (
        (has("conditioner.embedders.0.model.") and has(sgm_layout.UNET), "an SDXL refiner"),
        (has("model.diffusion_model.joint_blocks."), "an SD3 checkpoint"),
        (has("double_blocks.") or has("model.diffusion_model.double_blocks."), "a Flux model"),
        (has("cond_stage_model.transformer."), "an SD 1.x checkpoint"),
        (has("cond_stage_model.model."), "an SD 2.x checkpoint"),
        (any("lora_" in key or ".lora." in key for key in header.shapes), "a LoRA"),
        (has("encoder.down.") or has("decoder.up_blocks.") or has("decoder.up."), "a VAE alone"),
        (has("down_blocks.") and has("conv_in."), "a diffusers UNet alone"),
        (has("text_model."), "a text encoder alone"),
        (has("visual.") or has("vision_model."), "a CLIP vision model of an unknown layout"),
    )
    for found, words in looks:
        if found:
            return words
    first = ", ".join(sorted(header.shapes)[:3]) or "no tensors"
    return f"an unknown layout (first keys: {first})"


def check_single_file(model: str, what: str, expected: str) -> Header:
    """The file's header if it is the `expected` kind ('sdxl' or 'clip_vision'); else one line."""
    header = Header.read(Path(model))
    found = describe(header)
    if found != expected:
        raise LunaConfigError(
            f"the configured {what} {model} is {KINDS.get(found, found)}, not {KINDS[expected]}"
        )
    return header


_hash_lock = threading.Lock()


def content_identity(path: Path, cache_dir: Path | None) -> str:
    """`sha256-<16 hex>` of the file's bytes; remembered by (path, size, mtime) in `cache_dir` so a
    6 GB checkpoint is hashed once, not on every run."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = Path(cache_dir) / "file-hashes.json" if cache_dir else None
    with _hash_lock:
        known = _read_json(cache) if cache else {}
        if key not in known:
            with open(path, "rb") as file:
                digest = hashlib.file_digest(file, "sha256").hexdigest()
            known[key] = f"sha256-{digest[:16]}"
            if cache:
                cache.parent.mkdir(parents=True, exist_ok=True)
                temporary = cache.with_suffix(f".{os.getpid()}.tmp")
                temporary.write_text(json.dumps(known, indent=1))
                os.replace(temporary, cache)
        return known[key]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------ choosing a configuration


def _text_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    return {
        "text_model.embeddings.token_embedding.weight": (config["vocab_size"], hidden),
        f"text_model.encoder.layers.{layers - 1}.mlp.fc1.weight": (
            config["intermediate_size"],
            hidden,
        ),
    }


def _sdxl_matches(header: Header, folder: Path) -> bool:
    """True when the checkpoint's text encoders have the shapes of `folder`'s configs."""
    try:
        first = json.loads((folder / "text_encoder" / "config.json").read_text())
        second = json.loads((folder / "text_encoder_2" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    expected = {sgm_layout.CLIP_L + k: v for k, v in _text_shapes(first).items()}
    layers, hidden = second["num_hidden_layers"], second["hidden_size"]
    expected[sgm_layout.BIGG + "token_embedding.weight"] = (second["vocab_size"], hidden)
    expected[f"{sgm_layout.BIGG}transformer.resblocks.{layers - 1}.mlp.c_fc.weight"] = (
        second["intermediate_size"],
        hidden,
    )
    expected[sgm_layout.BIGG + "text_projection"] = (hidden, second["projection_dim"])
    too_deep = f"{sgm_layout.BIGG}transformer.resblocks.{layers}.ln_1.weight"
    return too_deep not in header.shapes and all(
        header.shapes.get(key) == shape for key, shape in expected.items()
    )


def _tiny_world_folder(part: str) -> tuple[Path, ...]:
    """The tiny world's configs, when this machine has built it (tests and the demo make single
    files of its layout); never trains it."""
    folder = tiny_world_root() / part
    return (folder,) if (folder / "config.json").exists() or (folder / "unet").is_dir() else ()


def sdxl_config_folder(header: Header) -> Path:
    """The first configuration folder (SDXL base's, then the tiny world's) whose shapes match."""
    for folder in (SDXL_BASE, *_tiny_world_folder("sdxl")):
        if _sdxl_matches(header, Path(folder)):
            return Path(folder)
    width = header.shapes.get(sgm_layout.CLIP_L + "text_model.embeddings.token_embedding.weight")
    raise LunaConfigError(
        f"{header.path}: an SDXL layout whose text encoders have shapes of no known SDXL "
        f"(CLIP-L embedding {width}); SDXL's are 768 and 1280 wide"
    )


def vision_config_folder(header: Header) -> Path:
    for folder in (*VISION_CONFIGS, *_tiny_world_folder("vision")):
        try:
            config = json.loads((Path(folder) / "config.json").read_text())
        except (OSError, ValueError):
            continue
        config = config.get("vision_config", config)
        hidden, layers = config["hidden_size"], config["num_hidden_layers"]
        patch = config["patch_size"]
        expected = {
            "vision_model.embeddings.patch_embedding.weight": (hidden, 3, patch, patch),
            "vision_model.embeddings.position_embedding.weight": (
                (config["image_size"] // patch) ** 2 + 1,
                hidden,
            ),
            f"vision_model.encoder.layers.{layers - 1}.mlp.fc1.weight": (
                config["intermediate_size"],
                hidden,
            ),
            "visual_projection.weight": (config["projection_dim"], hidden),
        }
        deeper = f"vision_model.encoder.layers.{layers}.mlp.fc1.weight"
        if deeper not in header.shapes and all(
            header.shapes.get(k) == v for k, v in expected.items()
        ):
            return Path(folder)
    raise LunaConfigError(
        f"{header.path}: a CLIP vision model of no known size (ViT-H/14, ViT-L/14, ViT-bigG/14)"
    )


# ------------------------------------------------------------------ loading


def read_tensors(path: Path, prefixes: tuple[str, ...]) -> dict:
    """Only the tensors under `prefixes` (a UNet is not read to get the text encoders)."""
    with safe_open(str(path), framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys() if key.startswith(prefixes)}


def _fit_names(state: dict, model) -> dict:
    """Checkpoints name CLIP's text weights `text_model.*`; some transformers versions' classes
    drop that prefix: each name is matched to the model's own."""
    own = set(model.state_dict())
    fitted = {}
    for key, value in state.items():
        for name in (key, key.removeprefix("text_model."), "text_model." + key):
            if name in own:
                key = name
                break
        fitted[key] = value
    return fitted


def _model_from_state(cls, config_file: Path, state: dict, dtype):
    """A transformers model of `config_file`'s configuration holding `state` exactly."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    config = cls.config_class.from_json_file(str(config_file))
    with torch.device("meta"):
        model = cls(config)
    missing, unexpected = model.load_state_dict(_fit_names(state, model), strict=False, assign=True)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise LunaConfigError(
            f"{cls.__name__}: {len(missing)} weights missing ({', '.join(missing[:3])}) and "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}) in the single file"
        )
    for name, buffer in model.named_buffers():
        if buffer.is_meta:  # position ids: a fixed range, not stored in checkpoints
            module_name, _, attribute = name.rpartition(".")
            module = model.get_submodule(module_name)
            setattr(module, attribute, torch.arange(buffer.shape[-1]).expand(buffer.shape))
    return model.to(dtype=dtype).eval()


def sdxl_tokenizers(folder: Path):
    """SDXL's two tokenizers: the folder's own, else built from the CLIP BPE vocabulary (SDXL's
    first pads with <|endoftext|>, its second with '!')."""
    # torch and the model libraries take about a second to import: only code that runs a model
    # pays for it
    from transformers import CLIPTokenizer

    if (folder / "tokenizer").is_dir() and (folder / "tokenizer_2").is_dir():
        return (
            CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer"),
            CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer_2"),
        )
    return clip_tokenizer("<|endoftext|>"), clip_tokenizer("!")


def sdxl_text_encoders(model: str, dtype):
    """(text_encoder, text_encoder_2, config folder) out of an SDXL single-file checkpoint."""
    # torch and the model libraries take about a second to import: only code that runs a model
    # pays for it
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    header = check_single_file(model, "SDXL model", "sdxl")
    folder = sdxl_config_folder(header)
    tensors = read_tensors(header.path, (sgm_layout.CLIP_L, sgm_layout.BIGG))
    first = _model_from_state(
        CLIPTextModel,
        folder / "text_encoder" / "config.json",
        sgm_layout.clip_l_from_sgm(tensors),
        dtype,
    )
    second = _model_from_state(
        CLIPTextModelWithProjection,
        folder / "text_encoder_2" / "config.json",
        sgm_layout.bigg_from_sgm(tensors),
        dtype,
    )
    return first, second, folder


def sdxl_unet_and_vae(model: str, dtype):
    """(unet, vae, config folder) out of an SDXL single-file checkpoint, through diffusers' own
    single-file conversion with the matched configuration folder (offline)."""
    # torch and the model libraries take about a second to import: only code that runs a model
    # pays for it
    from diffusers import AutoencoderKL, UNet2DConditionModel

    header = check_single_file(model, "SDXL model", "sdxl")
    folder = sdxl_config_folder(header)
    parts = []
    for cls, prefix, subfolder in (
        (UNet2DConditionModel, sgm_layout.UNET, "unet"),
        (AutoencoderKL, sgm_layout.VAE, "vae"),
    ):
        tensors = read_tensors(header.path, (prefix,))
        parts.append(
            cls.from_single_file(
                tensors,
                config=str(folder),
                subfolder=subfolder,
                local_files_only=True,
                torch_dtype=dtype,
            )
        )
    return parts[0], parts[1], folder


def clip_vision(model: str, dtype):
    """(CLIPVisionModelWithProjection, config folder) out of a ComfyUI `clip_vision` file."""
    # torch and the model libraries take about a second to import: only code that runs a model
    # pays for it
    from transformers import CLIPVisionModelWithProjection

    header = check_single_file(model, "vision model", "clip_vision")
    folder = vision_config_folder(header)
    tensors = read_tensors(header.path, ("vision_model.", "visual_projection."))
    vision = _model_from_state(
        CLIPVisionModelWithProjection, folder / "config.json", tensors, dtype
    )
    return vision, folder
