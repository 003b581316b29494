"""Printed numbers: a change that rounds to zero prints as 0.0 (or 0.000), never with a sign ('-0.0 points')."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pandas as pd

from analysis.cli.pruning import change_table, methods_text, sweep_text
from analysis.evaluation.general import GeneralComparison
from analysis.evaluation.paired import Estimate
from analysis.evaluation.verdicts import signed, signed_points
from analysis.pruning.autok import choose_k

SIGNED_ZERO = re.compile(r"[-+−]0\.0+(?!\d*[1-9])")  # -0.0, +0.0, -0.000 ... (not -0.04)
TINY = -0.0004  # -0.04 points: rounds to zero


def test_signed_drops_the_sign_of_zero_only():
    assert [signed_points(v) for v in (TINY, 0.0004, -0.0, 0.031, -0.004)] == ["0.0", "0.0", "0.0", "+3.1", "-0.4"]
    assert [signed(v, 3) for v in (-0.0004, 0.0004, -0.0123)] == ["0.000", "0.000", "-0.012"]


def test_cli_tables_and_sentences_print_no_signed_zero():
    metrics = ("accuracy", "copy_error_rate", "echo_rate")
    row = {"task": "antonyms", "shots": 4, "n": 40, "queries": 40}
    for metric in metrics:
        row.update({f"{group}_{metric}": 0.5 for group in ("baseline", "pruned", "random")})
        for against in ("baseline", "random"):
            column = f"d_{metric}_vs_{against}"
            row.update({column: TINY, f"{column}_lo": -0.0003, f"{column}_hi": 0.02, f"{column}_p": 1.0})
    table = change_table(pd.DataFrame([row])).to_string()
    assert "0.0 [0.0, +2.0]" in table and not SIGNED_ZERO.search(table), table
    method = {"method": "copying mask", "shots": 4}
    for metric in metrics:
        method.update({f"d_{metric}": TINY, f"d_{metric}_lo": -0.0001, f"d_{metric}_hi": 0.01, f"d_{metric}_p": 1.0})
    methods = methods_text(pd.DataFrame([method]))
    assert "acc 0.0 [0.0, +1.0]" in methods and not SIGNED_ZERO.search(methods), methods
    averages = pd.DataFrame([{"k": 20, "accuracy": 0.5, "copy_error_rate": 0.1, "echo_rate": 0.0,
                              "d_accuracy": TINY, "d_accuracy_lo": -0.0002, "d_accuracy_hi": 0.03,
                              "d_copy_error_rate": TINY, "d_copy_error_rate_lo": -0.02, "d_copy_error_rate_hi": 0.0}])
    sweep = sweep_text(SimpleNamespace(shots=4, n=40, averages=lambda: averages))
    assert "d_acc 0.0 [0.0, +3.0]" in sweep and not SIGNED_ZERO.search(sweep), sweep
    k_table = pd.DataFrame([{"k": 5, "task": "average", "d_accuracy": TINY, "d_accuracy_lo": -0.0001,
                             "d_accuracy_hi": 0.02, "d_accuracy_adj_lo": -0.01, "d_copy_error_rate": TINY}])
    _, why = choose_k(k_table, n=40)
    assert "changes accuracy by 0.0 points (95 % CI 0.0 to +2.0)" in why and not SIGNED_ZERO.search(why), why
    flat = Estimate(-0.0004, (-0.0002, 0.02), 0.9)
    sentence = GeneralComparison(100, {}, flat, flat, flat).sentence()
    assert "changes the loss by 0.000" in sentence and not SIGNED_ZERO.search(sentence), sentence
