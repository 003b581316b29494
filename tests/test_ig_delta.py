"""Neuron IG's completeness error ``NeuronIGResult.delta``: the fast path's equals an independent computation
(plain full forwards with the site zeroed), fast and reference agree, it shrinks as the quadrature refines, it
survives the results cache (and entries written before it decode with None), and the page summarises it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from analysis import codec
from analysis.attribution import neuron_ig, prepare_inputs, site_scaled_target
from analysis.attribution.neuron_ig import COMPLETENESS_WARN, NeuronIGResult, completeness_summary
from analysis.cache import MAGIC, ResultsCache
from analysis.paths import PRECOMPUTED_DIR
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


def prompts(n=2, shots=3):
    return builtin_tasks()["vowel-count"].sample_prompts(shots, n, seed=0)


def independent_delta(loaded, items, per_prompt):
    """sum_i IG - (F(a) - F(site zeroed)), F from plain full forwards (site_scaled_target at alpha 1 and 0)."""
    rows = []
    with torch.no_grad():
        for p, item in enumerate(items):
            f_clean = float(site_scaled_target(loaded, item, 0, torch.tensor(1.0)))
            rows.append([float(per_prompt[p, layer].double().sum()) - (f_clean - float(
                site_scaled_target(loaded, item, layer, torch.tensor(0.0)))) for layer in range(loaded.n_layers)])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt", "mamba", "rwkv", "recurrent_gemma"])
def test_fast_delta_equals_an_independent_computation_and_the_reference(tiny_loaded, model_type):
    """5 Riemann steps with max_rows=5: one layer per gradient pass (RWKV: every row from layer 0)."""
    loaded = tiny_loaded(model_type)
    items = prepare_inputs(loaded, prompts(), "gold")
    fast = neuron_ig(loaded, items, steps=5, quadrature="riemann", max_rows=5)
    ref = neuron_ig(loaded, items, steps=5, quadrature="riemann", method="reference")
    expected = independent_delta(loaded, items, fast.per_prompt)
    assert fast.delta.dtype == torch.float32 and fast.delta.shape == (2, loaded.n_layers)
    assert expected.abs().max() > 1e-3  # 5 Riemann steps leave a real error to match
    torch.testing.assert_close(fast.delta.double(), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.delta, ref.delta, rtol=0, atol=1e-4)
    torch.testing.assert_close(ref.delta.double(), independent_delta(loaded, items, ref.per_prompt), rtol=0,
                               atol=1e-5)


def test_alpha_zero_rows_skip_the_backward_and_rows_join_at_their_own_layer(tiny_loaded, monkeypatch):
    """4 Riemann steps: the clean pass runs the clean row and one alpha = 0 row per layer without gradients;
    the gradient pass carries exactly 4 rows per layer, each joining at its own layer; with max_rows=8, two
    layers per gradient pass."""
    loaded = tiny_loaded("llama")
    adapter = loaded.adapter
    seen, original = [], type(adapter).continue_joined

    def spy(self, prefix, ids, joins, *args, **kwargs):
        seen.append((dict(joins), torch.is_grad_enabled()))
        return original(self, prefix, ids, joins, *args, **kwargs)

    monkeypatch.setattr(type(adapter), "continue_joined", spy)
    items = prepare_inputs(loaded, prompts(1), "gold")
    neuron_ig(loaded, items, steps=4, quadrature="riemann")
    assert seen == [({0: 1, 1: 1}, False), ({0: 4, 1: 4}, True)]
    seen.clear()
    neuron_ig(loaded, items, steps=4, quadrature="riemann", max_rows=4)
    assert seen == [({0: 1, 1: 1}, False), ({0: 4}, True), ({1: 4}, True)]


def test_riemann_delta_shrinks_as_one_over_steps(tiny_loaded):
    """The right Riemann sum's error is first order: on the tiny Llama the median |delta| goes 0.088, 0.023,
    0.0057 at 4, 16, 64 steps (x4 steps, /4 error); Gauss-Legendre at 16 steps is far below Riemann at 64."""
    loaded = tiny_loaded("llama")
    items = prepare_inputs(loaded, prompts(), "gold")
    errors = [float(neuron_ig(loaded, items, steps=s, quadrature="riemann").delta.abs().median()) for s in (4, 16, 64)]
    assert errors[0] == pytest.approx(0.088, rel=0.05)
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5
    gauss = float(neuron_ig(loaded, items, steps=16, quadrature="gauss-legendre").delta.abs().median())
    assert gauss < 1e-3 * errors[2]


def test_completeness_summary_by_hand():
    """F(a) - F(0) = [[1, 2], [1, 4]] and delta = [[0.1, 0], [-0.3, 0.4]]: relative errors 0.1, 0, 0.3, 0.1
    (median 0.1, the lower middle); per layer 0.4 / 2 = 0.2 and 0.4 / 6, so layer 0 is the worst."""
    delta = torch.tensor([[0.1, 0.0], [-0.3, 0.4]])
    gap = torch.tensor([[1.0, 2.0], [1.0, 4.0]])
    result = NeuronIGResult((gap + delta)[..., None], [], "gold", 4, "riemann", torch.zeros(2), delta=delta)
    summary = completeness_summary(result)
    assert summary["median"] == pytest.approx(0.1, abs=1e-6) and summary["worst_layer"] == 0
    assert summary["worst"] == pytest.approx(0.2, abs=1e-6)
    assert completeness_summary(NeuronIGResult(result.per_prompt, [], "gold", 4, "riemann", torch.zeros(2))) is None


def _document(blob: bytes) -> dict:
    size = int.from_bytes(blob[:8], "little")
    return json.loads(json.loads(blob[8:8 + size])["__metadata__"][codec.META_KEY])


def test_delta_round_trips_and_an_entry_without_it_decodes_with_none(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    result = neuron_ig(loaded, prepare_inputs(loaded, prompts(), "copy"), steps=3)
    blob = codec.dumps(result)
    back = codec.loads(blob)
    assert torch.equal(back.delta, result.delta) and torch.equal(back.per_prompt, result.per_prompt)
    document = _document(blob)
    assert document["__dataclass__"] == "NeuronIGResult"
    del document["fields"]["delta"]  # as written before the field existed
    old = codec.loads(save_tensors(load_tensors(blob), metadata={codec.META_KEY: json.dumps(document)}))
    assert old.delta is None and torch.equal(old.per_prompt, result.per_prompt) and old.inputs == result.inputs


def test_a_shipped_neuron_ig_entry_decodes(tmp_path):
    """The shipped entries were written before delta existed: one decodes, with delta None exactly when its
    document lacks the field (and the right shape when a later precompute wrote it)."""
    path = min((PRECOMPUTED_DIR / "neuron-ig").glob("*.safetensors"), key=lambda p: p.stat().st_size)
    payload = path.read_bytes()[len(MAGIC) + 32:]
    result = ResultsCache(tmp_path, fallbacks=(PRECOMPUTED_DIR,)).get("neuron-ig", path.stem)
    assert isinstance(result, NeuronIGResult) and result.per_prompt.ndim == 3
    if "delta" in _document(payload)["fields"]:
        assert result.delta.shape == result.per_prompt.shape[:2]
    else:
        assert result.delta is None and completeness_summary(result) is None


def test_attribution_page_summarises_the_error(tmp_path_factory, monkeypatch):
    """Riemann at 1 step on the tiny Llama is off by more than the threshold: a warning that names the median
    and the worst layer; Gauss-Legendre at 16 steps is complete to ~1e-6: a caption, no warning."""
    from streamlit.testing.v1 import AppTest

    from analysis.models.tiny import build_tiny_model

    monkeypatch.setenv("PRUNESCOPE_MODEL", str(build_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "m")))
    main = Path(__file__).resolve().parents[1] / "app" / "main.py"
    app = AppTest.from_file(str(main), default_timeout=60).run()
    app.switch_page("views/attribution.py").run()
    app.selectbox(key="_w_task").set_value("vowel-count")
    app.number_input(key="ig_n").set_value(2)
    app.number_input(key="ig_steps").set_value(1)
    app.selectbox(key="ig_rule").set_value("riemann")  # the default (adaptive) is complete at any steps
    app.button(key="ig_run").click().run()
    assert not app.exception, [e.value for e in app.exception]
    summary = completeness_summary(app.session_state["ig_result"]["value"]["result"])
    assert summary["median"] > COMPLETENESS_WARN
    (warning,) = [w.value for w in app.warning if "Completeness error" in w.value]
    assert f"median {summary['median']:.1%}" in warning and f"worst layer {summary['worst_layer']} " in warning
    app.number_input(key="ig_steps").set_value(16)
    app.selectbox(key="ig_rule").set_value("gauss-legendre")
    app.button(key="ig_run").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert not [w for w in app.warning if "Completeness error" in w.value]
    assert any(c.value.startswith("Completeness error") and "median 0.0%" in c.value for c in app.caption)
