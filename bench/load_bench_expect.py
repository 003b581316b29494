"""The library side of the load benchmark (bench/load_bench.py): what each kind of session should show, computed
directly through the library (no cache), and the verdict on what a session did show."""

from __future__ import annotations

from collections.abc import Callable

from analysis.attention import FORMS, attention_maps
from analysis.attribution import attribute_task
from analysis.attribution.summary import top_neurons
from analysis.attribution.tokens import token_relevance
from analysis.demo import PRUNE_CONTROLS, PRUNE_TASKS, pruning_tasks
from analysis.evaluation import evaluate_task
from analysis.evaluation.faithfulness import faithfulness
from analysis.evaluation.task_vectors import task_vectors
from analysis.pruning.evaluate import prune_eval
from analysis.tasks import builtin_tasks
from components.charts import visible_token
from load_bench_session import SHOTS, TABLE, Session, Values, cell, pct  # bench/ is on the path when a bench runs


# -- the same computations through the library ---------------------------------------------------------------
def expect_prune(loaded, session: Session, args, models) -> Values:
    tasks = [pruning_tasks()[name] for name in PRUNE_TASKS]
    direct = prune_eval(loaded, session.mask, tasks, shots=[SHOTS], n=args.n, random_controls=PRUNE_CONTROLS, seed=0)
    rates = direct.cell(shots=SHOTS).rates["pruned"]
    return {"accuracy, pruned": pct(rates["accuracy"].value),
            "copy errors, pruned": pct(rates["copy_error_rate"].value)}


def expect_evaluate(loaded, session: Session, args, models) -> Values:
    p = session.params
    s = evaluate_task(loaded, builtin_tasks()[p["task"]], SHOTS, args.n, seed=int(p["seed"])).summary()
    return {"Accuracy": pct(s["accuracy"]), "Copy errors": pct(s["copy_error_rate"]), "Echoes": pct(s["echo_rate"]),
            "Other errors": pct(s["other_error_rate"]), "n": str(s["n"])}


def expect_compare(loaded, session: Session, args, models) -> Values:
    p, values = session.params, {}
    sides = (("A", "no mask", None), ("B", "active mask", session.mask))
    runs = [evaluate_task(loaded, builtin_tasks()[p["task"]], SHOTS, args.n, seed=int(p["seed"]), mask=m).summary()
            for _, _, m in sides]
    for name, key in (("Accuracy", "accuracy"), ("Copy errors", "copy_error_rate"), ("Echoes", "echo_rate"),
                      ("Other errors", "other_error_rate")):
        for i, ((side, choice, m), s) in enumerate(zip(sides, runs)):
            values[f"#{i + 1} {side}: {loaded.name} ({choice}, {len(m or ())} neurons) {name}"] = pct(s[key])
    return values


