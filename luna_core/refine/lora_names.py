"""Where a LoRA file's layers land in the UNet: diffusers names, and SDXL's original SGM names
(kohya's files) mapped from the UNet's own config."""

from __future__ import annotations


def unet_targets(unet) -> dict[str, str]:
    """Every name a LoRA file may give a UNet Linear or Conv2d layer by, → the module's own name:
    the module name, kohya's flat form of it, and kohya's flat form of SDXL's original (SGM)
    name."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    lpb = int(unet.config.layers_per_block)
    up_has_attention = ["CrossAttn" in t for t in unet.config.up_block_types]
    targets = {}
    for name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        targets[name] = name
        targets[name.replace(".", "_")] = name
        sgm = sgm_name(name, lpb, up_has_attention)
        if sgm:
            targets[sgm.replace(".", "_")] = name
    return targets


_RESNET_SGM = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
    "norm1": "in_layers.0",
    "norm2": "out_layers.0",
}


_TOP_SGM = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def sgm_name(name: str, lpb: int, up_has_attention: list[bool]) -> str | None:
    """SDXL's original (SGM) name of a diffusers UNet module, as kohya's SDXL LoRAs name layers."""
    if name in _TOP_SGM:
        return _TOP_SGM[name]
    parts = name.split(".")

    def block(prefix: str, index: int, kind: str, rest: list[str]) -> str | None:
        """A resnet (sub-block 0) or attention (sub-block 1) of SGM block `prefix.index`."""
        sub = {"resnets": 0, "attentions": 1}.get(kind)
        if sub is None:
            return None
        if kind == "resnets" and rest and rest[0] in _RESNET_SGM:
            rest = [_RESNET_SGM[rest[0]], *rest[1:]]
        return f"{prefix}.{index}.{sub}.{'.'.join(rest)}"

    if parts[0] == "down_blocks" and len(parts) > 4:
        level, kind, j = int(parts[1]), parts[2], int(parts[3])
        if kind == "downsamplers":
            return f"input_blocks.{(level + 1) * (lpb + 1)}.0.op"
        return block("input_blocks", 1 + level * (lpb + 1) + j, kind, parts[4:])
    if parts[0] == "mid_block" and len(parts) > 3:
        kind, j = parts[1], int(parts[2])
        index = {"resnets": 2 * j, "attentions": 1}.get(kind)
        rest = [_RESNET_SGM.get(parts[3], parts[3]), *parts[4:]] if kind == "resnets" else parts[3:]
        return None if index is None else f"middle_block.{index}.{'.'.join(rest)}"
    if parts[0] == "up_blocks" and len(parts) > 4:
        level, kind, j = int(parts[1]), parts[2], int(parts[3])
        if kind == "upsamplers":
            position = 2 if up_has_attention[level] else 1
            return f"output_blocks.{level * (lpb + 1) + lpb}.{position}.{'.'.join(parts[4:])}"
        return block("output_blocks", level * (lpb + 1) + j, kind, parts[4:])
    return None
