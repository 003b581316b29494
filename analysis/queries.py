"""Queries: the computations a page keeps for a session rather than on disk (an attention map, the head grid,
token relevance, a faithfulness run, a k-sweep, a neuron's profile, an answer's per-token attribution, a
comparison) as frozen values that know their key and how to run.

They complement :class:`analysis.requests.Request` (what the results cache stores): the same rule, one object
per computation, so no page builds a key by hand. :meth:`Query.key` is the query itself with the model's
fingerprint and dtype (:func:`analysis.requests.model_key`), so two pages asking the same thing share the
result, and a result kept for another model, dtype or setting is never shown as this one's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from analysis import attention
from analysis.attribution.answer_tokens import attribute_answer
from analysis.attribution.neuron_view import neuron_profile
from analysis.attribution.targets import copy_target_problem
from analysis.attribution.tokens import token_relevance
from analysis.cache import ResultsCache
from analysis.evaluation.faithfulness import faithfulness
from analysis.evaluation.general import general_capability, stored_general_capability
from analysis.head_grid import head_grid
from analysis.pruning.autok import K_GRID, k_sweep
from analysis.pruning.baselines import evaluate_baselines
from analysis.pruning.copying import copying_scores, stored_copying_scores
from analysis.pruning.evaluate import control_masks, prune_eval
from analysis.pruning.mask import NeuronMask
from analysis.pruning.stability import mask_stability
from analysis.requests import model_key
from analysis.tasks import Task, builtin_tasks

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from analysis.attention import AttentionMaps
    from analysis.attribution.answer_tokens import AnswerAttribution, AnswerSource
    from analysis.attribution.neuron_ig import NeuronIGResult
    from analysis.attribution.neuron_view import NeuronProfile
    from analysis.attribution.tokens import TokenRelevance
    from analysis.evaluation.general import GeneralComparison
    from analysis.families import Form
    from analysis.head_grid import HeadGrid
    from analysis.models.loader import LoadedModel
    from analysis.pruning.autok import KSweep
    from analysis.pruning.copying import CopyingScores, CopyTarget, ScorePrompts
    from analysis.pruning.evaluate import PruneEvalResult
    from analysis.pruning.stability import MaskStability
    from analysis.runner import Runner

R = TypeVar("R")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Query(Generic[R]):
    """A session-kept computation (subclasses: a frozen dataclass of everything the result depends on)."""

    kind: ClassVar[str]

    def key(self, loaded: LoadedModel) -> tuple:
        return model_key(loaded, self.kind, self)


@dataclass(frozen=True)
class MapsQuery(Query["AttentionMaps"]):
    """:func:`analysis.attention_maps` of ``text``."""

    text: str
    form: Form | None = None
    reduce: str = "mean"
    layers: tuple[int, ...] | None = None
    kind: ClassVar[str] = "attention-maps"

    def run(self, loaded: LoadedModel) -> AttentionMaps:
        layers = list(self.layers) if self.layers is not None else None
        return attention.attention_maps(loaded, self.text, form=self.form, reduce=self.reduce, layers=layers)


@dataclass(frozen=True)
class HeadGridQuery(Query["HeadGrid"]):
    """:func:`analysis.head_grid.head_grid` of ``text``: every layer's heads."""

    text: str
    form: Form | None = None
    kind: ClassVar[str] = "head-grid"

    def run(self, loaded: LoadedModel) -> HeadGrid:
        return head_grid(loaded, self.text, form=self.form)


@dataclass(frozen=True)
class RelevanceQuery(Query["TokenRelevance"]):
    """:func:`analysis.token_relevance` of ``text`` by ``method`` (``form``: the implicit layers' form)."""

    text: str
    method: str
    form: Form | None = None
    kind: ClassVar[str] = "token-relevance"

    def run(self, loaded: LoadedModel) -> TokenRelevance:
        return token_relevance(loaded, self.text, self.method, form=self.form)


