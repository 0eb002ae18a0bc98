"""A test-only ComfyUI node pack, never shipped: what the real-ComfyUI tests need in place of a full-size model.

PVTT Test Prompt Embedding stands in for CLIPLoader + CLIPTextEncode in the native Wan-VACE workflows:
a full UMT5-XXL (5.7 B parameters) does not fit a CPU test, and ComfyUI's CLIPLoader builds the full
encoder whatever file it is given. It outputs what CLIPTextEncode outputs for Wan (a CONDITIONING of
4096-wide token embeddings), from a seed.
"""

from __future__ import annotations


class PVTTTestPromptEmbedding:
    DESCRIPTION = "TEST ONLY: a seeded random UMT5-wide prompt embedding, in place of CLIPLoader + CLIPTextEncode."
    CATEGORY = "PVTT tests"
    FUNCTION = "embed"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                                              "tooltip": "Seed of the random embedding."})}}

    def embed(self, seed):
        import torch

        g = torch.Generator().manual_seed(seed)
        return ([[0.5 * torch.randn(1, 6, 4096, generator=g), {}]],)


NODE_CLASS_MAPPINGS = {"PVTTTestPromptEmbedding": PVTTTestPromptEmbedding}
NODE_DISPLAY_NAME_MAPPINGS = {"PVTTTestPromptEmbedding": "PVTT Test Prompt Embedding (tests only)"}
