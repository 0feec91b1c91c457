"""Single-file models: SDXL checkpoints in the SGM layout and ComfyUI clip_vision files, named in
the settings, read offline, refused in one line when they are something else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from luna_core.errors import LunaConfigError
from luna_core.home.home import LunaHome
from luna_core.models import sgm_layout, single_file
from luna_core.models.encoders import SDXLTextEncoder, VisionEncoder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def single_files(tiny_models: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny world's SDXL as one SGM checkpoint, and its vision tower as a clip_vision file."""
    folder = tmp_path_factory.mktemp("single-files")
    sdxl = sgm_layout.save_sdxl_single_file(tiny_models / "sdxl", folder / "tiny-xl.safetensors")
    vision = sgm_layout.save_clip_vision_file(
        tiny_models / "vision", folder / "clip-tiny.safetensors"
    )
    return sdxl, vision


def test_text_encoders_from_a_checkpoint_answer_as_the_folder_does(tiny_models, single_files):
    prompts = ["a red circle on a blue background, (soft light:1.2)", "cat", ""]
    folder = SDXLTextEncoder(str(tiny_models / "sdxl"), None, CPU, torch.float32)
    checkpoint = SDXLTextEncoder(str(single_files[0]), None, CPU, torch.float32)
    for ours, theirs in zip(checkpoint.encode(prompts), folder.encode(prompts)):
        np.testing.assert_array_equal(ours, theirs)
    assert checkpoint.tokenizer_2.pad_token == "!" and checkpoint.widths == folder.widths


def test_a_clip_vision_file_embeds_as_the_folder_does(tiny_models, single_files):
    folder = VisionEncoder(str(tiny_models / "vision"), None, CPU, torch.float32)
    checkpoint = VisionEncoder(str(single_files[1]), None, CPU, torch.float32)
    pixels = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(checkpoint.embed_pixels(pixels), folder.embed_pixels(pixels))
    assert checkpoint.preprocess.crop == folder.preprocess.crop


def test_diffusers_reads_the_written_unet_and_vae_back_exactly(tiny_models, single_files):
    """Luna writes the SGM layout; diffusers' own single-file code reads it: the weights match."""
    from luna_core.refine.sampler import SDXLSampler

    folder = SDXLSampler(str(tiny_models / "sdxl"), None, CPU, torch.float32)
    checkpoint = SDXLSampler(str(single_files[0]), None, CPU, torch.float32)
    for part in ("unet", "vae"):
        ours = getattr(checkpoint, part).state_dict()
        theirs = getattr(folder, part).state_dict()
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            assert torch.equal(ours[key].reshape(value.shape), value), key
    assert dict(checkpoint.scheduler_config) == dict(folder.scheduler_config)


def _file_with_keys(path: Path, keys: list[str]) -> Path:
    save_file({key: torch.zeros(2, 2) for key in keys}, str(path))
    return path


@pytest.mark.parametrize(
    "keys, looks",
    [
        (["cond_stage_model.transformer.text_model.x", "model.diffusion_model.y"], "SD 1.x"),
        (["model.diffusion_model.joint_blocks.0.x"], "SD3"),
        (["double_blocks.0.img_attn.qkv.weight"], "Flux"),
        (["lora_unet_down_blocks_0.lora_down.weight"], "LoRA"),
        (["encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight"], "VAE"),
        (["conditioner.embedders.0.model.x", "model.diffusion_model.y"], "SDXL refiner"),
        (["something.else"], "unknown layout"),
    ],
)
def test_a_file_that_is_not_an_sdxl_checkpoint_is_refused_in_one_line(tmp_path, keys, looks):
    path = _file_with_keys(tmp_path / "model.safetensors", keys)
    with pytest.raises(LunaConfigError) as refused:
        single_file.check_single_file(str(path), "SDXL model", "sdxl")
    message = str(refused.value)
    assert str(path) in message and looks in message and "\n" not in message


