"""The family modules of attention maps: per family, the functions that capture a layer's intermediates and
build its attention matrices, and the typed ops object the family registry names (:mod:`.ops`).

``mamba`` (Mamba, Mamba-2), ``rwkv`` (RWKV-4) and ``griffin`` (RecurrentGemma) compute the exact implicit
attention of their recurrent layers (2403.01590, 2405.16504); ``softmax`` reads transformers' softmax
attention; ``conservative`` holds the recurrent families' LRP rules (MambaLRP), which the registry names
too. These modules import the adapters and models, never the registry (:mod:`analysis.families`) nor the
generic dispatch above it (:mod:`analysis.attention`, ``attention_maps``), so this package imports nothing
on its own.
"""
