"""Neuron IG on a model whose layers differ in width: a tiny Jamba with a dense MLP of 16 channels in layer 0 and
4 experts x 16 channels in layer 1 (real Jamba alternates them). The result is padded to the widest layer with
NaN (analysis/attribution/ragged.py); the fast path equals the reference and captum layer by layer, IG is
complete where no router sits above, and no selection (top_k, select_top_k, copying scores, stability,
magnitude masks, the heatmap, the neuron view) ever names one of layer 0's missing neurons 16-63."""

from __future__ import annotations

import math

import pytest
import torch

from analysis.attribution import neuron_ig, prepare_inputs
from analysis.attribution.neuron_view import parse_neuron
from analysis.attribution.summary import top_neurons
from analysis.codec import dumps, loads
from analysis.errors import PrunescopeError
from analysis.models import load_model
from analysis.models.tiny import build_tiny_model
from analysis.pruning.baselines import activation_magnitudes
from analysis.pruning.copying import CopyingScores, normalized_copy_scores, select_top_k
from analysis.pruning.stability import mask_stability
from analysis.tasks import builtin_tasks
from components.charts import layer_totals_bar, neuron_heatmap
from components.neuron_view import rank_of
from tests.test_neuron_ig import captum_layer_ig, copying_prompts, rel_err

WIDTHS = [16, 64]
REAL = sum(WIDTHS)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ragged(tmp_path_factory):
    path = build_tiny_model("jamba", tmp_path_factory.mktemp("ragged") / "jamba", expert_layer_period=2,
                            expert_layer_offset=1)
    loaded = load_model(str(path), device="cpu")
    assert loaded.adapter.neuron_counts() == WIDTHS and loaded.adapter.site_kinds() == ["mlp", "moe"]
    return loaded


@pytest.fixture(scope="module")
def result(ragged):
    """Adaptive fast-path IG (the default) of the copy target on two prompts."""
    return neuron_ig(ragged, prepare_inputs(ragged, copying_prompts(2), "copy"), steps=4)


