"""Luna's ComfyUI nodes: each crop of a batch conditioned by its own vault (or projector) answer.

Install into a ComfyUI with Luna installed in its Python environment:

    ln -s /path/to/luna/comfyui_luna ComfyUI/custom_nodes/comfyui_luna   # and: pip install -e
    /path/to/luna
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
