"""AppTest of a hosted app: hostile links and uploads on every page (clamped, one line, bounded memory), public
mode, cost statements before big jobs, and the GPU placement picker."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from components.widgets import MODEL_KEY
from tests.app_helpers import MAIN, TIMEOUT, no_exception, open_app


def test_a_hostile_link_is_clamped_and_written_back_on_a_page_without_the_widget():
    """?n=1000000000000 once grew the pruning page's memory without bound; every numeric link value now
    meets its one range (analysis/bounds.py) on the first run, and the address bar says what was used."""
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.query_params.update({"page": "attention", "model": "toy-mamba", "n": "1000000000000", "shots": "-5",
                            "score_steps": "99999", "seed": "x" * 10_000, "k": "-1", "layers": "0-" + "9" * 5000})
    no_exception(at.run())
    settings = {name: at.session_state[f"setting_{name}"] for name in ("n", "shots", "score_steps", "seed", "k")}
    assert settings == {"n": 1000, "shots": 0, "score_steps": 256, "seed": 0, "k": 0}
    assert len(at.session_state["setting_layers"]) == 16  # texts are cut at their limit
    assert at.query_params["n"] in ("1000", ["1000"]) and "seed" not in at.query_params
    assert not at.error


def test_library_entry_points_refuse_out_of_range_settings(tiny_loaded):
    from analysis.errors import PrunescopeError
    from analysis.evaluation import evaluate_task
    from analysis.tasks import builtin_tasks

    loaded = tiny_loaded("llama")
    for kwargs, message in (({"n": 10**12}, "n must be an integer from 1 to 1000"),
                            ({"shots": 33}, "shots must be an integer from 0 to 32"),
                            ({"n": 2.5}, "n must be an integer")):
        with pytest.raises(PrunescopeError, match=message):
            evaluate_task(loaded, builtin_tasks()["antonyms"], **{"shots": 1, "n": 4, **kwargs})


def test_public_mode_offers_built_in_models_only_and_shows_no_server_path(monkeypatch, tmp_path):
    """PRUNESCOPE_PUBLIC=1: a link cannot make the server load a directory or a hub id, the picker has no
    free-text options, and the host's allow-list adds ids."""
    from analysis.models import model_choices, model_label
    from analysis.paths import PROJECT_ROOT

    directory = tmp_path / "evil-model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setenv("PRUNESCOPE_PUBLIC", "1")
    for spec in (str(directory), "HuggingFaceTB/SmolLM2-135M", "../../etc"):
        at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
        monkeypatch.setenv("PRUNESCOPE_MODEL", "toy-mamba")
        at.query_params.update({"page": "model", "model": spec})
        no_exception(at.run())
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and "is not offered on this demo" in errors[0], errors
        assert str(tmp_path) not in errors[0] and str(PROJECT_ROOT) not in errors[0]
        assert at.session_state[MODEL_KEY].name == "toy-mamba"  # the host's model, not the link's
        # no hub id, no directory: the built-in choices only
        assert at.selectbox(key="model_choice").options == [model_label(m) for m in model_choices()]
        assert str(PROJECT_ROOT) not in " ".join(c.value for c in at.caption)
    allowed = tmp_path / "allowed.txt"
    allowed.write_text("# a lab's demo\nsome-lab/tiny-model  # reviewed\n")
    monkeypatch.setenv("PRUNESCOPE_ALLOWED_MODELS", str(allowed))
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    no_exception(at.run())
    assert at.selectbox(key="model_choice").options[-1] == "some-lab/tiny-model"


def test_without_public_mode_the_picker_keeps_hub_ids_and_directories(monkeypatch):
    from components.widgets import HUB_OPTION, LOCAL_OPTION

    monkeypatch.delenv("PRUNESCOPE_PUBLIC", raising=False)
    at = open_app("toy-mamba", monkeypatch)
    assert at.selectbox(key="model_choice").options[-2:] == [HUB_OPTION, LOCAL_OPTION]


