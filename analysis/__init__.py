"""prunescope: neuron attribution, copying-bias pruning and implicit attention for language models.

The library never imports streamlit; the app in ``app/`` and the CLI (``python -m analysis``) are thin
layers over it.
"""

from analysis.errors import PrunescopeError

__all__ = ["PrunescopeError"]
