"""The plain sentences the app, the reports and the CLI print about a paired comparison, generated from the
intervals and tests of analysis/evaluation/paired.py, never from point estimates alone.

A sentence names every outcome class that moved (accuracy and copy errors always; echoes when their interval
excludes 0 or the tasks disagree on them), and it does not pool away what moved in opposite directions: when
the tasks disagree on a metric (Cochran's Q test of the task x condition interaction below ``ALPHA``, or
tasks whose Holm-adjusted p is below ``ALPHA`` moving both ways), it says "depends on the task" and names the
tasks that moved, each with its change and Holm-adjusted p.
"""

from __future__ import annotations

from analysis.evaluation.paired import Estimate, format_p

ALPHA = 0.05
# metric -> (name in a sentence, is the name plural)
NAMES = {"accuracy": ("accuracy", False), "copy_error_rate": ("copy errors", True), "echo_rate": ("echoes", True)}
ORDER = ("copy_error_rate", "echo_rate", "accuracy")
REFERENCES = {"baseline": "the unpruned model", "random": "random masks of the same size"}
DEPENDS = "depends on the task"


def signed(value: float, digits: int = 1) -> str:
    """``value`` with its sign at ``digits`` decimals, and no signed zero: '+3.1', '-0.4', '0.0' (a change
    that rounds to zero has no direction)."""
    text = f"{value:+.{digits}f}"
    return text[1:] if float(text) == 0 else text


def signed_points(value: float) -> str:
    """A change (a rate difference) in points with its sign, and no '-0.0': '+3.1', '-0.4', '0.0'."""
    return signed(100 * value)


def interval_text(ci95: tuple[float, float]) -> str:
    """The one interval format: '95 % CI -3.0 to +2.2' (points)."""
    return f"95 % CI {signed_points(ci95[0])} to {signed_points(ci95[1])}"


def excludes_zero(ci95: tuple[float, float]) -> bool:
    """Does the interval exclude zero as printed (0.1 points)? A bound of +0.0003 prints as "0.0"; judged on
    the raw value, the sentence would claim a change its own printed interval does not show."""
    low, high = (round(100 * bound, 1) for bound in ci95)
    return low > 0 or high < 0


def describe_change(metric: str, estimate: Estimate) -> str:
    """'copy errors fall 7.2 points (95 % CI -10.3 to -4.1)' when the interval excludes 0, 'accuracy changes
    by -0.4 points (95 % CI -3.0 to +2.2)' when it does not, 'copy errors: no prompt changed' when every
    prompt's outcome was the same under both conditions."""
    name, plural = NAMES.get(metric, (metric, False))
    if estimate.delta == 0 and estimate.ci95 == (0.0, 0.0):
        return f"{name}: no prompt changed"
    ending = "" if plural else "s"
    if excludes_zero(estimate.ci95):
        verb = ("rise" if estimate.delta > 0 else "fall") + ending
        return f"{name} {verb} {abs(100 * estimate.delta):.1f} points ({interval_text(estimate.ci95)})"
    return f"{name} change{ending} by {signed_points(estimate.delta)} points ({interval_text(estimate.ci95)})"


def moved_tasks(metric: str, by_task: dict[str, dict[str, Estimate]]) -> tuple[list[str], list[str]]:
    """The tasks whose change in ``metric`` is significant after Holm's correction: (rising, falling)."""
    rising: list[str] = []
    falling: list[str] = []
    for task, estimates in by_task.items():
        estimate = estimates.get(metric)
        if estimate is not None and estimate.p_holm is not None and estimate.p_holm < ALPHA:
            (rising if estimate.delta > 0 else falling).append(task)
    return rising, falling


def disagreement(metric: str, by_task: dict[str, dict[str, Estimate]] | None,
                 heterogeneity: dict[str, float] | None) -> str:
    """'' when the tasks agree on ``metric``; else ', but this depends on the task (heterogeneity p = 0.004):
    +31.0 points on plurals (Holm p < 0.001), -11.0 on country-capital (Holm p = 0.031)'."""
    if not by_task or len(by_task) < 2:
        return ""
    rising, falling = moved_tasks(metric, by_task)
    p_interaction = (heterogeneity or {}).get(metric)
    if not ((p_interaction is not None and p_interaction < ALPHA) or (rising and falling)):
        return ""
    test = "" if p_interaction is None else f" (heterogeneity {format_p(p_interaction)})"
    named = [f"{signed_points(by_task[t][metric].delta)} points on {t} (Holm {format_p(by_task[t][metric].p_holm)})"
             for t in rising + falling]
    detail = ": " + ", ".join(named) if named else ", though no single task's change survives Holm's correction"
    return f", but this {DEPENDS}{test}{detail}"


def verdict(estimates: dict[str, Estimate], against: str, subject: str = "pruning",
            by_task: dict[str, dict[str, Estimate]] | None = None, heterogeneity: dict[str, float] | None = None
            ) -> str:
    """One plain sentence about the treatment vs ``against`` ('baseline', 'random', or any label): the copy-error,
    echo and accuracy changes, then whether the accuracy interval shows a gain, a loss, or neither, or that
    the effect depends on the task. ``by_task``: each task's estimates (with Holm-adjusted p), and
    ``heterogeneity``: metric -> the interaction test's p, for a sentence about the average over tasks. E.g.
    'Against random masks of the same size: copy errors fall 7.2 points (95 % CI -10.3 to -4.1); accuracy
    changes by -0.4 points (95 % CI -3.0 to +2.2): no evidence of a gain.'"""
    if not estimates:
        return ""
    reference = REFERENCES.get(against, against)
    splits = {metric: disagreement(metric, by_task, heterogeneity) for metric in ORDER if metric in estimates}
    parts = []
    for metric, split in splits.items():
        if metric == "echo_rate" and not (split or excludes_zero(estimates[metric].ci95)):
            continue  # echoes are named when they moved
        parts.append(describe_change(metric, estimates[metric]) + split)
    sentence = f"Against {reference}: " + "; ".join(parts)
    accuracy = estimates.get("accuracy")
    if accuracy is None:
        return sentence + "."
    if splits["accuracy"]:
        return sentence + "."  # its accuracy part says that it depends on the task, and where it moved
    if excludes_zero(accuracy.ci95):
        conclusion = f"{subject} {'gains' if accuracy.ci95[0] > 0 else 'costs'} accuracy"
    else:
        conclusion = "no evidence of a gain"
    return f"{sentence}: {conclusion}."
