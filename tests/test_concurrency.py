"""One shared model, many sessions: every forward pass holds the model's lock (enforced), so a job's result is
the same, bit for bit, whatever other threads run on the same model at the same time.

- an unlocked forward raises (a forgotten path fails loudly), a locked one runs, a private deep copy runs freely;
- threads running every job kind at once on two shared models (a transformer and a Mamba) each get exactly what
  the same call gets alone;
- the same interleaving with the lock switched off (a lock that excludes no one) does leak a mask into another
  session's forward: the test above would have caught the bug;
- long jobs take the lock per batch or prompt: another session's forward runs between two of its batches.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.attention import attention_maps
from analysis.attribution import neuron_ig
from analysis.attribution.targets import prepare_inputs
from analysis.attribution.tokens import token_relevance
from analysis.evaluation import evaluate_task
from analysis.evaluation.calibration import evaluate_calibrated
from analysis.evaluation.faithfulness import faithfulness
from analysis.evaluation.general import passage_losses, shipped_passages
from analysis.evaluation.task_vectors import task_vectors
from analysis.models import hooks as model_hooks
from analysis.models import load_model
from analysis.models.hooks import UnlockedForwardError
from analysis.pruning import NeuronMask
from analysis.pruning.baselines import activation_magnitudes
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "the cat sat on the mat and the dog sat on the log"
TASK = builtin_tasks()["to-upper"]


@pytest.fixture(scope="module")
def transformer():
    return load_model("toy-transformer", device="cpu")


@pytest.fixture(scope="module")
def mamba():
    return load_model("toy-mamba", device="cpu")


def half_mask(loaded) -> NeuronMask:
    """Every other neuron of every layer: changes the toys' answers (checked where it matters)."""
    return NeuronMask.from_pairs((layer, i) for layer, width in enumerate(loaded.adapter.neuron_counts())
                                 for i in range(0, width, 2))


