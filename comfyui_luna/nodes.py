"""The node pack's classes and their names, following ComfyUI's conventions:

- IMAGE is a float tensor [B, H, W, C] in [0, 1]; MASK is [B, H, W] (or [H, W]) in [0, 1];
- CONDITIONING is a list of [tokens [B, 77, D], {"pooled_output": [B, P]}]; a batch of B
  conditionings meets a batch of B latents item by item (latent i gets conditioning i).

With `server_url` the nodes ask a running `luna serve`; without, they use Luna's Python API in this
process, with the home's models and index cached across executions.
"""

from __future__ import annotations

from comfyui_luna.graph_nodes import LunaChessRefiner, LunaSemanticDetailer
from comfyui_luna.refine_nodes import (
    LunaDetections,
    LunaLoraStack,
    LunaRefine,
)
from comfyui_luna.vault_nodes import (
    LunaBlend,
    LunaProjectorConditioning,
    LunaVaultConditioning,
)

NODE_CLASS_MAPPINGS = {
    "LunaVaultConditioning": LunaVaultConditioning,
    "LunaProjectorConditioning": LunaProjectorConditioning,
    "LunaBlend": LunaBlend,
    "LunaDetections": LunaDetections,
    "LunaLoraStack": LunaLoraStack,
    "LunaRefine": LunaRefine,
    "LunaChessRefiner": LunaChessRefiner,
    "LunaSemanticDetailer": LunaSemanticDetailer,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LunaVaultConditioning": "Luna Vault Conditioning",
    "LunaProjectorConditioning": "Luna Projector Conditioning",
    "LunaBlend": "Luna Blend",
    "LunaDetections": "Luna Detections",
    "LunaLoraStack": "Luna LoRA Stack",
    "LunaRefine": "Luna Refine (Luna's models, per-item LoRAs)",
    "LunaChessRefiner": "Luna Chess Refiner (graph's model)",
    "LunaSemanticDetailer": "Luna Semantic Detailer (graph's model)",
}
