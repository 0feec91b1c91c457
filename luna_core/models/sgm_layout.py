"""SDXL's original (SGM) single-file key layout, both ways.

A1111, ComfyUI and Civitai keep an SDXL checkpoint as one file with Stability's key names:
- `conditioner.embedders.0.transformer.*`: CLIP-L, already in Hugging Face's names;
- `conditioner.embedders.1.model.*`: OpenCLIP bigG, in open_clip's names (fused q/k/v);
- `model.diffusion_model.*`: the UNet; `first_stage_model.*`: the VAE.

Reading: the text encoders are renamed here; the UNet and VAE go through diffusers' own
single-file code. Writing (tests and benchmarks make checkpoints of this layout from diffusers
models) covers all four, so a file written here loads in A1111, ComfyUI and diffusers alike.
"""

from __future__ import annotations

from pathlib import Path

CLIP_L = "conditioner.embedders.0.transformer."
BIGG = "conditioner.embedders.1.model."
UNET = "model.diffusion_model."
VAE = "first_stage_model."

# open_clip's names inside one residual block -> transformers' names inside one encoder layer
_BLOCK_NAMES = (
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("attn.out_proj.", "self_attn.out_proj."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
)
_OPEN_CLIP_TOP = (
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
)


def clip_l_from_sgm(tensors: dict) -> dict:
    """`conditioner.embedders.0.transformer.text_model.*` -> CLIPTextModel's state dict."""
    return {
        key[len(CLIP_L) :]: value
        for key, value in tensors.items()
        if key.startswith(CLIP_L) and not key.endswith("position_ids")
    }


def bigg_from_sgm(tensors: dict) -> dict:
    """open_clip's text tower under `conditioner.embedders.1.model.` -> the state dict of a
    CLIPTextModelWithProjection (q/k/v split, the projection transposed)."""
    out = {}
    for open_clip, ours in _OPEN_CLIP_TOP:
        if BIGG + open_clip in tensors:
            out[ours] = tensors[BIGG + open_clip]
    if BIGG + "text_projection" in tensors:
        out["text_projection.weight"] = tensors[BIGG + "text_projection"].T.contiguous()
    prefix = BIGG + "transformer.resblocks."
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        layer, rest = key[len(prefix) :].split(".", 1)
        target = f"text_model.encoder.layers.{layer}."
        if rest.startswith("attn.in_proj_"):
            kind = rest.rsplit("_", 1)[1]  # weight or bias
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{target}self_attn.{name}.{kind}"] = part.contiguous()
            continue
        for theirs, mine in _BLOCK_NAMES:
            if rest.startswith(theirs):
                out[target + mine + rest[len(theirs) :]] = value
                break
    return out


def sgm_from_text_encoders(clip_l: dict, bigg: dict) -> dict:
    """The two text encoders' state dicts -> SGM keys (the inverse of the two readers)."""
    out = {
        CLIP_L + (key if key.startswith("text_model.") else "text_model." + key): value
        for key, value in clip_l.items()
    }
    for open_clip, ours in _OPEN_CLIP_TOP:
        out[BIGG + open_clip] = bigg[ours]
    out[BIGG + "text_projection"] = bigg["text_projection.weight"].T.contiguous()
    layer = 0
    while f"text_model.encoder.layers.{layer}.layer_norm1.weight" in bigg:
        source = f"text_model.encoder.layers.{layer}."
        target = f"{BIGG}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            parts = [
                bigg[f"{source}self_attn.{name}.{kind}"] for name in ("q_proj", "k_proj", "v_proj")
            ]
            out[f"{target}attn.in_proj_{kind}"] = _cat(parts)
        for theirs, mine in _BLOCK_NAMES:
            for kind in ("weight", "bias"):
                out[target + theirs + kind] = bigg[source + mine + kind]
        layer += 1
    return out


def _cat(parts):
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    return torch.cat(parts, dim=0).contiguous()


# (SGM name, diffusers name) inside one residual block
_RESNET = (
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("emb_layers.1.", "time_emb_proj."),
    ("skip_connection.", "conv_shortcut."),
)


def _unet_places(config: dict) -> list[tuple[str, str]]:
    """(SGM prefix, diffusers prefix) of every UNet part, from the UNet's config."""
    places = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
        ("middle_block.0.", "mid_block.resnets.0."),
        ("middle_block.1.", "mid_block.attentions.0."),
        ("middle_block.2.", "mid_block.resnets.1."),
    ]
    per_level = int(config["layers_per_block"])
    levels = len(config["block_out_channels"])
    for level in range(levels):
        for j in range(per_level):
            block = (per_level + 1) * level + j + 1
            places.append((f"input_blocks.{block}.0.", f"down_blocks.{level}.resnets.{j}."))
            places.append((f"input_blocks.{block}.1.", f"down_blocks.{level}.attentions.{j}."))
        if level < levels - 1:
            block = (per_level + 1) * (level + 1)
            places.append(
                (f"input_blocks.{block}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.")
            )
    for level in range(levels):
        has_attention = config["up_block_types"][level].startswith("CrossAttn")
        for j in range(per_level + 1):
            block = (per_level + 1) * level + j
            places.append((f"output_blocks.{block}.0.", f"up_blocks.{level}.resnets.{j}."))
            places.append((f"output_blocks.{block}.1.", f"up_blocks.{level}.attentions.{j}."))
        if level < levels - 1:
            block = (per_level + 1) * level + per_level
            slot = 2 if has_attention else 1
            places.append(
                (f"output_blocks.{block}.{slot}.conv.", f"up_blocks.{level}.upsamplers.0.conv.")
            )
    return places


