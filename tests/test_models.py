"""Model profiles and encoders: real tokenizer, exact SDXL conditioning, CLIP preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from luna_core.errors import LunaConfigError
from luna_core.models.clip_vocab import clip_tokenizer
from luna_core.models.encoders import SDXLTextEncoder, VisionEncoder
from luna_core.models.profiles import choose_dtype, resolve_profile, store_key, tiny_profile
from luna_core.models.tiny import TINY_VERSION

CPU = torch.device("cpu")


def test_tokenizer_uses_the_real_clip_vocabulary():
    tokenizer = clip_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert clip_tokenizer("!")("hi", padding="max_length", max_length=6).input_ids == [
        49406,
        1883,
        49407,
        0,
        0,
        0,
    ]


def test_tiny_profile_loads_through_from_pretrained(tiny_models: Path):
    profile = tiny_profile(tiny_models)
    vision = VisionEncoder(profile.vision_model, profile.vision_revision, CPU, torch.float32)
    text = SDXLTextEncoder(profile.sdxl_model, profile.sdxl_revision, CPU, torch.float32)
    assert (vision.width, text.width, text.pooled_width, text.seq_len) == (48, 96, 48, 77)
    assert type(text.tokenizer).__name__ == "CLIPTokenizer"
    assert profile.vision_key == f"luna-tiny--clip-vit@v{TINY_VERSION}-{tiny_models.name}"


def test_sdxl_conditioning_equals_diffusers_encode_prompt(tiny_models: Path):
    from diffusers import StableDiffusionXLPipeline

    profile = tiny_profile(tiny_models)
    encoder = SDXLTextEncoder(profile.sdxl_model, profile.sdxl_revision, CPU, torch.float32)
    pipe = StableDiffusionXLPipeline(
        vae=None,
        unet=None,
        scheduler=None,
        text_encoder=encoder.text_encoder,
        text_encoder_2=encoder.text_encoder_2,
        tokenizer=encoder.tokenizer,
        tokenizer_2=encoder.tokenizer_2,
    )
    prompts = ["a photo of a cat", "", "   ", "word " * 120, "猫 🐈 café\u200b\u0301"]
    with torch.no_grad():
        expected, _, expected_pooled, _ = pipe.encode_prompt(
            prompts, device=CPU, do_classifier_free_guidance=False
        )
    embeds, pooled = encoder.encode(prompts)
    np.testing.assert_array_equal(embeds, expected.numpy())
    np.testing.assert_array_equal(pooled, expected_pooled.numpy())
    # counted before truncation, with start and end tokens
    assert encoder.token_counts(prompts)[3] == 122


def test_preprocessing_matches_clip_image_processor(tiny_models: Path):
    from transformers import CLIPImageProcessorPil

    profile = tiny_profile(tiny_models)
    encoder = VisionEncoder(profile.vision_model, profile.vision_revision, CPU, torch.float32)
    reference = CLIPImageProcessorPil.from_pretrained(profile.vision_model)
    rng = np.random.default_rng(0)
    for size, mode in (
        ((300, 170), "RGB"),
        ((97, 211), "RGBA"),
        ((64, 64), "L"),
        ((1024, 1024), "P"),
    ):
        image = Image.fromarray(
            rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        ).convert(mode)
        expected = reference(images=image, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(encoder.preprocess(image), expected, atol=1e-5)
    embeds = encoder.embed_pixels(encoder.preprocess(image)[None])
    assert embeds.shape == (1, 48) and abs(np.linalg.norm(embeds) - 1) < 1e-5


@pytest.mark.slow  # resolves the tiny profile, which loads the trained tiny world
def test_missing_model_path_is_a_clear_error(tmp_path: Path):
    with pytest.raises(LunaConfigError, match="does not exist"):
        resolve_profile("tiny", tmp_path / "models", vision_model=str(tmp_path / "nope"))
    with pytest.raises(LunaConfigError, match="unknown model profile"):
        resolve_profile("huge", tmp_path)


def test_dtype_choice_and_store_keys():
    assert choose_dtype(CPU, "float32") == torch.float32
    assert choose_dtype(CPU) in (torch.float32, torch.bfloat16)
    with pytest.raises(LunaConfigError):
        choose_dtype(CPU, "float8")
    assert (
        store_key("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", None)
        == "laion--CLIP-ViT-H-14-laion2B-s32B-b79K@main"
    )
    assert "/" not in store_key("/home/me/models/clip", "abc")
