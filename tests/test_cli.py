"""CLI: eval/tasks/models output, and one-line exit-2 errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from analysis.cli import main
from analysis.evaluation.icl import classify
from analysis.pruning import NeuronMask
from analysis.tasks import get_task


def run(capsys, *argv):
    """Exit code, stdout and stderr of ``python -m analysis *argv`` run in-process."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors exit from inside parse_args
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_json_is_one_object(capsys, tiny_dirs):
    code, out, err = run(capsys, "eval", "--model", tiny_dirs["gpt2"], "--task", "to-upper", "--shots", "2",
                         "--n", "5", "--json")
    assert code == 0
    summary = json.loads(out)
    assert list(summary) == ["model", "task", "shots", "n", "accuracy", "copy_error_rate", "echo_rate",
                             "other_error_rate"]
    assert summary["n"] == 5 and summary["shots"] == 2 and summary["task"] == "to-upper"
    assert sum(summary[key] for key in list(summary)[4:]) == pytest.approx(1)


def test_eval_table_with_mask_and_task_file(capsys, tiny_dirs, tmp_path):
    mask = NeuronMask.from_pairs([(0, 1), (1, 2)]).save(tmp_path / "mask.json")
    task = tmp_path / "mine.csv"
    task.write_text("input,output\n" + "".join(f"w{i},{i}\n" for i in range(6)))
    code, out, err = run(capsys, "eval", "--model", tiny_dirs["mamba"], "--task", str(task), "--shots", "3",
                         "--n", "4", "--mask", str(mask))
    assert code == 0
    assert "task   mine" in out and "mask of 2 neurons" in out and "accuracy" in out
    assert "mine 3-shot" in err and "mine 3-shot" not in out  # the progress bar draws on stderr


def test_tasks_and_models(capsys):
    code, out, _ = run(capsys, "tasks")
    assert code == 0 and "vowel-count" in out and "english-spanish" in out and "recall " in out
    assert len(out.splitlines()) == 17  # a header and 16 tasks
    code, out, _ = run(capsys, "models")
    assert code == 0 and out.startswith("default") and "mamba2" in out and "griffin (recurrent_gemma)" in out


