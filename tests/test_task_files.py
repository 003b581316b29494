"""User task files: valid CSV/JSON load; every malformed case gets one line naming the file and problem."""

from __future__ import annotations

import json

import pytest

from analysis.errors import TaskError
from analysis.tasks import get_task, load_task_file


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_valid_csv_with_quotes_and_unicode(tmp_path):
    path = write(tmp_path, "caps.csv", 'output,input\nParis,France\n"Washington, D.C.",USA\n\nMadrid,España\n')
    task = load_task_file(path)
    assert task.name == "caps" and task.source == str(path)
    assert task.pairs == (("France", "Paris"), ("USA", "Washington, D.C."), ("España", "Madrid"))


def test_valid_json_and_get_task_by_path(tmp_path):
    items = [{"input": "a", "output": "b"}, {"input": "c", "output": 3}]
    path = write(tmp_path, "t.json", json.dumps(items))
    assert get_task(str(path)).pairs == (("a", "b"), ("c", "3"))


BAD_FILES = [
    ("wrong.csv", "question,answer\na,b\n",
     r"wrong\.csv: line 1: expected the columns input,output; got question,answer"),
    ("missing.csv", "input\na\n", r"missing\.csv: line 1: expected the columns input,output; got input"),
    ("extra.csv", "input,output,note\na,b,c\n", r"extra\.csv: line 1: expected the columns"),
    ("empty.csv", "", r"empty\.csv: the file is empty"),
    ("blank.csv", "  \n\n", r"blank\.csv: the file is empty"),
    ("header.csv", "input,output\n", r"header\.csv: a header but no rows"),
    ("latin1.csv", "input,output\ncaf\xe9,x\n".encode("latin-1"),
     r"latin1\.csv: not UTF-8 text \(byte 0xe9 on line 2\)"),
    ("blankfield.csv", "input,output\na,b\nc,  \n", r"blankfield\.csv: line 3: blank 'output'"),
    ("blankinput.csv", "input,output\na,b\n,d\n", r"blankinput\.csv: line 3: blank 'input'"),
    ("ragged.csv", "input,output\na,b,c\n", r"ragged\.csv: line 2: expected 2 fields, got 3"),
    ("bad.json", '[{"input": "a", "output": "b"},\n {"input": "c" "output": "d"}]', r"bad\.json: line 2: invalid JSON"),
    ("empty.json", "", r"empty\.json: the file is empty"),
    ("emptylist.json", "[]", r"emptylist\.json: the list is empty"),
    ("dict.json", '{"input": "a", "output": "b"}', r"dict\.json: expected a JSON list"),
    ("keys.json", '[{"input": "a", "output": "b"},\n {"x": "c", "y": "d"}]',
     r"keys\.json: item 2 \(line 2\): expected the keys input,output; got x,y"),
    ("blank.json", '[{"input": "a", "output": "b"},\n\n {"input": "c", "output": " "}]',
     r"blank\.json: item 2 \(line 3\): blank 'output'"),
    ("null.json", '[{"input": "a", "output": null}]', r"null\.json: item 1 \(line 1\): 'output' must be a string"),
    ("nums.json", "[1, 2]", r"nums\.json: item 1 \(line 1\): expected an object"),
    ("task.txt", "input,output\na,b\n", r"task\.txt: unknown file type '\.txt'"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, r"deep\.json: nested too deeply"),  # was a RecursionError
    ("deepitem.json", '[{"input": "a", "output": ' + "[" * 50 + "]" * 50 + "}]",
     r"deepitem\.json: item 1 \(line 1\): 'output' must be a string"),
    ("many.json", json.dumps([{"input": str(i), "output": "x"} for i in range(50_001)]),
     r"many\.json: 50001 items; a task may hold at most 50000"),
    ("huge.csv", "input,output\n" + "a,b\n" * 1_400_000, r"huge\.csv: 5\.3 MB; task files may hold at most 5 MB"),
    ("bignum.json", '[{"input": 1' + "0" * 100_000 + ', "output": "x"}]',  # was a ValueError from int()
     r"bignum\.json: a number longer than 4300 digits"),
]


@pytest.mark.parametrize("name,content,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_malformed_files_get_one_line_errors(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(TaskError, match=message) as info:
        load_task_file(path)
    assert "\n" not in str(info.value)


def test_fewer_pairs_than_shots_plus_one(tmp_path):
    path = write(tmp_path, "few.csv", "input,output\na,1\nb,2\nc,3\n")
    with pytest.raises(TaskError, match=r"few\.csv: 3 pairs, but at least 5 are needed"):
        load_task_file(path, min_pairs=5)
    task = load_task_file(path)
    with pytest.raises(TaskError, match=r"few\.csv\) has 3 pairs; 4-shot prompts need at least 5"):
        task.sample_prompts(4, 1)


def test_missing_file(tmp_path):
    with pytest.raises(TaskError, match=r"nothere\.csv: no such file"):
        load_task_file(tmp_path / "nothere.csv")
    with pytest.raises(TaskError, match=f"task file {tmp_path}: a directory, not a .csv or .json file"):
        load_task_file(tmp_path)


def _json_task(items: int) -> bytes:
    return json.dumps([{"input": f"w{i}", "output": f"o{i}"} for i in range(items)], indent=1).encode()


def test_json_line_numbers_take_linear_time():
    """Parsing 4x the items takes about 4x the time (the old per-item line count from the file's start made it
    16x: 40 000 items took 16 s); timed as a ratio, best of three, never as a wall time."""
    from time import perf_counter

    from analysis.tasks.files import parse_task_bytes

    def seconds(data: bytes) -> float:
        best = float("inf")
        for _ in range(3):
            start = perf_counter()
            task = parse_task_bytes(data, "t.json")
            best = min(best, perf_counter() - start)
        assert task.pairs[-1][0].startswith("w")
        return best

    small, large = _json_task(4_000), _json_task(16_000)
    ratio = seconds(large) / seconds(small)
    assert ratio < 8, f"4x the items took {ratio:.1f}x the time"
    with pytest.raises(TaskError, match=r"item 16000 \(line 63998\): blank 'input'"):
        parse_task_bytes(large.replace(b'"w15999"', b'""'), "t.json")  # the line numbers stay right