def sgm_from_unet(state: dict, config: dict) -> dict:
    """A diffusers UNet2DConditionModel's state dict -> `model.diffusion_model.*` keys."""
    places = sorted(_unet_places(config), key=lambda place: -len(place[1]))
    out = {}
    for key, value in state.items():
        for sgm, ours in places:
            if key.startswith(ours):
                rest = key[len(ours) :]
                if ".resnets." in ours:
                    rest = _rename(rest, _RESNET)
                out[UNET + sgm + rest] = value
                break
        else:
            raise ValueError(f"no SGM place for the UNet key {key}")
    return out


# (SGM name, diffusers name), as in _RESNET
_VAE_RESNET = (("nin_shortcut.", "conv_shortcut."),)
_VAE_ATTENTION = (
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
)


def sgm_from_vae(state: dict, levels: int) -> dict:
    """A diffusers AutoencoderKL's state dict -> `first_stage_model.*` keys (attention
    projections as the 1x1 convolutions of the original)."""
    out = {}
    for key, value in state.items():
        sgm = key
        for side in ("encoder", "decoder"):
            sgm = sgm.replace(f"{side}.conv_norm_out.", f"{side}.norm_out.")
            sgm = sgm.replace(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.")
            sgm = sgm.replace(f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.")
        if ".mid_block.attentions.0." in sgm:
            head, rest = sgm.split(".mid_block.attentions.0.")
            sgm = f"{head}.mid.attn_1.{_rename(rest, _VAE_ATTENTION)}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        for level in range(levels):
            up = levels - 1 - level
            sgm = sgm.replace(
                f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block."
            )
            sgm = sgm.replace(
                f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample."
            )
            sgm = sgm.replace(f"decoder.up_blocks.{level}.resnets.", f"decoder.up.{up}.block.")
            sgm = sgm.replace(
                f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{up}.upsample."
            )
        out[VAE + _rename_inside(sgm, _VAE_RESNET)] = value
    return out


def _rename(rest: str, names) -> str:
    """The diffusers name at the start of `rest` -> its SGM name."""
    for sgm, diffusers in names:
        if rest.startswith(diffusers):
            return sgm + rest[len(diffusers) :]
    return rest


def _rename_inside(key: str, names) -> str:
    for sgm, diffusers in names:
        key = key.replace(f".{diffusers}", f".{sgm}")
    return key


def save_sdxl_single_file(folder: Path, out: Path, dtype=None) -> Path:
    """A diffusers SDXL folder as one single-file checkpoint of the SGM layout (what tests and
    benchmarks load as a person's A1111 or ComfyUI checkpoint)."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    kept = {"dtype": dtype} if dtype is not None else {}  # transformers' name
    first = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder", **kept)
    second = CLIPTextModelWithProjection.from_pretrained(
        str(folder), subfolder="text_encoder_2", **kept
    )
    tensors = sgm_from_text_encoders(first.state_dict(), second.state_dict())
    del first, second
    kept = {"torch_dtype": dtype} if dtype is not None else {}  # diffusers' name
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", **kept)
    tensors.update(sgm_from_unet(unet.state_dict(), dict(unet.config)))
    del unet
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", **kept)
    tensors.update(sgm_from_vae(vae.state_dict(), len(vae.config.block_out_channels)))
    del vae
    return _save(tensors, out, dtype, save_file)


def save_clip_vision_file(folder: Path, out: Path, dtype=None) -> Path:
    """A Hugging Face CLIP vision folder as one file, as ComfyUI keeps it in models/clip_vision/."""
    # torch and the model libraries take about a second to import: only code that runs a model
    # pays for it
    from safetensors.torch import save_file
    from transformers import CLIPVisionModelWithProjection

    kept = {"dtype": dtype} if dtype is not None else {}
    vision = CLIPVisionModelWithProjection.from_pretrained(str(folder), **kept)
    return _save(dict(vision.state_dict()), out, dtype, save_file)


def _save(tensors: dict, out: Path, dtype, save_file) -> Path:
    tensors = {
        key: (value.to(dtype) if dtype is not None else value).contiguous()
        for key, value in tensors.items()
        if not key.endswith("position_ids")
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".partial")
    save_file(tensors, str(temporary), metadata={"format": "pt"})
    temporary.replace(out)
    return out