@dataclass(frozen=True)
class FaithfulnessQuery(Query["pd.DataFrame"]):
    """:func:`analysis.faithfulness` of ``methods`` on ``n`` prompts of the built-in task ``task``."""

    task: str
    n: int
    methods: tuple[str, ...]
    shots: int = 2
    kind: ClassVar[str] = "faithfulness"

    def run(self, loaded: LoadedModel, progress: Progress | None = None, pool: Runner | None = None
            ) -> pd.DataFrame:
        return faithfulness(loaded, builtin_tasks()[self.task], list(self.methods), self.n, shots=self.shots,
                            progress=progress, pool=pool)


@dataclass(frozen=True)
class KSweepQuery(Query["KSweep"]):
    """:func:`analysis.k_sweep` of the copying scores computed with ``scoring`` (their settings, as items)."""

    scoring: tuple[tuple[str, object], ...]
    per_layer: bool
    layers: tuple[int, int] | None
    dev_tasks: tuple[str, ...]
    kind: ClassVar[str] = "k-sweep"

    def run(self, loaded: LoadedModel, scores: torch.Tensor, cache: ResultsCache | None = None,
            progress: Progress | None = None, pool: Runner | None = None) -> KSweep:
        return k_sweep(loaded, scores, K_GRID, self.dev_tasks, per_layer=self.per_layer, layers=self.layers,
                       cache=cache, progress=progress, pool=pool)


@dataclass(frozen=True)
class StoredScoresQuery(Query["CopyingScores | None"]):
    """The copying scores the results cache holds for these settings, or None (read once per session)."""

    n: int
    shots: int
    steps: int
    target: CopyTarget = "copy"
    prompts: ScorePrompts = "all"
    kind: ClassVar[str] = "copying-scores"

    def run(self, loaded: LoadedModel) -> CopyingScores | None:
        return stored_copying_scores(loaded, n=self.n, shots=self.shots, steps=self.steps, target=self.target,
                                     prompts=self.prompts, cache=ResultsCache())


@dataclass(frozen=True)
class ScoresQuery(Query["CopyingScores"]):
    """:func:`analysis.copying_scores` with ``settings`` (its keyword arguments, as sorted items): the IG job."""

    settings: tuple[tuple[str, object], ...]
    kind: ClassVar[str] = "copying-scores-job"

    def run(self, loaded: LoadedModel, cache: ResultsCache | None = None, progress: Progress | None = None,
            pool: Runner | None = None) -> CopyingScores:
        return copying_scores(loaded, **dict(self.settings), cache=cache, progress=progress,  # type: ignore[arg-type]
                              pool=pool)


@dataclass(frozen=True)
class StabilityQuery(Query["MaskStability"]):
    """:func:`analysis.pruning.stability.mask_stability` of ``mask`` among the scores made with ``scoring``
    (their options and the prompts used)."""

    scoring: tuple
    mask: NeuronMask
    per_layer: bool
    layers: tuple[int, int] | None
    kind: ClassVar[str] = "mask-stability"

    def run(self, loaded: LoadedModel, scored: CopyingScores) -> MaskStability:
        return mask_stability(scored, self.mask, self.per_layer, self.layers)


@dataclass(frozen=True)
class BaselinesQuery(Query["pd.DataFrame"]):
    """:func:`analysis.pruning.baselines.evaluate_baselines` beside ``mask`` (magnitude pruning takes its size)."""

    mask: NeuronMask
    tasks: tuple[Task, ...]
    shots: int
    n: int
    seed: int
    methods: tuple[str, ...]
    kind: ClassVar[str] = "baselines"

    def run(self, loaded: LoadedModel, progress: Progress | None = None) -> pd.DataFrame:
        return evaluate_baselines(loaded, self.mask, self.tasks, [self.shots], self.n, self.seed, self.methods,
                                  cache=ResultsCache(), progress=progress)


