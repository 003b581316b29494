"""Every linked setting, once: its link name, default and kind (streamlit-free).

A setting is a whole number in a range (the library's bound of a quantity, analysis/bounds.py, or an app-only
one here), a text cut at a length, a choice among options, or a list (a multiselect's picks, comma-joined).
components/state.py parses links and binds widgets by this table alone, and pages read defaults, choices and
limits from it. The defaults the demo precomputes come from analysis/demo.py. Adding a setting is one entry
in :data:`TABLE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from analysis.attribution.quadrature import QUADRATURES
from analysis.attribution.targets import COPY_TARGETS, TARGETS
from analysis.bounds import BOUNDS, Bound
from analysis.demo import ATTRIBUTION, PRUNE_CONTROLS, PRUNE_TASKS, SCORING, TASK_VECTORS
from analysis.demo import SETTINGS as DEMO
from analysis.pruning.copying import SCORE_PROMPTS
from components.charts import HEATMAP_SCALES

Kind = Literal["int", "text", "choice", "list"]
TEXT_LIMIT = 200  # characters a text, choice or list keeps from a link unless its entry says otherwise
FLAG = Bound(0, 1, "a toggle: 0 or 1")  # checkboxes and toggles, kept as 0/1
# the task-vector page's prompt formats: label -> template (None: the task's own)
TV_FORMATS: dict[str, str | None] = {"the task's own": None, "Input: / Output: lines": "Input: {x}\nOutput: {y}\n"}
CMP_MASKS = ("no mask", "active mask", "random mask of the same size", "upload")  # the Compare page's mask picks


@dataclass(frozen=True)
class Setting:
    """One linked setting. ``quantity``: the library quantity whose bound an int keeps to (None: an app-only
    ``bound``); ``options``: a choice's fixed options (None: the page offers them, per model or files)."""

    name: str
    default: int | str
    kind: Kind
    bound: Bound | None = None
    quantity: str | None = None
    limit: int = TEXT_LIMIT
    options: tuple[str, ...] | None = None

    def parse(self, text: str) -> int | str:
        """A link's text as this setting: a number clamped to its range (a non-number is the default), any
        other text cut at its limit."""
        if self.kind != "int":
            return text[:self.limit]
        try:
            value = int(text.strip()[:24])
        except ValueError:
            return self.default
        return self.bound.clamp(value) if self.bound is not None else value


def number(name: str, default: int, quantity: str | None = None, bound: Bound | None = None) -> Setting:
    """An int setting within the library's bound of ``quantity`` (default: its own name), or an app-only
    ``bound``."""
    if bound is None:
        quantity = quantity or name
        bound = BOUNDS[quantity]
    return Setting(name, default, "int", bound=bound, quantity=quantity)


def text(name: str, default: str, limit: int = TEXT_LIMIT) -> Setting:
    return Setting(name, default, "text", limit=limit)


def choice(name: str, default: str, options: tuple[str, ...] | None = None, limit: int = TEXT_LIMIT) -> Setting:
    return Setting(name, default, "choice", limit=limit, options=options)


def picks(name: str, default: str, limit: int = TEXT_LIMIT) -> Setting:
    """A multiselect's picks, comma-joined (its options are the page's)."""
    return Setting(name, default, "list", limit=limit)


def _table(*entries: Setting) -> dict[str, Setting]:
    table: dict[str, Setting] = {}
    for entry in entries:
        if entry.name in table:
            raise ValueError(f"the setting {entry.name} has two entries")
        table[entry.name] = entry
    return table


# link name -> setting, in the order the address bar lists them
TABLE: dict[str, Setting] = _table(
    # shared by the pages; the copying-score and selection settings with k define the mask
    choice("task", DEMO["task"], limit=120),  # a built-in task or the upload option (components/widgets.py)
    text("upload", "", limit=60),  # an uploaded task's file name: a link can name it, not carry it
    number("shots", DEMO["shots"]),
    number("n", DEMO["n"]),
    number("seed", DEMO["seed"]),
    number("layer", 0),
    number("k", DEMO["k"]),
    text("mask", "", limit=60_000),
    number("per_layer", 0, bound=FLAG),  # top k per layer (the demo's mask: off, over all layers)
    text("layers", "", limit=16),  # a layer range, e.g. 10-20; '' = all
    number("score_n", SCORING["n"], "ig_n"),
    number("score_shots", SCORING["shots"], bound=Bound(1, 8, "copying-score demonstrations")),
    number("score_steps", SCORING["steps"], "steps"),
    choice("score_target", SCORING["target"], COPY_TARGETS, limit=40),
    choice("score_prompts", SCORING["prompts"], SCORE_PROMPTS, limit=40),
    number("prune", 0, bound=FLAG),  # the pruning page's Prune toggle
    # the attention page's view ('' = the model family's default form, no model beside it)
    text("text", "a:3 b:5 c:1 d:7 | b:5 a:", limit=600),
    choice("form", "", limit=40),
    text("reduce", "mean", limit=400),
    choice("beside", ""),
    number("heads", 0, bound=FLAG),  # the layers x heads grid of thumbnails
    number("sink", 0, bound=FLAG),  # the first token (the attention sink) left out of maps and relevance
    # each page's own, so a page keeps them while the visitor is on another one (a running job is found again)
    choice("ig_target", ATTRIBUTION["target"], TARGETS),
    number("ig_n", ATTRIBUTION["n"]),
    number("ig_steps", ATTRIBUTION["steps"], "steps"),
    choice("ig_rule", ATTRIBUTION["quadrature"], QUADRATURES),
    choice("ig_scale", "clip", tuple(HEATMAP_SCALES)),
    text("ig_zoom", "", limit=16),  # the heatmap's layer range at full resolution, e.g. 3-5; '' = all, folded
    text("ig_neuron", "", limit=16),  # the neuron view's neuron, e.g. 12:345; '' = the strongest
    number("tv_n", TASK_VECTORS["n"]),
    number("tv_dummies", TASK_VECTORS["dummies"], "dummies"),
    choice("tv_format", "the task's own", tuple(TV_FORMATS)),
    number("tv_masked", 1, bound=FLAG),  # task vectors also with the mask
    choice("faith_task", "antonyms"),
    number("faith_n", 10),
    number("gt_n", 10, "faith_n"),  # the ground-truth benchmark's prompts per family
    picks("rel_methods", "raw,rollout,gradattn,gxi"),
    picks("prune_tasks", ",".join(PRUNE_TASKS)),
    number("prune_controls", PRUNE_CONTROLS, "controls"),
    picks("sweep_tasks", ""),  # the k-sweep's dev tasks; '' = the scoring target's default (analysis/pruning/autok.py)
    choice("cmp_mode", "two masks", ("two masks", "two models")),
    choice("cmp_model", ""),
    choice("cmp_mask_A", "no mask", CMP_MASKS),
    choice("cmp_mask_B", "active mask", CMP_MASKS),
)
DEFAULTS: dict[str, Any] = {name: entry.default for name, entry in TABLE.items()}  # link name -> default


def default(name: str) -> Any:
    return TABLE[name].default


def options(name: str) -> tuple[str, ...]:
    """A choice's fixed options."""
    fixed = TABLE[name].options
    if fixed is None:
        raise KeyError(f"the setting {name} has no fixed options: its page offers them")
    return fixed


def limit(name: str) -> int:
    """The characters a text setting keeps."""
    return TABLE[name].limit