@pytest.mark.parametrize("argv,message", [
    (["eval", "--task", "nope"], "unknown task 'nope'"),
    (["eval", "--task", "to-upper", "--n", "0"], "argument --n: must be from 1 to 1000 (prompts per task), got 0"),
    (["eval", "--task", "to-upper", "--n", "1000000000000"], "argument --n: must be from 1 to 1000"),
    (["prune-eval", "--mask", "m.json", "--tasks", "antonyms", "--shots", "1,99"],
     "argument --shots: must be from 0 to 32"),
    (["eval", "--task", "to-upper", "--shots", "x"], "expected a whole number"),
    (["eval", "--task", "to-upper", "--mask", "/no/mask.json"], "mask file /no/mask.json: no such file"),
    (["eval", "--task", "to-upper", "--model", "/no/model"], "unknown model '/no/model'"),
    (["eval", "--task", "to-upper", "--device", "tpu"], "unknown device 'tpu'"),
    (["eval"], "the following arguments are required: --task"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_malformed_task_file_and_too_few_pairs(capsys, tiny_dirs, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\na,b\n")
    code, _, err = run(capsys, "eval", "--model", tiny_dirs["gpt2"], "--task", str(bad))
    assert code == 2 and "bad.csv: line 1: expected the columns input,output" in err
    few = tmp_path / "few.json"
    few.write_text(json.dumps([{"input": "a", "output": "b"}, {"input": "c", "output": "d"}]))
    code, _, err = run(capsys, "eval", "--model", tiny_dirs["gpt2"], "--task", str(few), "--shots", "4")
    assert code == 2 and "few.json: 2 pairs, but at least 5 are needed" in err


def test_python_dash_m_entry_point(tiny_dirs):
    proc = subprocess.run([sys.executable, "-m", "analysis", "eval", "--model", tiny_dirs["llama"], "--task",
                           "antonyms", "--n", "3", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 3 and len(proc.stdout.strip().splitlines()) == 1
    proc = subprocess.run([sys.executable, "-m", "analysis", "eval", "--task", "nope"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_attribute_writes_a_reproducible_npz(capsys, tiny_dirs, tmp_path):
    import numpy as np

    out = tmp_path / "ig.npz"
    code, stdout, err = run(capsys, "attribute", "--model", tiny_dirs["llama"], "--task", "vowel-count",
                            "--target", "copy", "--steps", "4", "--quadrature", "gauss-legendre", "--n", "3",
                            "--shots", "2", "--out", str(out))
    assert code == 0, err
    data = np.load(out)
    assert data["scores"].shape == (2, 64) and data["per_prompt"].shape == (3, 2, 64)
    assert data["target_ids"].shape == (3, 2) and data["prompts"].shape == (3,)
    np.testing.assert_allclose(data["scores"], data["per_prompt"].mean(0), rtol=1e-6)
    assert str(data["quadrature"]) == "gauss-legendre"
    code, _, _ = run(capsys, "attribute", "--model", tiny_dirs["llama"], "--task", "vowel-count", "--target",
                     "gold", "--steps", "2", "--n", "2", "--shots", "1", "--out", str(tmp_path / "g.npz"))
    assert code == 0 and np.load(tmp_path / "g.npz")["target_ids"].shape == (2,)


def test_copying_neurons_then_prune_eval(capsys, tiny_dirs, tmp_path):
    mask_path = tmp_path / "mask.json"
    code, out, err = run(capsys, "copying-neurons", "--model", tiny_dirs["gpt2"], "--n", "2", "--steps", "2",
                         "--shots", "2", "--top-k", "5", "--out", str(mask_path))
    assert code == 0, err
    assert len(NeuronMask.load(mask_path)) == 5 and "5 neurons" in out
    assert "mask stability: over 200 bootstrap resamples of the 2 scoring prompts, the top 5 overlaps" in err
    echo_path = tmp_path / "echo.json"
    code, out, err = run(capsys, "copying-neurons", "--model", tiny_dirs["gpt2"], "--n", "2", "--steps", "2",
                         "--shots", "2", "--top-k", "4", "--target", "echo", "--score-task", "singular-plural",
                         "--out", str(echo_path))
    echo_mask = NeuronMask.load(echo_path)
    assert code == 0 and len(echo_mask) == 4, err
    assert echo_mask.meta["target"] == "echo" and echo_mask.meta["task"] == "singular-plural"
    assert "echo scores from 2 of 2 prompts (all) of singular-plural" in err
    stable_path = tmp_path / "stable.json"
    code, out, err = run(capsys, "copying-neurons", "--model", tiny_dirs["gpt2"], "--n", "2", "--steps", "2",
                         "--shots", "2", "--top-k", "5", "--stable", "0.9", "--out", str(stable_path))
    stable = NeuronMask.load(stable_path)
    assert code == 0 and stable.neurons <= NeuronMask.load(mask_path).neurons and stable.meta["stable_share"] == 0.9
    assert f"{len(stable)} neurons (k=5, stable in 90% of resamples)" in out
    code, out, err = run(capsys, "prune-eval", "--model", tiny_dirs["gpt2"], "--mask", str(mask_path), "--tasks",
                         "antonyms,to-upper", "--shots", "1,2", "--n", "3", "--random-controls", "2", "--json",
                         "--general-passages", "4")
    assert code == 0, err
    data = json.loads(out)
    general = data["general_text"]
    assert general["passages"] == 4 and set(general["loss_nats_per_token"]) == {"baseline", "pruned", "random"}
    assert general["sentence"].startswith("On general text (4 passages), pruning")
    assert data["mask_size"] == 5 and len(data["results"]) == 2 * 2 + 2  # tasks x shots, plus averages
    assert {r["task"] for r in data["results"]} == {"antonyms", "to-upper", "average"}
    for entry in data["results"]:
        for key in ("pruned_vs_baseline", "pruned_vs_random"):
            for metric in ("accuracy", "copy_error_rate", "echo_rate"):
                item = entry[key][metric]
                assert item["ci95"][0] <= item["delta"] <= item["ci95"][1] and 0 < item["p"] <= 1
    records = tmp_path / "records.csv"
    code, out, err = run(capsys, "prune-eval", "--model", tiny_dirs["gpt2"], "--mask", str(mask_path), "--tasks",
                         "antonyms", "--shots", "1", "--n", "3", "--records", str(records))
    assert code == 0, err
    table = pd.read_csv(records, keep_default_na=False)
    assert list(table.columns) == ["task", "shots", "prompt_index", "query", "condition", "answer", "outcome",
                                   "gold", "demonstrations"]
    assert len(table) == 3 * (2 + 5)  # baseline, pruned and five random controls by default
    antonyms = dict(get_task("antonyms").pairs)
    for row in table.itertuples():  # every label can be audited from the file alone
        demos = json.loads(row.demonstrations)
        assert row.gold == antonyms[row.query] and len(demos) == 1  # 1-shot: one demonstration
        expected = classify(row.answer, row.gold, demos, query=row.query)
        assert row.outcome == expected
    assert set(table.condition) == {"baseline", "pruned", *(f"random-{s}" for s in range(5))}
    assert "Against random masks of the same size:" in out and "1-shot, all tasks" in out
    code, out, err = run(capsys, "prune-eval", "--model", tiny_dirs["gpt2"], "--mask", str(mask_path), "--tasks",
                         "antonyms", "--shots", "1", "--n", "3", "--random-controls", "3", "--general-passages", "0",
                         "--baselines", "magnitude,instruction,calibration", "--json")
    assert code == 0, err
    methods = json.loads(out)["methods"]
    assert [m["method"] for m in methods] == ["copying mask", "magnitude pruning (same k)", "instruction prompt",
                                              "contextual calibration"]
    assert all(m["d_accuracy_lo"] <= m["d_accuracy"] <= m["d_accuracy_hi"] for m in methods)
    apart = tmp_path / "apart.csv"  # one pass per condition (recomputed, not read from the cache): the same rows
    code, out, err = run(capsys, "prune-eval", "--model", tiny_dirs["gpt2"], "--mask", str(mask_path), "--tasks",
                         "antonyms", "--shots", "1", "--n", "3", "--records", str(apart), "--separate-conditions",
                         "--no-cache")
    assert code == 0, err
    assert apart.read_bytes() == records.read_bytes()


def test_task_vectors_json(capsys, tiny_dirs, tmp_path):
    mask = NeuronMask.from_pairs([(0, 1)]).save(tmp_path / "m.json")
    code, out, err = run(capsys, "task-vectors", "--model", tiny_dirs["llama"], "--task", "to-upper", "--shots",
                         "2", "--n", "4", "--mask", str(mask), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert len(data["unpruned"]["accuracy_per_layer"]) == 2 and data["mask_size"] == 1
    for entry in data["unpruned"], data["pruned"]:
        assert entry["best_layer"] is None or entry["verdict"].startswith(f"layer {entry['best_layer']} beats")
        assert all(0 <= p <= 1 for p in entry["p_adjusted_per_layer"]) and 0 <= entry["top_layer"] < 2


def test_task_vectors_text_says_when_no_layer_beats_zero_shot(capsys, tiny_dirs):
    code, out, err = run(capsys, "task-vectors", "--model", tiny_dirs["llama"], "--task", "to-upper", "--shots",
                         "1", "--n", "3", "--template", "{x} = {y}\\n")
    assert code == 0, err
    assert "template '{x} = {y}\\n'" in out  # the typed \\n became a newline (repr: one backslash)
    assert "unpruned: ICL " in out and "no layer beats zero-shot (best: layer " in out  # 3 queries cannot


@pytest.mark.parametrize("argv,message", [
    (["attribute", "--task", "vowel-count", "--target", "nope", "--out", "x.npz"], "invalid choice: 'nope'"),
    (["attribute", "--task", "vowel-count", "--n", "0", "--out", "x.npz"], "argument --n: must be from 1 to 256"),
    (["attribute", "--task", "vowel-count", "--n", "1000000", "--out", "x.npz"], "argument --n: must be from 1 to 256"),
    (["copying-neurons", "--top-k", "many", "--out", "m.json"], "--top-k must be a whole number or 'auto'"),
    (["copying-neurons", "--stable", "1.5", "--out", "m.json"], "--stable 1.5 is not a share in (0, 1]"),
    (["copying-neurons", "--dev-tasks", "antonyms,bogus", "--out", "m.json"], "--dev-tasks: 'bogus': name built-in"),
    (["copying-neurons", "--score-task", "bogus", "--out", "m.json"], "--score-task 'bogus' is not a built-in task"),
    (["prune-eval", "--mask", "/no/mask.json", "--tasks", "antonyms"], "mask file /no/mask.json: no such file"),
    (["prune-eval", "--mask", "m.json", "--tasks", "bogus"], "unknown task 'bogus'"),
    (["prune-eval", "--mask", "m.json", "--general-passages", "301"], "--general-passages 301 is not from 0 to 300"),
    (["prune-eval", "--mask", "m.json", "--baselines", "magnitude,vibes"], "unknown baseline 'vibes'"),
])
def test_attribution_commands_bad_input(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_empty_mask_and_bad_layer_range(capsys, tiny_dirs, tmp_path):
    empty = NeuronMask.from_pairs([]).save(tmp_path / "empty.json")
    code, _, err = run(capsys, "prune-eval", "--mask", str(empty), "--tasks", "antonyms")
    assert code == 2 and "holds no neurons: nothing to prune" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "copying-neurons", "--model", tiny_dirs["gpt2"], "--layers", "1-5", "--top-k", "2",
                       "--out", str(tmp_path / "m.json"))
    assert code == 2 and "layer range '1-5' is outside the model's layers 0-1" in err


def test_k_larger_than_neurons_and_too_long_prompts(capsys, tiny_dirs, tmp_path):
    code, _, err = run(capsys, "copying-neurons", "--model", tiny_dirs["gpt2"], "--n", "1", "--steps", "1",
                       "--shots", "1", "--top-k", "1000", "--out", str(tmp_path / "m.json"))
    assert code == 2 and "k=1000 is out of range: the model has 128 neurons in all" in err
    long_task = tmp_path / "long.csv"
    long_task.write_text("input,output\n" + "".join(f"{'word ' * 80}{i},{i}\n" for i in range(6)))
    code, _, err = run(capsys, "attribute", "--model", tiny_dirs["gpt2"], "--task", str(long_task), "--n", "1",
                       "--shots", "4", "--out", str(tmp_path / "x.npz"))
    assert code == 2 and "exceeds the model's context of 256" in err


def test_attention_npz_and_png(capsys, tiny_dirs, tmp_path):
    import numpy as np

    out, png = tmp_path / "a.npz", tmp_path / "a.png"
    code, stdout, err = run(capsys, "attention", "--model", tiny_dirs["mamba"], "--text", "a:3 b:5 | a:",
                            "--form", "unified", "--reduce", "absmean", "--layers", "1", "--out", str(out),
                            "--png", str(png))
    assert code == 0, err
    data = np.load(out)
    length = len(data["input_ids"])
    assert data["attn"].shape == (1, length, length) and data["tokens"].shape == (length,)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for argv, message in [(["--form", "s6", "--model", tiny_dirs["rwkv"]], "rwkv models have no 's6'"),
                          (["--text", "", "--model", tiny_dirs["mamba"]], "the text is empty"),
                          (["--layers", "x", "--model", tiny_dirs["mamba"]], "--layers must be 'all'")]:
        base = ["attention", "--text", "abc", "--out", str(out)]
        code, _, err = run(capsys, *base, *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_relevance_and_faithfulness(capsys, tiny_dirs, tmp_path):
    out = tmp_path / "rel.json"
    code, stdout, err = run(capsys, "relevance", "--model", tiny_dirs["llama"], "--text", "cat -> dog\nsun ->",
                            "--method", "gxi", "--out", str(out))
    assert code == 0, err
    data = json.loads(out.read_text())
    assert len(data["scores"]) == len(data["tokens"]) == len(data["input_ids"]) and "most relevant" in stdout
    code, _, err = run(capsys, "relevance", "--model", tiny_dirs["mamba"], "--text", "abc", "--method", "lrp",
                       "--out", str(out))  # conservative propagation through the SSM (MambaLRP)
    assert code == 0, err
    assert json.loads(out.read_text())["method"] == "lrp"
    code, _, err = run(capsys, "relevance", "--model", tiny_dirs["mamba"], "--text", "abc", "--method", "saliency",
                       "--out", str(out))
    assert code == 2 and "saliency" in err and len(err.strip().splitlines()) == 1
    code, stdout, err = run(capsys, "faithfulness", "--model", tiny_dirs["llama"], "--task", "antonyms",
                            "--methods", "gxi,raw", "--n", "2", "--json")
    assert code == 0, err
    rows = json.loads(stdout)["rows"]
    assert {(r["method"], r["order"]) for r in rows} >= {("gxi", "most_first"), ("random", "least_first")}


def test_bad_paths_and_budgets_exit_2_with_one_line(capsys, tmp_path):
    """A directory where a file belongs, a missing folder, a mask with a 5001-digit number, a negative training
    budget: one line and exit 2 before any work (these once printed 'unexpected IsADirectoryError', wrote
    <dir>.npz, or trained nothing and exited 0)."""
    folder = tmp_path / "maps"
    folder.mkdir()
    huge = tmp_path / "huge.json"
    huge.write_text('{"format": "prunescope-mask/1", "neurons": [[0, 1' + "0" * 5000 + "]]}")
    cases = [
        (["eval", "--task", "antonyms", "--mask", str(folder)], f"mask file {folder}: a directory, not a mask file"),
        (["eval", "--task", "antonyms", "--mask", str(huge)], f"mask file {huge}: a number longer than 4300 digits"),
        (["eval", "--task", str(folder)], f"task file {folder}: a directory, not a .csv or .json file"),
        (["attention", "--text", "abc", "--out", str(folder)],
         f"argument --out: {folder} is a directory; give a file name ending in .npz"),
        (["attention", "--text", "abc", "--out", str(tmp_path / "no" / "a.npz")], "does not exist"),
        (["prune-eval", "--mask", "m.json", "--records", str(folder)], f"argument --records: {folder} is a directory"),
        (["copying-neurons", "--out", str(folder)], f"argument --out: {folder} is a directory"),
        (["train-toy", "--arch", "mamba", "--minutes", "-1"],
         "argument --minutes: must be from 0.1 to 1440 (minutes of toy training), got -1.0"),
        (["train-toy", "--arch", "mamba", "--minutes", "inf"], "argument --minutes: expected a finite number"),
        (["train-toy", "--arch", "mamba", "--max-steps", "0"], "argument --max-steps: must be from 1 to 1000000"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "unexpected" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.json", "maps"]  # nothing written, no maps.npz


def test_train_toy_refuses_a_budget_out_of_range(tmp_path):
    from analysis.errors import PrunescopeError
    from analysis.models.toy import train_toy

    with pytest.raises(PrunescopeError, match=r"minutes must be a number from 0\.1 to 1440"):
        train_toy("mamba", tmp_path / "toy", minutes=-1)
    with pytest.raises(PrunescopeError, match="max_steps must be an integer from 1 to 1000000"):
        train_toy("mamba", tmp_path / "toy", max_steps=0)
    assert not (tmp_path / "toy").exists()


def test_an_npz_out_without_its_suffix_names_the_file_written(capsys, tiny_dirs, tmp_path):
    import numpy as np

    code, stdout, err = run(capsys, "attention", "--model", tiny_dirs["mamba"], "--text", "a:3 b:5 | a:",
                            "--layers", "0", "--out", str(tmp_path / "maps"))
    assert code == 0, err
    assert stdout.startswith(f"wrote {tmp_path / 'maps.npz'}: 1 layers")
    assert np.load(tmp_path / "maps.npz")["attn"].shape[0] == 1