def comparable(value):
    """A value with tensors, frames and dataclasses turned into exact, comparable plain data."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous()
        return ("tensor", str(value.dtype), tuple(value.shape), value.view(torch.uint8).numpy().tobytes())
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, pd.DataFrame):
        return ("frame", tuple(value.columns), comparable(value.to_numpy(dtype=object).tolist()),
                comparable(dict(value.attrs)))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, comparable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}))
    if isinstance(value, dict):
        return tuple(sorted((repr(k), comparable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(comparable(v) for v in value)
    if isinstance(value, float):
        return ("float", np.float64(value).tobytes())
    return value


def jobs(transformer, mamba) -> dict[str, tuple]:
    """Every job kind a session can start: name -> (model, call)."""
    def ig(loaded):  # the confidence target runs a clean forward to pick its token
        return neuron_ig(loaded, prepare_inputs(loaded, TASK.sample_prompts(2, 2, seed=0), "confidence"), steps=4)

    return {
        "evaluation": (transformer, lambda m: evaluate_task(m, TASK, 2, 8, seed=1).records),
        "masked evaluation": (transformer, lambda m: evaluate_task(m, TASK, 2, 8, seed=1, mask=half_mask(m)).records),
        "calibrated evaluation": (transformer, lambda m: evaluate_calibrated(m, TASK, 2, 6, seed=1).records),
        "neuron IG": (transformer, ig),
        "task vectors": (transformer, lambda m: task_vectors(m, TASK, shots=2, n=4, dummy_queries=1).table),
        "softmax attention": (transformer, lambda m: attention_maps(m, TEXT).attn),
        "LRP relevance": (transformer, lambda m: token_relevance(m, TEXT, "lrp").scores),
        "IG relevance": (transformer, lambda m: token_relevance(m, TEXT, "ig", steps=8).scores),
        "faithfulness": (transformer, lambda m: faithfulness(m, TASK, ["gxi"], n=2, steps=4)),
        "general-text loss, masked": (transformer, lambda m: passage_losses(m, shipped_passages()[:3], half_mask(m))),
        "activation magnitudes": (transformer, lambda m: activation_magnitudes(m, TASK.sample_prompts(2, 3))),
        "Mamba masked evaluation": (mamba, lambda m: evaluate_task(m, TASK, 2, 6, seed=2, mask=half_mask(m)).records),
        "Mamba neuron IG": (mamba, ig),
        "implicit attention": (mamba, lambda m: attention_maps(m, TEXT).attn),
        "gradient-weighted relevance": (mamba, lambda m: token_relevance(m, TEXT, "gradattn").scores),
    }


def test_an_unlocked_forward_fails_loudly_and_a_locked_one_runs(transformer):
    ids = torch.tensor([transformer.tokenizer.encode(TEXT)])
    with pytest.raises(UnlockedForwardError, match="without holding the model's lock"):
        transformer.model(input_ids=ids)
    with pytest.raises(UnlockedForwardError):  # a submodule called directly, too
        transformer.adapter.block(0)(transformer.model.get_input_embeddings()(ids))
    with transformer.lock, torch.no_grad():
        locked = transformer.model(input_ids=ids).logits
    assert locked.shape[:2] == ids.shape
    # a thread that does not hold the lock is refused at once (not silently run through the holder's hooks)
    errors: list[BaseException] = []
    with transformer.lock:
        other = threading.Thread(target=lambda: _forward_catching(transformer, ids, errors))
        other.start()
        other.join(timeout=30)
    assert len(errors) == 1 and isinstance(errors[0], UnlockedForwardError)
    # the check lives in one process-wide hook: the model's own hook dicts stay empty
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in transformer.model.modules())


def _forward_catching(loaded, ids, errors: list) -> None:
    try:
        with torch.no_grad():
            loaded.model(input_ids=ids)
    except UnlockedForwardError as exc:
        errors.append(exc)


@contextmanager
def masked_sessions_running(loaded) -> Iterator[None]:
    """Meanwhile, another session's long masked forward passes: its mask's hooks are on 20 ms at a time."""
    mask, finished = half_mask(loaded), threading.Event()

    def hold() -> None:
        while not finished.is_set():
            with loaded.session(mask):
                time.sleep(0.02)
            time.sleep(0.002)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        yield
    finally:
        finished.set()
        holder.join(timeout=60)


def test_every_job_kind_at_once_equals_each_run_alone(transformer, mamba):
    kinds = jobs(transformer, mamba)
    alone = {name: comparable(call(model)) for name, (model, call) in kinds.items()}
    assert alone["evaluation"] != alone["masked evaluation"]  # a leaked mask would show
    results: dict[str, list] = {name: [] for name in kinds}
    errors: list[str] = []
    barrier = threading.Barrier(len(kinds))
    def session(name: str) -> None:
        model, call = kinds[name]
        barrier.wait()
        try:
            for _ in range(2):
                results[name].append(comparable(call(model)))
        except Exception as exc:  # noqa: BLE001 - reported below with the job's name
            errors.append(f"{name}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=session, args=(name,)) for name in kinds]
    with masked_sessions_running(transformer), masked_sessions_running(mamba):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
    assert not errors
    differing = [name for name in kinds if results[name] != [alone[name]] * 2]
    assert not differing, f"results changed by other threads' jobs: {differing}"


class NoExclusion:
    """A lock that excludes no one: what a model would have without its lock."""

    def acquire(self, *args, **kwargs) -> bool:
        return True

    def release(self) -> None:
        pass

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        pass

    def _is_owned(self) -> bool:
        return True


def _interleaved(loaded, mask: NeuronMask) -> list[str]:
    """Session A holds the model with its mask on while session B evaluates unmasked; B's answers."""
    entered, b_done = threading.Event(), threading.Event()
    answers: list[list[str]] = []

    def session_a() -> None:
        with loaded.session(mask):
            entered.set()
            b_done.wait(timeout=3)  # with the lock, B cannot run meanwhile: A leaves after 3 s

    def session_b() -> None:
        entered.wait(timeout=30)
        answers.append(evaluate_task(loaded, TASK, 2, 8, seed=1).records.prediction.tolist())
        b_done.set()

    threads = [threading.Thread(target=session_a), threading.Thread(target=session_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers[0]


def test_without_the_lock_another_sessions_mask_leaks_into_a_forward(transformer, monkeypatch):
    mask = half_mask(transformer)
    clean = evaluate_task(transformer, TASK, 2, 8, seed=1).records.prediction.tolist()
    masked = evaluate_task(transformer, TASK, 2, 8, seed=1, mask=mask).records.prediction.tolist()
    assert clean != masked
    assert _interleaved(transformer, mask) == clean  # the lock: B waits for A
    monkeypatch.setitem(model_hooks._LOCKS, transformer.model, NoExclusion())
    monkeypatch.setattr(transformer, "lock", model_hooks._LOCKS[transformer.model])
    assert _interleaved(transformer, mask) == masked  # no lock: B ran through A's mask hooks


@pytest.mark.parametrize("kind", ["evaluation", "neuron IG", "task vectors", "faithfulness"])
def test_a_long_job_lets_another_session_run_between_its_batches(transformer, kind):
    """A's progress report (after a batch or prompt) waits until B's forward has run: with the lock held for the
    whole job B could not run, and the wait would time out."""
    b_ran, reports = threading.Event(), []

    def progress(done: int, total: int) -> None:
        reports.append(done)
        if len(reports) == 1:
            b.start()
            reports.append(b_ran.wait(timeout=60))

    def other_session() -> None:
        with transformer.lock, torch.no_grad():
            transformer.model(input_ids=torch.tensor([transformer.tokenizer.encode(TEXT)]))
        b_ran.set()

    b = threading.Thread(target=other_session)
    prompts = TASK.sample_prompts(2, 3, seed=0)
    run = {"evaluation": lambda: evaluate_task(transformer, TASK, 2, 24, seed=1, batch_size=8, progress=progress),
           "neuron IG": lambda: neuron_ig(transformer, prepare_inputs(transformer, prompts, "gold"), steps=4,
                                          progress=progress),
           "task vectors": lambda: task_vectors(transformer, TASK, shots=2, n=4, dummy_queries=1, progress=progress),
           "faithfulness": lambda: faithfulness(transformer, TASK, ["gxi"], n=3, steps=4, progress=progress)}[kind]
    run()
    b.join(timeout=60)
    assert reports[1] is True, f"{kind}: another session could not run between two batches"


def test_a_forgotten_unlocked_path_fails_loudly_with_the_guard_and_leaks_without_it(transformer, monkeypatch):
    """A path that forgets the lock (a plain forward) while another session's mask is on: with the guard it
    raises every time; with the guard switched off it runs, and sees the other session's mask."""
    ids = torch.tensor([transformer.tokenizer.encode(TEXT)])

    def forgotten() -> object:
        with torch.no_grad():
            return comparable(transformer.adapter.base_model(input_ids=ids).last_hidden_state)

    with transformer.lock:
        alone = forgotten()
    outcomes: list[object] = []
    with masked_sessions_running(transformer):
        for _ in range(10):
            try:
                outcomes.append(forgotten())
            except UnlockedForwardError:
                outcomes.append("refused")
            time.sleep(0.005)
    assert outcomes == ["refused"] * 10
    monkeypatch.setattr(model_hooks, "_GUARDED", weakref.WeakKeyDictionary())  # the guard switched off
    with masked_sessions_running(transformer):
        leaked = []
        for _ in range(10):
            leaked.append(forgotten() != alone)
            time.sleep(0.005)
    assert any(leaked), "an unlocked forward never saw the other session's mask"