def test_messages_lose_server_folders_in_public_mode(monkeypatch):
    from analysis.hosting import scrub
    from analysis.paths import PROJECT_ROOT, cache_dir

    text = f"no such file {PROJECT_ROOT}/assets/x and {cache_dir()}/results/y"
    assert scrub(text) == text  # on your own machine paths stay
    monkeypatch.setenv("PRUNESCOPE_PUBLIC", "1")
    assert scrub(text) == "no such file …/assets/x and …/results/y"


def test_a_big_uncached_evaluation_says_its_cost_and_waits_for_a_click(monkeypatch):
    at = open_app("toy-transformer", monkeypatch, "views/pruning.py", n=300)
    (gate,) = [i.value for i in at.info if i.value.startswith("This runs")]
    assert gate.startswith("This runs 1,200 prompts that are not cached")  # 4 default tasks x 300
    assert not at.metric and at.button(key="prune_approve").label == "Run 1,200 prompts"


HOSTILE = ["", "-1", "0", "1e12", "99999999999999999999", "nan", "<script>alert(1)</script>", "javascript:alert(1)",
           "../../../etc/passwd", "/tmp", "' OR 1=1 --", "\u202e\u0000", "𝕏" * 300, "9" * 5000, "a:1 b:2 | a:",
           "0.1,1.2", "1.7,abc", "0-99999", "toy-mamba", "softmax", "channels:999999", "Upload CSV/JSON…"]
PAGES = ["model", "evaluate", "attribution", "pruning", "attention", "task-vectors", "compare"]


@pytest.mark.parametrize("page", PAGES)
def test_fuzzed_links_never_crash_a_page(page, monkeypatch):
    """A random hostile value in a random query parameter of every page, in public mode: no exception box, at
    most one error line (never a traceback), and the server's peak memory stays bounded."""
    import random
    import resource

    from components.state import DEFAULTS

    rng = random.Random(f"fuzz|{page}")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    monkeypatch.setenv("PRUNESCOPE_PUBLIC", "1")
    for _trial in range(6):
        name, value = rng.choice([*DEFAULTS, "model", "present", "page", "unknown"]), rng.choice(HOSTILE)
        at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
        monkeypatch.setenv("PRUNESCOPE_MODEL", rng.choice(["toy-mamba", "toy-transformer"]))
        at.query_params.update({"page": page, name: value} if name != "page" else {"page": value})
        at.run()
        assert not at.exception, (name, value[:40], [e.value for e in at.exception])
        errors = [e.value for e in at.error]
        assert len(errors) <= 1 and all("\n" not in e and "Traceback" not in e for e in errors), (name, errors)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown < 1.5 * 2**20, f"peak memory grew {grown / 2**20:.1f} GiB"


HOSTILE_FILES = [("deep.json", b"[" * 200_000 + b"]" * 200_000), ("garbage.csv", bytes(range(256)) * 40),
                 ("empty.json", b""), ("big.csv", b"input,output\n" + b"a,b\n" * 1_500_000),
                 ("script.json", b'[{"input": "<script>alert(1)</script>", "output": "x"}]'),
                 ("bignum.json", b'[{"input": 1' + b"0" * 100_000 + b', "output": "x"}]')]  # int() refuses it


@pytest.mark.parametrize("name,data", HOSTILE_FILES, ids=[f[0] for f in HOSTILE_FILES])
def test_hostile_uploads_give_one_line(name, data, monkeypatch):
    """Task and mask uploads: a deeply nested JSON once showed Streamlit's exception box with server paths."""
    from components.widgets import UPLOAD_OPTION

    at = open_app("toy-transformer", monkeypatch, "views/evaluate.py")
    at.selectbox(key="_w_task").set_value(UPLOAD_OPTION).run()
    at.file_uploader(key="task_upload").set_value((name, data, "text/plain"))
    no_exception(at.run())
    assert len(at.error) <= 1 and all(e.value.startswith(f"task file {name}: ") for e in at.error)
    no_exception(at.switch_page("views/pruning.py").run())
    mask_name = name.rsplit(".", 1)[0] + ".json"  # the uploader (and the browser) take .json only
    at.file_uploader(key="mask_upload").set_value((mask_name, data, "application/json"))
    no_exception(at.run())
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith(f"mask file {mask_name}: "), errors