def _real(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's own neurons of a [..., layers, widest] tensor."""
    return [tensor[..., layer, :width] for layer, width in enumerate(WIDTHS)]


def _assert_padding(tensor: torch.Tensor) -> None:
    assert tensor[..., 0, 16:].isnan().all() and not any(part.isnan().any() for part in _real(tensor))


@pytest.mark.parametrize("rule,prompts", [("adaptive", 1), ("gauss-legendre", 2)])
def test_fast_path_equals_reference_and_captum_per_layer(ragged, rule, prompts):
    """The adaptive rule's reference runs one forward and backward per node (about 80 per layer): one prompt."""
    items = prepare_inputs(ragged, copying_prompts(prompts), "gold")
    fast = neuron_ig(ragged, items, steps=7, quadrature=rule, max_rows=12)  # several passes
    ref = neuron_ig(ragged, items, steps=7, quadrature=rule, method="reference")
    assert fast.per_prompt.shape == ref.per_prompt.shape == (prompts, 2, 64)
    assert fast.widths == ref.widths == WIDTHS and fast.meta["widths"] == WIDTHS
    _assert_padding(fast.per_prompt)
    _assert_padding(ref.per_prompt)
    for ours, reference in zip(_real(fast.per_prompt), _real(ref.per_prompt)):
        assert reference.abs().max() > 0.1 and rel_err(ours, reference) < 1e-4
    torch.testing.assert_close(fast.f_clean, ref.f_clean, rtol=1e-5, atol=1e-5)
    assert fast.delta is not None and not fast.delta.isnan().any()
    if rule == "gauss-legendre":  # captum on each layer's own activation (its width, no padding)
        for layer, width in enumerate(WIDTHS):
            expected = captum_layer_ig(ragged, items[0], layer, 7, "gausslegendre")
            assert expected.shape == (width,) and rel_err(ref.per_prompt[0, layer, :width], expected) < 1e-4


@pytest.mark.parametrize("model_type,overrides,widths", [
    ("nemotron_h", dict(intermediate_size=48, mamba_num_heads=2), [32, 64, 64, 48]),  # mixer, MoE, attention, MLP
    ("kimi_linear", dict(mlp_layer_types=["dense", "sparse", "dense"], num_experts=4, num_experts_per_tok=1,
                         moe_intermediate_size=8), [64, 32, 64]),  # the narrow layer in the middle
])
def test_other_ragged_hybrids_fast_equals_reference(tmp_path, model_type, overrides, widths):
    loaded = load_model(str(build_tiny_model(model_type, tmp_path, **overrides)), device="cpu")
    assert loaded.adapter.neuron_counts() == widths
    items = prepare_inputs(loaded, copying_prompts(1), "gold")
    fast = neuron_ig(loaded, items, steps=5, quadrature="gauss-legendre", max_rows=8)
    ref = neuron_ig(loaded, items, steps=5, quadrature="gauss-legendre", method="reference")
    assert fast.widths == widths and fast.per_prompt.shape == (1, len(widths), 64)
    for layer, width in enumerate(widths):
        assert fast.per_prompt[0, layer, width:].isnan().all() and ref.per_prompt[0, layer, width:].isnan().all()
        ours, reference = fast.per_prompt[0, layer, :width], ref.per_prompt[0, layer, :width]
        assert reference.abs().max() > 0 and rel_err(ours, reference) < 1e-4


def test_complete_where_no_router_sits_above(ragged):
    """Layer 1 (the MoE, the top layer) has no router above it: sum IG = F(a) - F(0) to the float floor at 64
    Gauss-Legendre nodes. Layer 0's F jumps where layer 1's top-k flips on the path (test_hybrids.py)."""
    item = prepare_inputs(ragged, copying_prompts(1), "gold")[0]
    result = neuron_ig(ragged, [item], steps=64, quadrature="gauss-legendre")
    assert result.delta is not None
    gap = result.per_prompt[0, 1].double().sum() - result.delta[0, 1].double()  # F(a) - F(layer 1 zeroed)
    assert abs(float(gap)) > 1e-3 and abs(float(result.delta[0, 1])) <= 1e-3 * abs(float(gap))
    summary = result.completeness()
    assert summary is not None and math.isfinite(summary["worst"]) and math.isfinite(summary["median"])


def test_no_selection_names_a_missing_neuron(ragged, result):
    scores = result.scores
    _assert_padding(scores)
    for signed in (False, True):
        picked = result.top_k(1000, signed=signed)  # capped at the 80 neurons the model has
        assert len(picked) == REAL and all(neuron < WIDTHS[layer] for layer, neuron, _ in picked)
        assert all(math.isfinite(value) for _, _, value in picked)
    top = result.top_k(5)
    assert [abs(v) for _, _, v in top] == sorted((abs(v) for _, _, v in top), reverse=True)
    assert abs(top[0][2]) == pytest.approx(float(torch.cat(_real(scores)).abs().max()))
    everything = select_top_k(scores, REAL)
    assert len(everything) == REAL
    everything.validate(ragged.adapter.neuron_counts())  # every layer's own count
    with pytest.raises(PrunescopeError, match="the model has 80 neurons in all"):
        select_top_k(scores, REAL + 1)
    assert len(select_top_k(scores, 16, per_layer=True)) == 32
    with pytest.raises(PrunescopeError, match="16 neurons in its narrowest layer"):
        select_top_k(scores, 17, per_layer=True)
    assert select_top_k(scores, 16, layers=(0, 0)).by_layer() == {0: list(range(16))}
    with pytest.raises(PrunescopeError, match="16 neurons in layers 0-0"):
        select_top_k(scores, 17, layers=(0, 0))


def test_copying_scores_and_stability_skip_the_padding(ragged, result):
    normalized = normalized_copy_scores(result)
    _assert_padding(normalized)
    per_prompt = result.per_prompt.double()
    total = per_prompt.nan_to_num(0.0).abs().sum(dim=(1, 2))
    expected = (per_prompt / total[:, None, None]).mean(dim=0)
    torch.testing.assert_close(torch.cat(_real(normalized)).double(), torch.cat(_real(expected)))
    scored = CopyingScores(normalized, result, [True, True])
    mask = select_top_k(normalized, 10)
    stability = mask_stability(scored, mask, resamples=20, prompt_counts=[1, 2])
    assert 0 < stability.jaccard_mean <= 1 and stability.by_prompts[2] == 1.0
    assert stability.frequency and all(neuron < WIDTHS[layer] for layer, neuron in stability.frequency)


def test_magnitudes_heatmap_summary_and_neuron_view(ragged, result):
    magnitudes = activation_magnitudes(ragged, copying_prompts(1))
    _assert_padding(magnitudes)
    assert select_top_k(magnitudes.float(), REAL).neurons == select_top_k(result.scores, REAL).neurons
    for scale in ("clip", "per-layer", "signed-log", "max"):
        fig = neuron_heatmap(result.scores.tolist(), max_columns=64, scale=scale, pickable=True)
        z = fig.data[0].z
        assert all(v is None for v in z[0][16:]) and all(v is not None for v in z[0][:16] + z[1])
        clickable = {(c[0], c[1]) for c in fig.data[1].customdata}
        assert len(clickable) == REAL and all(n < WIDTHS[layer] for layer, n in clickable)
    binned = neuron_heatmap(result.scores.tolist(), max_columns=8, scale="max")  # bins of 8 neurons
    assert [c[0] for c in binned.data[0].customdata[0]][2:] == [None] * 6
    totals = layer_totals_bar(result.scores.tolist())
    expected = [float(part.double().sum()) for part in _real(result.scores)]
    assert list(totals.data[0].y) == pytest.approx(expected, rel=1e-5)
    table = top_neurons(ragged, result, k=100)
    assert len(table) == REAL and (table["neuron"] < table["layer"].map(dict(enumerate(WIDTHS)))).all()
    real = [abs(float(v)) for v in torch.cat(_real(result.scores))]  # the padding never ranks above one
    ranks = [rank_of(result, layer, neuron) for layer, width in enumerate(WIDTHS) for neuron in range(width)]
    assert ranks == [1 + sum(other > value for other in real) for value in real] and max(ranks) <= REAL
    assert parse_neuron("0:15", WIDTHS) == (0, 15)
    with pytest.raises(PrunescopeError, match="layer 0 has neurons 0-15"):
        parse_neuron("0:16", WIDTHS)


def test_confidence_neurons_of_the_narrow_layer(ragged, result, monkeypatch):
    from analysis.pruning import confidence

    monkeypatch.setattr(confidence, "confidence_scores", lambda *args, **kwargs: (result.scores, 2))
    task = builtin_tasks()["vowel-count"]
    picked = confidence.confidence_neurons(ragged, task, layer=0, percent=50)
    assert sorted(picked.mask.neurons) == sorted((0, int(i)) for i in result.scores[0, :16].topk(8).indices)
    whole = confidence.confidence_neurons(ragged, task, layer=0, percent=100)
    assert len(whole.mask) == 16 and whole.layer_scores.shape == (16,) and not whole.layer_scores.isnan().any()


def test_cache_round_trip_keeps_widths_and_padding(ragged, result):
    back = loads(dumps(result))
    assert back.widths == WIDTHS
    assert torch.equal(back.per_prompt.nan_to_num(7.0), result.per_prompt.nan_to_num(7.0))
    _assert_padding(back.per_prompt)


def test_a_genuine_nan_is_an_error_not_padding(ragged, tiny_dirs):
    """NaN marks layer 0's missing neurons (selections skip it, sums read 0), so a real neuron's NaN must stop
    the run with one line instead of vanishing from masks and sums."""
    from analysis.attribution.neuron_ig import _check_finite

    ig = torch.full((2, 64), float("nan"))
    for layer, width in enumerate(WIDTHS):
        ig[layer, :width] = 0.5
    _check_finite(ragged, ig, 1.0, 0)  # padding only: fine
    ig[0, 3] = float("nan")
    with pytest.raises(PrunescopeError, match="neuron IG of prompt 3 is not finite at layer\\(s\\) 0 \\(F = 1\\): "
                                              "the model's float32 forward gives NaN or inf there"):
        _check_finite(ragged, ig, 1.0, 2)

    broken = load_model(tiny_dirs["llama"], device="cpu")  # its own copy: the suite's stays intact
    with torch.no_grad():
        broken.model.model.layers[1].mlp.down_proj.weight[:, 3] = float("nan")
    with pytest.raises(PrunescopeError, match="neuron IG of prompt 1 is not finite .*F = nan"):
        neuron_ig(broken, prepare_inputs(broken, copying_prompts(1), "copy"))
