"""Reusable Streamlit widgets: model picker, task picker, progress adapter.

The picked model is kept in ``st.session_state[MODEL_KEY]`` (``None`` when loading failed) so pages read
it with :func:`current_model`. Models are cached process-wide by (spec, device, dtype); they may be shared
between sessions, and the library runs hooked forwards under the model's lock.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st
import torch

from analysis.device import DTYPES, dtype_name, resolve_device, resolve_dtype
from analysis.errors import PrunescopeError
from analysis.hosting import check_offered, offered_models, public_mode, scrub
from analysis.jobs import duration
from analysis.models import LoadedModel, load_model, model_choices, model_label
from analysis.tasks import Task, builtin_tasks, parse_task_bytes
from components import settings, state
from components.charts import visible_token
from components.markup import echo, plain

LOG = logging.getLogger("prunescope")
T = TypeVar("T")
MODEL_ENV = "PRUNESCOPE_MODEL"
MODEL_KEY = "loaded_model"
SPEC_KEY = "model_spec"  # the spec typed or picked (for deep links), even when loading failed
HUB_OPTION = "Hugging Face id…"
LOCAL_OPTION = "Local directory…"
UPLOAD_OPTION = state.UPLOAD_TASK
DTYPE_OPTIONS = ["auto", *DTYPES]
UPLOADED_KEY = "uploaded_task"
MIN_UPLOAD_PAIRS = 2  # a 1-shot prompt needs two pairs


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), without the
    server's folders in public mode, as plain text for ``st.error``: at most 300 characters, and a visitor's
    Markdown or HTML in it (a file name, a CSV header, a link's value) shows as typed (components/markup.py)."""
    text = str(exc).strip()
    return plain(scrub(text.splitlines()[0] if text else type(exc).__name__))


@st.cache_resource(show_spinner="Loading model…", max_entries=None)
def _resident_model(spec: str, device: str, dtype: str) -> LoadedModel:
    """The built-in choices on the default device and dtype: loaded once per process and never evicted, so a
    visitor who opens a toy or another model cannot unload the demo's models for everyone."""
    return load_model(spec, device=device, dtype=dtype)


@st.cache_resource(show_spinner="Loading model…", max_entries=2)
def _evictable_model(spec: str, device: str, dtype: str, device_map: str | None = None) -> LoadedModel:
    """Any other model (a hub id, a directory, another device, dtype or placement): at most two at a time."""
    return load_model(spec, device=device, dtype=dtype, device_map=device_map)


def cached_model(spec: str, device: str, dtype: str, device_map: str | None = None) -> LoadedModel:
    """Load once per (spec, device, dtype, placement) per process; failures are not cached. In public mode
    only the offered models load."""
    check_offered(spec)
    if device_map is not None:
        return _evictable_model(spec, device, dtype, device_map)
    resident = spec in model_choices() and (device, dtype) == ("auto", "auto")
    return (_resident_model if resident else _evictable_model)(spec, device, dtype)


PLACEMENTS = ("one device", "auto", "balanced", "sequential")


def placement_picker() -> str | None:
    """With several GPUs (and not in public mode): spread the model's layers over them with accelerate's
    device map (a model larger than one GPU); None keeps the model on one device."""
    if public_mode() or torch.cuda.device_count() < 2:
        return None
    choice = st.selectbox("Layers across GPUs", PLACEMENTS, key="model_placement",
                          help=f"{torch.cuda.device_count()} GPUs: 'auto' and 'balanced' spread the layers over "
                               "them (and the CPU if they are full), 'sequential' fills them in order")
    return None if choice == PLACEMENTS[0] else choice