@dataclass(frozen=True)
class GeneralQuery(Query["GeneralComparison | None"]):
    """The loss on general text of the unpruned model, ``mask`` and ``controls`` random masks like it."""

    mask: NeuronMask
    controls: int
    passages: tuple[str, ...]
    kind: ClassVar[str] = "general-loss"

    def stored(self, loaded: LoadedModel) -> GeneralComparison | None:
        """The comparison when the results cache holds every condition's losses, else None."""
        return stored_general_capability(loaded, self.mask, control_masks(loaded, self.mask, self.controls),
                                         self.passages)

    def run(self, loaded: LoadedModel, progress: Progress | None = None) -> GeneralComparison:
        return general_capability(loaded, self.mask, control_masks(loaded, self.mask, self.controls), self.passages,
                                  ResultsCache(), progress)


@dataclass(frozen=True)
class ShotSweepQuery(Query["PruneEvalResult"]):
    """:func:`analysis.prune_eval` of ``mask`` at each of ``shots`` on ``tasks`` (the pruning page's sweep)."""

    mask: NeuronMask
    tasks: tuple[Task, ...]
    shots: tuple[int, ...]
    n: int
    seed: int
    controls: int
    kind: ClassVar[str] = "shot-sweep"

    def run(self, loaded: LoadedModel, progress: Progress | None = None, pool: Runner | None = None
            ) -> PruneEvalResult:
        return prune_eval(loaded, self.mask, list(self.tasks), shots=list(self.shots), n=self.n,
                          random_controls=self.controls, seed=self.seed, cache=ResultsCache(), progress=progress,
                          pool=pool)


@dataclass(frozen=True)
class CopyProblemQuery(Query[str]):
    """Why a copy target cannot be attributed on a task's prompts ('' when it can): tokenizer only, so a page
    says so before anything runs."""

    task: Task
    n: int
    shots: int
    seed: int
    kind: ClassVar[str] = "copy-problem"

    def run(self, loaded: LoadedModel) -> str:
        return copy_target_problem(loaded, self.task.sample_prompts(self.shots, self.n, self.seed)) or ""


@dataclass(frozen=True)
class NeuronProfileQuery(Query["NeuronProfile"]):
    """:func:`analysis.attribution.neuron_view.neuron_profile` of one neuron over an attribution run (known by
    its key ``run``)."""

    run_key: tuple
    layer: int
    neuron: int
    max_prompts: int | None = None
    kind: ClassVar[str] = "neuron-profile"

    def run(self, loaded: LoadedModel, result: NeuronIGResult) -> NeuronProfile:
        return neuron_profile(loaded, result, self.layer, self.neuron, self.max_prompts)


@dataclass(frozen=True)
class AnswerQuery(Query["AnswerAttribution"]):
    """:func:`analysis.attribution.answer_tokens.attribute_answer` of one prompt of an attribution run."""

    run_key: tuple
    prompt: int
    method: str
    source: AnswerSource
    kind: ClassVar[str] = "answer-attribution"

    def run(self, loaded: LoadedModel, result: NeuronIGResult, delimiter: str) -> AnswerAttribution:
        item = result.inputs[self.prompt]
        return attribute_answer(loaded, item.text, self.method, self.source, gold=item.prompt.gold,
                                delimiter=delimiter)


@dataclass(frozen=True)
class CompareQuery(Query[dict]):
    """The Compare page's two sides on the same prompts: the task, the prompts and each side's pick (its kind
    and, for an upload, the file's id), and the session's active mask (a side may name it). The page evaluates
    the sides (each an :class:`analysis.evaluation.icl.Evaluation` request); this is the key of the pair."""

    task_fingerprint: str
    shots: int
    n: int
    seed: int
    sides: tuple[tuple[str, str | None], ...]
    active: tuple = ()
    kind: ClassVar[str] = "compare"


__all__ = ["AnswerQuery", "BaselinesQuery", "CompareQuery", "CopyProblemQuery", "FaithfulnessQuery", "GeneralQuery",
           "HeadGridQuery", "KSweepQuery", "MapsQuery", "NeuronProfileQuery", "Query", "RelevanceQuery",
           "ScoresQuery", "ShotSweepQuery", "StabilityQuery", "StoredScoresQuery"]
