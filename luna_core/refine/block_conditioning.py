"""Per-block conditioning: the composition blocks' cross-attention sees the whole image's answer,
the others each item's own, through a processor installed for one call."""

from __future__ import annotations

import contextlib


class _BlockConditioning:
    """An attention processor that gives a cross-attention layer another conditioning (`context`,
    one row per UNet row) than the UNet's own, and otherwise runs the processor it wraps
    unchanged."""

    def __init__(self, inner, context):
        self.inner, self.context = inner, context

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ):
        if encoder_hidden_states is not None:
            if isinstance(encoder_hidden_states, tuple):  # (text, IP-Adapter image tokens)
                encoder_hidden_states = (self.context, *encoder_hidden_states[1:])
            else:
                encoder_hidden_states = self.context
        return self.inner(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
        )


@contextlib.contextmanager
def block_conditioning(unet, context, blocks: tuple[str, ...]):
    """Within the block, the cross-attention layers of the UNet blocks in `blocks` (down, mid, up)
    see `context` ([rows, T, D]) instead of the UNet call's own conditioning."""
    prefixes = tuple(BLOCK_GROUPS[b] + "." for b in blocks)
    original = dict(unet.attn_processors)
    patched = {
        name: _BlockConditioning(proc, context)
        if name.startswith(prefixes) and ".attn2." in name
        else proc
        for name, proc in original.items()
    }
    unet.set_attn_processor(patched)
    try:
        yield
    finally:
        unet.set_attn_processor(original)


BLOCK_GROUPS = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}
