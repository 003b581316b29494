"""CLI: eval/tasks/models output, and one-line exit-2 errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from analysis.cli import main
from analysis.pruning import NeuronMask


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
    assert list(summary) == ["model", "task", "shots", "n", "accuracy", "copy_error_rate", "other_error_rate"]
    assert summary["n"] == 5 and summary["shots"] == 2 and summary["task"] == "to-upper"
    assert summary["accuracy"] + summary["copy_error_rate"] + summary["other_error_rate"] == pytest.approx(1)


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
    assert code == 0 and "vowel-count" in out and "english-spanish" in out and len(out.splitlines()) == 16
    code, out, _ = run(capsys, "models")
    assert code == 0 and out.startswith("default") and "mamba2" in out and "griffin (recurrent_gemma)" in out


@pytest.mark.parametrize("argv,message", [
    (["eval", "--task", "nope"], "unknown task 'nope'"),
    (["eval", "--task", "to-upper", "--n", "0"], "argument --n: must be at least 1"),
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