def test_truncated_pickled_and_foreign_files_are_refused_before_reading(tmp_path):
    whole = _file_with_keys(tmp_path / "whole.safetensors", ["a.b"])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-3])
    with pytest.raises(LunaConfigError, match="truncated"):
        single_file.Header.read(cut)
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x02")
    with pytest.raises(LunaConfigError, match="pickled"):
        single_file.Header.read(tmp_path / "model.ckpt")
    (tmp_path / "huge.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(LunaConfigError, match="not a readable safetensors"):
        single_file.Header.read(tmp_path / "huge.safetensors")


def _sdxl_base_shapes(text_encoder_2_layers: int = 32) -> dict[str, tuple[int, ...]]:
    """The tensor shapes by which SDXL base (and every fine-tune of it) is recognised."""
    return {
        sgm_layout.CLIP_L + "text_model.embeddings.token_embedding.weight": (49408, 768),
        sgm_layout.CLIP_L + "text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        sgm_layout.BIGG + "token_embedding.weight": (49408, 1280),
        f"{sgm_layout.BIGG}transformer.resblocks.{text_encoder_2_layers - 1}.mlp.c_fc.weight": (
            5120,
            1280,
        ),
        sgm_layout.BIGG + "text_projection": (1280, 1280),
        sgm_layout.UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
    }


def test_sdxl_base_shapes_choose_the_carried_configs_and_others_are_refused(tmp_path):
    header = single_file.Header(tmp_path / "pony.safetensors", _sdxl_base_shapes())
    assert single_file.describe(header) == "sdxl"
    folder = single_file.sdxl_config_folder(header)
    assert folder == single_file.SDXL_BASE
    config = json.loads((folder / "unet" / "config.json").read_text())
    assert config["cross_attention_dim"] == 2048 and config["transformer_layers_per_block"] == [
        1,
        2,
        10,
    ]
    odd = single_file.Header(tmp_path / "odd.safetensors", _sdxl_base_shapes(24))
    with pytest.raises(LunaConfigError, match="odd.safetensors.*no known SDXL"):
        single_file.sdxl_config_folder(odd)


def test_the_identity_is_the_content_not_the_path(tmp_path):
    (tmp_path / "a").mkdir()
    first = _file_with_keys(tmp_path / "a" / "model.safetensors", ["x"])
    moved = tmp_path / "renamed.safetensors"
    moved.write_bytes(first.read_bytes())
    cache = tmp_path / "cache"
    same = single_file.content_identity(first, cache)
    assert same.startswith("sha256-") and single_file.content_identity(moved, cache) == same
    edited = bytearray(first.read_bytes())
    edited[-1] ^= 1
    moved.write_bytes(bytes(edited))
    assert single_file.content_identity(moved, cache) != same
    assert json.loads((cache / "file-hashes.json").read_text())  # remembered, not rehashed


def test_the_settings_name_a_checkpoint_and_the_vault_is_built_from_it(
    tiny_home: LunaHome, single_files, monkeypatch
):
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts

    folder_profile = tiny_home.profile()
    sdxl, vision = single_files
    tiny_home.set_setting("models", "sdxl_model", str(sdxl))
    monkeypatch.setenv("LUNA_VISION_MODEL", str(vision))
    profile = tiny_home.profile()
    assert profile.sdxl_model == str(sdxl) and profile.vision_model == str(vision)
    assert profile.text_key.startswith("tiny-xl.safetensors@sha256-")
    assert tiny_home.settings().setting("models.vision_model").where() == "$LUNA_VISION_MODEL"
    options = EmbedOptions(progress=False)
    texts = embed_prompts(tiny_home, profile, options)
    images = embed_images(tiny_home, profile, options)
    assert texts.added > 0 and images.added > 0 and texts.failed == 0
    expected = embed_prompts(tiny_home, folder_profile, options)
    assert expected.added == texts.added  # the folder's store is another model's: embedded anew

    monkeypatch.setenv("LUNA_SDXL_MODEL", str(vision))
    with pytest.raises(LunaConfigError, match=r"CLIP vision model, not an SDXL.*\$LUNA_SDXL_MODEL"):
        tiny_home.profile()


def test_luna_build_refuses_a_wrong_model_file_before_recording_or_running_it(
    tmp_path, capsys, monkeypatch
):
    from luna_cli.main import main

    monkeypatch.delenv("LUNA_SDXL_MODEL", raising=False)
    home = LunaHome.resolve(tmp_path / "home").ensure()
    (tmp_path / "library").mkdir()
    home.add_roots([tmp_path / "library"])
    lora = _file_with_keys(tmp_path / "detail_lora.safetensors", ["lora_unet_x.lora_up.weight"])
    before = home.config_path.read_text()
    assert main(["build", "--home", str(home.root), "--sdxl-model", str(lora)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "detail_lora.safetensors is a LoRA" in error
    assert "(set by argument)" in error and home.config_path.read_text() == before
    assert not (home.dagster_home / "storage").exists()  # no run was started


def test_device_and_dtype_settings_reach_runs_that_say_auto(tmp_path, monkeypatch):
    from luna_assets.resources import LunaModelsResource

    home = LunaHome.resolve(tmp_path / "home").ensure()
    home.set_setting("models", "dtype", "bfloat16")
    monkeypatch.setenv("LUNA_DEVICE", "cpu")
    options = LunaModelsResource().embed_options(8, home)
    assert (options.device, options.dtype) == ("cpu", "bfloat16")
    pinned = LunaModelsResource(device="cuda:1", dtype="float32").embed_options(8, home)
    assert (pinned.device, pinned.dtype) == ("cuda:1", "float32")