def expect_attribution(loaded, session: Session, args, models) -> Values:
    p = session.params
    result = attribute_task(loaded, builtin_tasks()[p["task"]], "copy", args.ig_n, SHOTS, int(p["seed"]),
                            args.ig_steps, "riemann")
    values: Values = {}
    top = top_neurons(loaded, result)
    for r, row in enumerate(top.itertuples()):
        values[f"{TABLE}top {r}"] = (f"{row.layer}.{row.neuron} {cell(row.score)} {cell(row.max_activation)} "
                              f"{visible_token(row.fires_most_on)}")
    rows = [[float(v) for v in layer] for layer in result.scores.tolist()]
    size = max(1, -(-len(rows[0]) // 256))  # the heatmap's bins: each shows its strongest neuron
    for layer, row in enumerate(rows):
        for start in range(0, len(row), size):
            chunk = row[start:start + size]
            offset = max(range(len(chunk)), key=lambda i: abs(chunk[i]))
            values[f"L{layer}.{start + offset}"] = f"{chunk[offset]:.3g}"
    for layer, row in enumerate(rows):
        values[f"L{layer} signed sum"] = f"{float(sum(row)):.3g}"
        values[f"L{layer} sum of |attribution|"] = f"{float(sum(abs(v) for v in row)):.3g}"
    return values


def expect_task_vectors(loaded, session: Session, args, models) -> Values:
    p = session.params
    conditions = {"unpruned": None, **({"pruned": session.mask} if session.mask is not None else {})}
    results = {name: task_vectors(loaded, builtin_tasks()[p["task"]], SHOTS, args.tv_n, 1, seed=int(p["seed"]),
                                  mask=mask) for name, mask in conditions.items()}
    values = {f"{name} L{layer} chart": pct(r.table.accuracy[layer])  # the curves, conditions side by side
              for layer in range(loaded.n_layers) for name, r in results.items()}
    for name, r in results.items():
        for row in r.table.itertuples():
            for column in ("accuracy", "copy_rate", "p_adjusted"):
                values[f"{TABLE}{name} L{row.layer} {column}"] = cell(getattr(row, column))
        values[f"{TABLE}{name} zero_shot_accuracy"] = cell(r.zero_shot_accuracy)
        values[f"{TABLE}{name} icl_accuracy"] = cell(r.icl_accuracy)
    return values


def expect_attention(loaded, session: Session, args, models) -> Values:
    text, layer = str(session.params["text"]), int(session.params["layer"])
    form = FORMS[loaded.family][0]
    maps = attention_maps(loaded, text, form=form, reduce="mean", layers=[layer])
    values = {"tokens": " ".join(f"{i}:{visible_token(t)}"[:24] for i, t in enumerate(maps.tokens))}
    for method in str(session.params["rel_methods"]).split(","):
        scores = token_relevance(loaded, text, method, form=form).scores.tolist()
        values.update({f"{method} t{j}": f"{float(v):.4g}" for j, v in enumerate(scores)})
    values.update({f"attention [{i},{j}]": f"{float(v):.4g}" for i, row in enumerate(maps.attn[0].tolist())
                   for j, v in enumerate(row)})
    if session.beside:
        other = models(session.beside)
        other_maps = attention_maps(other, text, layers=[min(layer, other.n_layers - 1)])
        values.update({f"{session.beside} [{i},{j}]": f"{float(v):.4g}"
                       for i, row in enumerate(other_maps.attn[0].tolist()) for j, v in enumerate(row)})
    return values


def expect_faithfulness(loaded, session: Session, args, models) -> Values:
    p = session.params
    frame = faithfulness(loaded, builtin_tasks()[p["faith_task"]], str(p["rel_methods"]).split(","), int(p["faith_n"]),
                         shots=2)
    return {f"{TABLE}{row.method}/{row.order}": f"{cell(row.auc_mean)} ± {cell(row.auc_std)}, n={row.n}"
            for row in frame.itertuples()}


EXPECT: dict[str, Callable[..., Values]] = {
    "prune": expect_prune, "evaluate": expect_evaluate, "compare": expect_compare, "attribution": expect_attribution,
    "task-vectors": expect_task_vectors, "attention": expect_attention, "faithfulness": expect_faithfulness}


def verdict(session: Session, expected: Values, others: dict[int, Values]) -> tuple[bool, str]:
    """(mixed up?, the line's comparison): the shown values against the expected ones. Every label on one side
    must be on the other, except a table's rows that the grid did not draw (:data:`TABLE`)."""
    head = list(expected)[:2]

    def brief(values: Values) -> str:
        return ", ".join(values.get(k, "-")[:40] for k in head)

    if session.shown is None:
        return False, f"nothing shown, expected {brief(expected)}"
    shown = session.shown
    compared = [k for k in expected if k in shown]
    missing = [k for k in expected if k not in shown and not k.startswith(TABLE)]
    differ = [k for k in compared if shown[k] != expected[k]] + missing + [k for k in shown if k not in expected]
    text = f"{len(compared)} values, shown {brief(shown)}; expected {brief(expected)}"
    if not differ:
        return False, text
    first = differ[0]
    text += (f"  MISMATCH: {len(differ)} differ, first {first}: shown {shown.get(first, '-')} expected "
             f"{expected.get(first, '-')}")
    like = [j for j, values in others.items() if all(shown.get(k) == values.get(k) for k in compared)]
    return True, text + (f"; shows session {like[0]}'s numbers" if like else "")