def device_options() -> list[str]:
    return ["auto", "cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _initial_model(env_spec: str) -> tuple[str, str]:
    """(selectbox option, text-input default) for the spec in $PRUNESCOPE_MODEL ('' = none)."""
    if not env_spec or env_spec in model_choices():
        return env_spec or "default", ""
    if Path(env_spec).expanduser().is_dir() or env_spec.startswith((".", "/", "~")):
        return LOCAL_OPTION, env_spec
    return HUB_OPTION, env_spec


LINK_MODEL_ERROR = "_link_model_error"


def apply_model_spec(spec: str) -> None:
    """Preset the picker to ``spec`` (a deep link's model), before the picker is drawn; in public mode a model
    that is not offered is refused with one line (shown by the picker) and the picker keeps its default."""
    try:
        check_offered(spec.strip())
    except PrunescopeError as exc:
        st.session_state[LINK_MODEL_ERROR] = f"the link's model: {one_line(exc)}"
        return
    option, text = _initial_model(spec.strip())
    if public_mode():
        option = spec.strip()  # an offered model: the picker lists it by name
    st.session_state["model_choice"] = option
    if option == HUB_OPTION:
        st.session_state["model_hub_id"] = text
    elif option == LOCAL_OPTION:
        st.session_state["model_local_dir"] = text


def _pick_spec() -> str | None:
    """The model spec chosen in the picker, or None while a free-text field is empty."""
    initial, text_default = _initial_model(os.environ.get(MODEL_ENV, "").strip())
    # public mode: the offered models only (no free-text hub id or directory)
    options = offered_models() if public_mode() else [*model_choices(), HUB_OPTION, LOCAL_OPTION]
    if public_mode():
        env_spec = os.environ.get(MODEL_ENV, "").strip()
        initial = env_spec if env_spec in options else options[0]
    if st.session_state.get("model_choice") not in (None, *options):
        st.session_state["model_choice"] = initial  # e.g. a deep link naming a toy this install lacks
    if "model_choice" not in st.session_state:
        st.session_state["model_choice"] = initial
    choice = st.selectbox("Model", options, key="model_choice", format_func=model_label,
                          help="Two real models (SmolLM2-135M-Instruct and the Gemma 3 270M base model) and toy "
                               "checkpoints (toy-*)" + (" offered by this demo." if public_mode() else
                                                        ", a Hugging Face id or a local directory."))
    default = text_default if choice == initial else ""
    text_key = {HUB_OPTION: "model_hub_id", LOCAL_OPTION: "model_local_dir"}.get(choice)
    if text_key and text_key not in st.session_state:
        st.session_state[text_key] = default
    if choice == HUB_OPTION:
        spec = st.text_input("Hugging Face id", key="model_hub_id", placeholder="HuggingFaceTB/SmolLM2-135M")
    elif choice == LOCAL_OPTION:
        spec = st.text_input("Local directory", key="model_local_dir", placeholder="/path/to/hf-model-dir")
    else:
        return choice
    return spec.strip() or None


def model_picker() -> LoadedModel | None:
    """Sidebar-style model, device and dtype pickers; loads (cached) and returns the model or None.

    Load errors are shown with ``st.error`` in one line; the result is also stored for :func:`current_model`.
    """
    st.session_state[MODEL_KEY] = None
    if st.session_state.get(LINK_MODEL_ERROR):  # once, on the run that opened the link
        st.error(st.session_state.pop(LINK_MODEL_ERROR))
    spec = _pick_spec()
    st.session_state[SPEC_KEY] = spec
    col_device, col_dtype = st.columns(2)
    device = col_device.selectbox("Device", device_options(), key="model_device")
    dtype = col_dtype.selectbox("Dtype", DTYPE_OPTIONS, key="model_dtype")
    placement = placement_picker()
    try:
        resolved = resolve_device(device)
        st.caption(f"Resolved: {resolved.type} · {dtype_name(resolve_dtype(dtype, resolved))}")
        if spec is None:
            st.info("Enter a model to load.")
            return None
        loaded = cached_model(spec, device, dtype, placement)
    except PrunescopeError as exc:
        st.error(one_line(exc))
        return None
    except Exception as exc:  # noqa: BLE001 - any load failure must leave the app usable
        st.error(f"could not load model {echo(scrub(spec or ''), 80)}: {type(exc).__name__}: {one_line(exc)}")
        return None
    st.success(loaded.describe())
    st.session_state[MODEL_KEY] = loaded
    return loaded


def current_model() -> LoadedModel | None:
    """The model picked in this run (``None`` if none loaded)."""
    return st.session_state.get(MODEL_KEY)


def require_model(purpose: str = "") -> LoadedModel:
    """The picked model; without one, an info line and the page stops here (the sidebar shows why)."""
    loaded = current_model()
    if loaded is None:
        st.info(f"Pick a working model in the sidebar{purpose}.")
        st.stop()
    return loaded


def parse_upload(data: bytes, filename: str) -> Task:
    """Turn uploaded task-file bytes into a Task (raises TaskError with a one-line reason)."""
    return parse_task_bytes(data, filename, name=state.safe_file_name(filename), min_pairs=MIN_UPLOAD_PAIRS,
                            source=f"upload {filename}")


def task_picker() -> Task | None:
    """The shared task setting: a built-in task, or an uploaded CSV (``input,output``) / JSON list; None until a
    valid task. The same picker on every page edits the same setting."""
    tasks = builtin_tasks()
    options = [*tasks, UPLOAD_OPTION]
    if state.get("task") not in options:
        state.put("task", settings.default("task"))
    choice = state.bound(st.selectbox, "Task", "task", options=options,
                         format_func=lambda n: n if n == UPLOAD_OPTION else f"{n} — {tasks[n].description}")
    if choice != UPLOAD_OPTION:
        task = tasks[choice]
        st.caption(f"{len(task.pairs)} pairs · {task.kind} · e.g. {task.pairs[0][0]} → {task.pairs[0][1]}")
        return task
    uploaded = st.file_uploader("Task file", type=["csv", "json"], key="task_upload",
                                help='CSV with columns input,output or JSON [{"input": ..., "output": ...}]')
    if uploaded is None:
        previous = st.session_state.get(UPLOADED_KEY)
        if previous is not None:
            st.caption(f"{echo(previous.name)}: {len(previous.pairs)} pairs (uploaded earlier)")
            return previous
        named = state.safe_file_name(str(state.get("upload")))
        if named:  # a link made with an uploaded task: the file stayed with whoever uploaded it
            st.warning(f"This link was made with an uploaded task file, {echo(named, 60)}, which this session does not "
                       "have: upload it again to see the same results.", icon=":material/upload_file:")
        else:
            st.info("Upload a CSV with columns input,output or a JSON list of {input, output} objects.")
        return None
    try:  # parsed once per file content and name, not on every rerun
        data = uploaded.getvalue()
        task = memo(("task-upload", hashlib.sha256(data).hexdigest(), uploaded.name),
                    lambda: parse_upload(data, uploaded.name))
    except PrunescopeError as exc:
        st.error(one_line(exc))
        return None
    st.session_state[UPLOADED_KEY] = task
    state.put("upload", state.safe_file_name(uploaded.name))
    st.caption(f"{echo(task.name)}: {len(task.pairs)} pairs from {echo(uploaded.name, 60)}")
    return task


CANCELLED_KEY = "cancelled_job"


def progress_row(label: str, key: str, on_cancel: Callable[..., None], args: tuple = ()) -> Any:
    """A progress bar with its Cancel button beside it (whole at any page width); returns the bar."""
    with st.container(horizontal=True, vertical_alignment="bottom", wrap=False):
        bar = st.progress(0.0, text=f"{label}…")
        st.button("Cancel", key=key, icon=":material/stop_circle:", on_click=on_cancel, args=args)
    return bar


@contextmanager
def run_progress(label: str = "Evaluating", unit: str = "steps",
                 speed: tuple[LoadedModel, str, int] | None = None) -> Iterator[Callable[[int, int], None]]:
    """A progress bar with a Cancel button for the block; yields a ``progress(done, total)`` callback.

    Cancel reruns the script, which stops the running job at its next progress update (Streamlit interrupts
    a run when a new one is requested); the next run says so once (:func:`show_cancelled`). Finished results
    are in the on-disk cache; a cancelled job leaves nothing half-written. ``speed`` = (model, kind, units of
    work): a job that computed records its speed for :func:`cost_note`."""
    box = st.empty()
    with box.container():
        bar = progress_row(label, f"cancel_{label}", lambda: st.session_state.__setitem__(CANCELLED_KEY, label))

    started = time.monotonic()

    def update(done: int, total: int) -> None:
        bar.progress(min(done / total, 1.0) if total else 1.0, text=f"{label}: {done}/{total} {unit}")

    try:
        yield update
        elapsed = time.monotonic() - started
        if speed is not None and elapsed > 1.0:  # a job that computed (a cache hit returns at once)
            loaded, kind, units = speed
            measured_speed(loaded, units, elapsed, kind)
    finally:
        box.empty()


MEMO_KEY = "_memo"
MEMO_SIZE = 32


def memo(key: tuple, compute: Callable[[], T]) -> T:
    """A per-session memo of results that reruns caused by other widgets should not recompute or re-read from
    disk (attention maps, token relevance, cached scores); ``key`` must name everything the result depends on.
    ``None`` ("nothing yet") is not kept, so a later call looks again."""
    store: dict = st.session_state.setdefault(MEMO_KEY, {})
    if key not in store:
        value = compute()
        if value is None:
            return value
        store[key] = value
        while len(store) > MEMO_SIZE:
            store.pop(next(iter(store)))
    return store[key]


def show_cancelled() -> None:
    """Say once, after a Cancel click, which job was stopped."""
    cancelled = st.session_state.pop(CANCELLED_KEY, None)
    if cancelled:
        st.warning(f"Cancelled: {cancelled}", icon=":material/stop_circle:")


@contextmanager
def guarded(what: str) -> Iterator[None]:
    """Run a block; any failure becomes one ``st.error`` line naming ``what`` and the page goes on (results
    already in session state stay). Streamlit's own stop/rerun signals pass through (BaseException)."""
    try:
        yield
    except PrunescopeError as exc:
        st.error(one_line(exc))
    except (MemoryError, torch.OutOfMemoryError) as exc:
        st.error(f"out of memory while computing the {what}: use fewer prompts, a shorter text or a smaller "
                 f"model ({type(exc).__name__})")
    except Exception as exc:  # noqa: BLE001 - a failed computation must not take the page down
        LOG.exception("%s failed", what)  # the traceback stays in the server's log
        st.error(f"{what} failed: {type(exc).__name__}: {one_line(exc)}")


def token_chips(tokens: list[str], ids: list[int]) -> str:
    """HTML of a token sequence as chips (visible spaces and newlines, the id on hover)."""
    chips = []
    for position, (token, token_id) in enumerate(zip(tokens, ids)):
        shown = html.escape(visible_token(token))
        chips.append(f'<span title="position {position}, id {token_id}" style="display:inline-block;'
                     'margin:2px;padding:1px 5px;border:1px solid #d4d4d8;border-radius:4px;'
                     f'font-family:monospace;background:#fafafa">{shown}</span>')
    return "<div>" + "".join(chips) + "</div>"


# (model fingerprint, kind) -> measured seconds per unit of work on this machine, process-wide; kinds: "eval"
# (one generated answer), "ig" (one prompt-step of neuron IG), "faith" (one prompt and method of the faithfulness test)
_SECONDS_PER_UNIT: dict[tuple[str, str], float] = {}
COST_NOTE_S = 30  # a job expected to take longer says so before it runs


def measured_speed(loaded: LoadedModel, units: int, seconds: float, kind: str = "eval") -> None:
    """Remember how fast this model did ``units`` of ``kind`` work, for :func:`cost`."""
    if units > 0 and seconds > 0:
        _SECONDS_PER_UNIT[(loaded.fingerprint(), kind)] = seconds / units


def seconds_per_unit(loaded: LoadedModel, kind: str = "eval") -> float | None:
    """This model's measured seconds per unit of ``kind`` work on this machine (None until measured)."""
    return _SECONDS_PER_UNIT.get((loaded.fingerprint(), kind))


def cost(loaded: LoadedModel, units: int, kind: str = "eval") -> str:
    """What ``units`` of ``kind`` work will take, from this model's measured speed on this machine."""
    rate = seconds_per_unit(loaded, kind)
    return "its time on this machine is not measured yet" if rate is None else duration(rate * units)


def cost_note(loaded: LoadedModel, units: int, kind: str, what: str) -> None:
    """A caption before a job's button, when this model's measured speed says it takes over half a minute."""
    rate = _SECONDS_PER_UNIT.get((loaded.fingerprint(), kind))
    if rate is not None and rate * units >= COST_NOTE_S:
        st.caption(f":material/hourglass_top: {what}: {cost(loaded, units, kind)} on this machine (unless cached)")
