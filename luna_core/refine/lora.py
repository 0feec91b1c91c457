"""Per-item LoRA sets in one UNet call.

Each item of a batch carries its own list of (LoRA, weight), possibly empty. Nothing is fused
into the UNet's weights: every patched Linear or Conv2d layer gets a forward hook that adds, for
each adapter used in the batch, `weight * scale * up(down(x))` to the rows that use it (rows
grouped by adapter, in the style of S-LoRA and Punica). A row without that adapter is untouched,
so an item refined in a batch equals the same item refined alone with its LoRAs fused (up to
float rounding).

Files are the `.safetensors` files people have, in these key layouts:
- kohya (sd-scripts, A1111, ComfyUI): `lora_unet_<layer>.lora_down.weight`, `.lora_up.weight`,
  `.alpha`, with diffusers-style layer names (`down_blocks_1_attentions_0_…`) or SDXL's original
  ones (`input_blocks_4_1_…`, `middle_block_…`, `output_blocks_…`);
- diffusers / PEFT: `unet.<layer>.lora_A.weight`, `lora_B.weight` (also `lora.down` / `lora.up` and
  the older attention-processor names `…attn1.processor.to_q_lora.down.weight`).

Text-encoder parts (`lora_te1_`, `lora_te2_`, `text_encoder.`, `text_encoder_2.`) are skipped,
and said so: an item's conditioning comes from the vault or a projector, not from encoding a
prompt with the LoRA's text encoder. LyCORIS variants (LoHa, LoKr) and DoRA are refused by name.

LoRA files are found in the folders of `[models] lora_dirs` (luna.toml, or $LUNA_LORA_DIRS) by
luna_core.refine.lora_files: by file name, path below a folder, or hash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from luna_core.metadata.record import Lora
from luna_core.refine.lora_files import LoraError
from luna_core.refine.lora_names import unet_targets

log = logging.getLogger(__name__)

MAX_LORA_TENSORS = 20_000
MAX_LORA_BYTES = 4 << 30

# ------------------------------------------------------------------ reading a file


@dataclass
class LoraLayer:
    down: object  # torch.Tensor [r, in] (Linear) or [r, in, kh, kw] (Conv2d)
    up: object  # [out, r] or [out, r, 1, 1]
    scale: float  # alpha / rank (1 when the file gives no alpha)


@dataclass
class LoraAdapter:
    name: str
    path: Path
    layers: dict[str, LoraLayer]  # UNet module name → its low-rank update
    skipped_text_encoder_layers: int = 0

    def describe(self) -> dict:
        return {
            "name": self.name,
            "file": str(self.path),
            "unet_layers": len(self.layers),
            "text_encoder_layers_skipped": self.skipped_text_encoder_layers,
        }


_KOHYA = re.compile(r"^lora_(unet|te\d?)_(.+?)\.(lora_down|lora_up)\.weight$")
_KOHYA_ALPHA = re.compile(r"^lora_(unet|te\d?)_(.+)\.alpha$")
_PEFT = re.compile(
    r"^(?:(unet|text_encoder|text_encoder_2)\.)?(.+?)\.(lora_A|lora_B|lora\.down|lora\.up)"
    r"(?:\.[A-Za-z0-9_]+)?\.weight$"
)
_PEFT_ALPHA = re.compile(r"^(?:(unet|text_encoder|text_encoder_2)\.)?(.+)\.alpha$")
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")
_UNSUPPORTED = (
    ("hada_", "LyCORIS LoHa"),
    ("lokr_", "LyCORIS LoKr"),
    ("dora_scale", "DoRA"),
    ("lora_mid", "LyCORIS LoCon with a middle tensor"),
)


def read_lora(
    path: str | Path, unet, name: str | None = None, targets: dict[str, str] | None = None
) -> LoraAdapter:
    """A LoRA file's UNet layers, checked against `unet` (every layer must exist there, with its
    shape)."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    path = Path(path)
    label = f"LoRA {path}"
    if not path.is_file():
        raise LoraError(f"{label}: no such file")
    if path.stat().st_size > MAX_LORA_BYTES:
        raise LoraError(
            f"{label}: {path.stat().st_size:,} bytes is over the {MAX_LORA_BYTES:,}-byte bound"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if len(keys) > MAX_LORA_TENSORS:
                raise LoraError(f"{label}: {len(keys)} tensors (at most {MAX_LORA_TENSORS})")
            tensors = {k: f.get_tensor(k) for k in keys}
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise LoraError(
            f"{label} cannot be read as safetensors: {str(exc).splitlines()[0]}"
        ) from None
    for marker, what in _UNSUPPORTED:
        if any(marker in k for k in keys):
            raise LoraError(
                f"{label} is a {what} file; Luna applies plain LoRA (down/up) layers only"
            )
    targets = targets if targets is not None else unet_targets(unet)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    text_layers: set[str] = set()
    unknown: list[str] = []
    for key, tensor in tensors.items():
        part, layer, role = _layer_of(key)
        if role is None:
            unknown.append(key)
        elif part == "text":
            text_layers.add(layer)
        else:
            pairs.setdefault(layer, {})[role] = tensor
    if unknown:
        raise LoraError(
            f"{label}: {len(unknown)} tensor(s) in no LoRA layout Luna reads (kohya or "
            "diffusers/PEFT), "
            f"e.g. {unknown[0]!r}"
        )
    default_alpha, alpha_pattern = _peft_alphas(label, header)
    modules = dict(unet.named_modules())
    layers: dict[str, LoraLayer] = {}
    unmatched = sorted(layer for layer in pairs if layer not in targets)
    if unmatched:
        raise LoraError(
            f"{label} is not for this UNet: {len(unmatched)} of its {len(pairs)} layers have no "
            "match "
            f"here (e.g. {unmatched[0]!r}); is it a LoRA for another model (SD 1.5, SD3, Flux)?"
        )
    for layer, parts in pairs.items():
        if "down" not in parts or "up" not in parts:
            raise LoraError(
                f"{label}: layer {layer!r} has no {'up' if 'down' in parts else 'down'} weight"
            )
        module_name = targets[layer]
        if "alpha" not in parts:
            alpha = next(
                (a for pattern, a in alpha_pattern.items() if module_name.endswith(pattern)),
                default_alpha,
            )
            if alpha is not None:
                parts["alpha"] = torch.tensor(float(alpha))
        layers[module_name] = _checked_layer(label, module_name, modules[module_name], parts)
    if text_layers:
        log.warning(
            "%s: %d text-encoder layer(s) skipped (the conditioning comes from the vault or a "
            "projector, "
            "not from encoding a prompt with this LoRA)",
            label,
            len(text_layers),
        )
    if not layers:
        log.warning("%s has no UNet layer: it changes nothing here", label)
    return LoraAdapter(name or path.stem, path, layers, len(text_layers))


def _peft_alphas(label: str, header: dict) -> tuple[float | None, dict[str, float]]:
    """The UNet's LoRA alpha (and per-layer alphas) from the PEFT config diffusers writes in the
    file's header (`lora_adapter_metadata`); (None, {}) when there is none: then alpha is the
    rank (scale 1)."""
    raw = header.get("lora_adapter_metadata")
    if not raw:
        return None, {}
    if len(raw) > 1 << 20:
        raise LoraError(f"{label}: its lora_adapter_metadata header is over 1 MiB")
    try:
        config = json.loads(raw)
        alpha = config.get("unet.lora_alpha", config.get("lora_alpha"))
        pattern = config.get("unet.alpha_pattern", config.get("alpha_pattern")) or {}
        return (None if alpha is None else float(alpha)), {
            str(k): float(v) for k, v in pattern.items()
        }
    except (ValueError, TypeError, AttributeError):
        raise LoraError(
            f"{label}: its lora_adapter_metadata header is not the PEFT config diffusers writes"
        ) from None


def _layer_of(key: str) -> tuple[str | None, str | None, str | None]:
    """(unet | text, layer name, down | up | alpha) of a tensor key; role None when no layout
    matches."""
    if m := _KOHYA.match(key):
        return ("unet" if m[1] == "unet" else "text"), m[2], "down" if m[3] == "lora_down" else "up"
    if m := _KOHYA_ALPHA.match(key):
        return ("unet" if m[1] == "unet" else "text"), m[2], "alpha"
    if m := _PEFT.match(key):
        layer = m[2]
        if p := _PROCESSOR.search(layer):
            layer = layer[: p.start()] + "." + ("to_out.0" if p[1] == "to_out" else p[1])
        return (
            ("text" if m[1] and m[1].startswith("text") else "unet"),
            layer,
            "down" if m[3] in ("lora_A", "lora.down") else "up",
        )
    if m := _PEFT_ALPHA.match(key):
        return ("text" if m[1] and m[1].startswith("text") else "unet"), m[2], "alpha"
    return None, None, None


def _checked_layer(label: str, module_name: str, module, parts: dict) -> LoraLayer:
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    down, up = parts["down"].float(), parts["up"].float()
    rank = down.shape[0]
    if isinstance(module, torch.nn.Linear):
        down, up = down.reshape(rank, -1), up.reshape(up.shape[0], -1)
        expected = ((rank, module.in_features), (module.out_features, rank))
    else:
        if module.groups != 1:
            raise LoraError(
                f"{label}: layer {module_name!r} is a grouped convolution; LoRA cannot patch it"
            )
        if down.ndim == 2:  # a linear LoRA on a 1x1 convolution
            down = down[:, :, None, None]
        if up.ndim == 2:
            up = up[:, :, None, None]
        expected = (
            (rank, module.in_channels, *module.kernel_size),
            (module.out_channels, rank, 1, 1),
        )
    if (tuple(down.shape), tuple(up.shape)) != expected:
        raise LoraError(
            f"{label}: layer {module_name!r} has shapes {tuple(down.shape)} / {tuple(up.shape)}, "
            "this "
            f"UNet's needs {expected[0]} / {expected[1]}: it is a LoRA for another model"
        )
    alpha = parts.get("alpha")
    scale = float(alpha) / rank if alpha is not None and alpha.numel() == 1 else 1.0
    if not (torch.isfinite(down).all() and torch.isfinite(up).all()) or scale != scale:
        raise LoraError(f"{label}: layer {module_name!r} holds non-finite values")
    weight = next(module.parameters())
    return LoraLayer(
        down.to(weight.device, weight.dtype), up.to(weight.device, weight.dtype), scale
    )


# ------------------------------------------------------------------ applying per row


class RowLoras:
    """LoRA adapters held beside a UNet and applied row by row, for the length of one `applied`
    block."""

    def __init__(self, unet):
        self.unet = unet
        self.modules = dict(unet.named_modules())
        self.adapters: dict[str, LoraAdapter] = {}
        self._versions: dict[str, tuple] = {}
        self._targets: dict[str, str] | None = None

    def load(self, name: str, path: Path) -> LoraAdapter:
        """The adapter `name` from `path`, read again when the file changed since it was read."""
        try:
            stat = Path(path).stat()
        except OSError as exc:
            raise LoraError(f"LoRA {path} cannot be read: {exc.strerror}") from None
        version = (str(path), stat.st_mtime_ns, stat.st_size)
        if self._versions.get(name) != version:
            if self._targets is None:
                self._targets = unet_targets(self.unet)
            self.adapters[name] = read_lora(path, self.unet, name, self._targets)
            self._versions[name] = version
        return self.adapters[name]

    @contextlib.contextmanager
    def applied(self, rows: Sequence[Sequence[Lora]]):
        """Within the block, UNet row r gets the LoRAs `rows[r]` (loaded adapters by name)."""
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        plan: dict[str, list] = {}
        device = next(self.unet.parameters()).device
        for adapter_name in sorted({lora.name for row in rows for lora in row}):
            adapter = self.adapters[adapter_name]
            picked = [
                (r, lora.weight)
                for r, row in enumerate(rows)
                for lora in row
                if lora.name == adapter_name
            ]
            index = torch.tensor([r for r, _ in picked], device=device)
            whole = len(picked) == len(rows) and [r for r, _ in picked] == list(range(len(rows)))
            for module_name, layer in adapter.layers.items():
                weights = torch.tensor(
                    [w * layer.scale for _, w in picked], device=device, dtype=layer.down.dtype
                )
                plan.setdefault(module_name, []).append((layer, index, weights, whole))
        hooks = [
            self.modules[name].register_forward_hook(_row_hook(entries))
            for name, entries in plan.items()
        ]
        try:
            yield len(plan)
        finally:
            for hook in hooks:
                hook.remove()


def _row_hook(entries):
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch.nn.functional as F

    def hook(module, inputs, output):
        x = inputs[0]
        for layer, index, weights, whole in entries:
            rows = x if whole else x.index_select(0, index)
            if layer.down.ndim == 2:
                delta = F.linear(F.linear(rows, layer.down), layer.up)
            else:
                delta = F.conv2d(
                    F.conv2d(
                        rows, layer.down, None, module.stride, module.padding, module.dilation
                    ),
                    layer.up,
                )
            delta = delta * weights.view(-1, *([1] * (delta.ndim - 1)))
            output = output + delta if whole else output.index_add(0, index, delta.to(output.dtype))
        return output

    return hook