def test_a_job_measured_slow_says_its_cost_before_it_runs(monkeypatch):
    """Once this model's speed is known on this machine, a job expected to run over half a minute says how
    long before its button; a finished job records its speed."""
    from analysis.models import load_model
    from components import widgets

    fingerprint = load_model("toy-transformer", device="cpu").fingerprint()
    monkeypatch.setattr(widgets, "_SECONDS_PER_UNIT", {(fingerprint, "eval"): 0.5})
    at = open_app("toy-transformer", monkeypatch, "views/evaluate.py", n=200)
    assert any("200 prompts: about 2 min on this machine" in c.value for c in at.caption)
    at.number_input(key="_w_n").set_value(20).run()
    assert not any("on this machine" in c.value for c in at.caption)  # 10 s: not worth a line
    monkeypatch.setattr(widgets, "_SECONDS_PER_UNIT", {})
    widgets.measured_speed(load_model("toy-transformer", device="cpu"), 40, 20.0)
    assert widgets.cost(load_model("toy-transformer", device="cpu"), 120) == "about 60 s"


def test_with_several_gpus_the_sidebar_spreads_layers_with_a_device_map(monkeypatch):
    """The placement picker shows only with two GPUs or more (simulated: on this CPU, accelerate's 'auto' map
    puts everything on the CPU) and never in public mode; the model then loads through accelerate."""
    import torch

    from components import widgets

    at = open_app("toy-mamba", monkeypatch)
    assert not [s for s in at.selectbox if s.key == "model_placement"]  # one device (or none): no picker
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    no_exception(at.run())
    calls = []
    real = widgets.load_model
    monkeypatch.setattr(widgets, "load_model", lambda *a, **k: calls.append(k) or real(*a, **k))
    at.selectbox(key="model_placement").set_value("balanced")
    no_exception(at.run())
    assert calls and calls[-1]["device_map"] == "balanced"  # through accelerate's big-model loading
    assert at.session_state[MODEL_KEY].name == "toy-mamba"
    monkeypatch.setenv("PRUNESCOPE_PUBLIC", "1")
    no_exception(at.run())
    assert not [s for s in at.selectbox if s.key == "model_placement"]


LINK_MASK_ERROR = "mask in the link: {} is not a layer.index pair (two whole numbers of at most 9 digits, e.g. 3.17)"


@pytest.mark.parametrize("mask,shown", [("1.\u00b2", "'1.\u00b2'"), ("1." + "9" * 5000, "'1." + "9" * 38 + "…'")],
                         ids=["superscript", "5000-digits"])
def test_a_bad_link_mask_is_one_line_and_the_page_stays(mask, shown, monkeypatch):
    """mask=1.² once raised a ValueError past the Compare page's guard ("the Compare page failed"), losing the
    page; now one line where a mask choice needs it, the controls drawn and Compare disabled."""
    monkeypatch.setenv("PRUNESCOPE_MODEL", "toy-transformer")
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.query_params.update({"page": "compare", "mask": mask})
    no_exception(at.run())
    assert [e.value for e in at.error] == [LINK_MASK_ERROR.format(shown)]
    assert at.radio(key="cmp_mode").value == "two masks" and at.selectbox(key="cmp_mask_B").value == "active mask"
    assert at.button(key="cmp_run").disabled
    at.radio(key="cmp_mode").set_value("two models")
    no_exception(at.run())  # the link's mask plays no part in comparing two models
    assert not at.error and not at.button(key="cmp_run").disabled
    pruning = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    pruning.query_params.update({"page": "pruning", "mask": mask})
    no_exception(pruning.run())
    assert [e.value for e in pruning.error] == [LINK_MASK_ERROR.format(shown)]
    assert any("No mask is active" in c.value for c in pruning.caption)
