"""prunescope: neuron attribution, copying-bias pruning and implicit attention for language models.

The library behind the app (``app/``) and the CLI (``python -m analysis``); it never imports streamlit. Import
it as ``import analysis as ps``: every name below is one attribute away, loaded on first use (``import
analysis`` itself stays fast, so the CLI starts at once).

Models and tasks
    :func:`load_model`, :class:`LoadedModel`; :func:`get_task`, :func:`builtin_tasks`, :class:`Task`
Attribution (Integrated Gradients over neurons, every layer at once)
    :func:`attribute_task`, :func:`neuron_ig`, :func:`prepare_inputs`, :class:`NeuronIGResult`;
    token-level: :func:`token_relevance`, :func:`faithfulness`
Copying-bias pruning (arXiv 2410.01288)
    :func:`copying_scores`, :func:`select_top_k`, :class:`NeuronMask`, :func:`k_sweep`, :func:`prune_eval`,
    :class:`PruneEvalResult`; plain evaluation: :func:`evaluate_task`, :class:`EvalResult`
Attention and task vectors
    :func:`attention_maps` (the exact implicit attention of Mamba, Mamba-2, RWKV and Griffin, or softmax),
    :func:`task_vectors`
Errors
    :class:`PrunescopeError`: every bad input raises it (or a subclass) with a one-line message.

Example (a toy model shipped with the project; the real ones are ``"default"`` and ``"gemma3-270m"``)::

    >>> import analysis as ps
    >>> model = ps.load_model("toy-transformer", device="cpu")
    >>> ig = ps.attribute_task(model, ps.get_task("antonyms"), "gold", n=2, shots=2)
    >>> ig.per_prompt.shape  # prompts x layers x neurons
    torch.Size([2, 4, 384])
    >>> mask = ps.select_top_k(ig.scores, 5)
    >>> result = ps.prune_eval(model, mask, [ps.get_task("antonyms")], shots=[2], n=8, random_controls=2)
    >>> average = result.summary().query("task == 'average'").iloc[0]  # paired by prompt, 95 % interval
    >>> bool(average.d_accuracy_vs_baseline_lo <= average.d_accuracy_vs_baseline <= average.d_accuracy_vs_baseline_hi)
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from analysis.errors import PrunescopeError

# public name -> the module that defines it (imported on first access, see __getattr__)
_HOMES = {
    "load_model": "analysis.models.loader", "LoadedModel": "analysis.models.loader",
    "get_task": "analysis.tasks.builtin", "builtin_tasks": "analysis.tasks.builtin", "Task": "analysis.tasks.task",
    "Prompt": "analysis.tasks.task",
    "evaluate_task": "analysis.evaluation.icl", "EvalResult": "analysis.evaluation.icl",
    "attribute_task": "analysis.attribution.runs", "neuron_ig": "analysis.attribution.neuron_ig",
    "NeuronIGResult": "analysis.attribution.neuron_ig", "prepare_inputs": "analysis.attribution.targets",
    "copying_scores": "analysis.pruning.copying", "CopyingScores": "analysis.pruning.copying",
    "select_top_k": "analysis.pruning.copying", "NeuronMask": "analysis.pruning.mask",
    "prune_eval": "analysis.pruning.evaluate", "PruneEvalResult": "analysis.pruning.evaluate",
    "k_sweep": "analysis.pruning.autok", "KSweep": "analysis.pruning.autok",
    "attention_maps": "analysis.attention", "AttentionMaps": "analysis.attention",
    "token_relevance": "analysis.attribution.tokens", "TokenRelevance": "analysis.attribution.tokens",
    "faithfulness": "analysis.evaluation.faithfulness", "ground_truth": "analysis.evaluation.ground_truth",
    "task_vectors": "analysis.evaluation.task_vectors", "TaskVectorResult": "analysis.evaluation.task_vectors",
}

__all__ = ["PrunescopeError", "AttentionMaps", "CopyingScores", "EvalResult", "KSweep", "LoadedModel",
           "NeuronIGResult", "NeuronMask", "Prompt", "PruneEvalResult", "Task", "TaskVectorResult", "TokenRelevance",
           "attention_maps", "attribute_task", "builtin_tasks", "copying_scores", "evaluate_task", "faithfulness",
           "get_task", "ground_truth", "k_sweep", "load_model", "neuron_ig", "prepare_inputs", "prune_eval",
           "select_top_k", "task_vectors", "token_relevance"]  # _HOMES' names, spelt out for linters

if TYPE_CHECKING:  # what type checkers and IDEs follow; at run time __getattr__ imports on first use
    from analysis.attention import AttentionMaps, attention_maps
    from analysis.attribution.neuron_ig import NeuronIGResult, neuron_ig
    from analysis.attribution.runs import attribute_task
    from analysis.attribution.targets import prepare_inputs
    from analysis.attribution.tokens import TokenRelevance, token_relevance
    from analysis.evaluation.faithfulness import faithfulness
    from analysis.evaluation.ground_truth import ground_truth
    from analysis.evaluation.icl import EvalResult, evaluate_task
    from analysis.evaluation.task_vectors import TaskVectorResult, task_vectors
    from analysis.models.loader import LoadedModel, load_model
    from analysis.pruning.autok import KSweep, k_sweep
    from analysis.pruning.copying import CopyingScores, copying_scores, select_top_k
    from analysis.pruning.evaluate import PruneEvalResult, prune_eval
    from analysis.pruning.mask import NeuronMask
    from analysis.tasks.builtin import builtin_tasks, get_task
    from analysis.tasks.task import Prompt, Task


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562), so ``import analysis`` loads no torch."""
    if name not in _HOMES:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
