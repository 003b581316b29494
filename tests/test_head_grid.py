"""The layers x heads grid (analysis/head_grid.py): each cell against an independent reference (the model's own
per-head attention probabilities; the family's per-channel matrices averaged by hand), the groups partition
the channels, the sink, ranges in reductions, and the figure."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.attention import attention_maps
from analysis.errors import PrunescopeError
from analysis.families import family_of
from analysis.head_grid import _split, head_grid, without_sink
from analysis.implicit_attention.common import Reduction
from analysis.models import load_model
from components.charts_heads import head_grid_figure

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = "a:3 b:5 c:1 d:7 | b:5 a:"


@pytest.fixture(scope="module")
def toy():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(name, device="cpu")
        return cache[name]
    return get


def test_softmax_cells_are_the_models_own_head_probabilities(toy):
    loaded = toy("toy-transformer")
    grid = head_grid(loaded, TEXT)
    ids = torch.tensor([loaded.tokenizer(TEXT).input_ids])
    with loaded.lock, torch.no_grad():
        before = loaded.model.config._attn_implementation
        loaded.model.set_attn_implementation("eager")
        try:
            probs = loaded.model(input_ids=ids, output_attentions=True).attentions
        finally:
            loaded.model.set_attn_implementation(before)
    heads = loaded.model.config.num_attention_heads
    assert grid.layers == list(range(loaded.n_layers)) and set(grid.kinds) == {"softmax"}
    assert grid.labels[0] == [f"head {h}" for h in range(heads)]
    for k, layer in enumerate(grid.layers):
        assert len(grid.cells[k]) == heads
        for h in range(heads):
            torch.testing.assert_close(grid.cells[k][h], probs[layer][0, h].float(), atol=1e-6, rtol=1e-5)
    assert grid.reductions[1][2] == "channels:2"


def test_implicit_groups_average_the_familys_own_per_channel_matrices(toy):
    loaded = toy("toy-mamba")
    grid = head_grid(loaded, TEXT, layers=[1, 2])
    entry = family_of(loaded)
    ids = torch.tensor([loaded.tokenizer(TEXT).input_ids])
    internals = entry.require("capture")(loaded, ids, [1])[1]
    n = internals.n_matrices("s6")
    assert n > 32 and len(grid.cells[0]) == 16 and grid.labels[0][0] == f"channels 0-{n // 16 - 1}"
    every = entry.require("matrices")(internals, "s6", torch.arange(n))  # [n, T, T]
    for g, channels in enumerate(_split(n, 32, 16)):
        torch.testing.assert_close(grid.cells[0][g], every[list(channels)].mean(dim=0), atol=1e-5, rtol=1e-4)
    # the groups partition the channels: their size-weighted mean is the layer's mean map
    sizes = torch.tensor([len(c) for c in _split(n, 32, 16)], dtype=torch.float32)
    pooled = (torch.stack(grid.cells[1]) * sizes[:, None, None]).sum(dim=0) / sizes.sum()
    mean = attention_maps(loaded, TEXT, form="s6", layers=[2]).attn[0]
    torch.testing.assert_close(pooled, mean, atol=1e-5, rtol=1e-4)


def test_mamba2_s6_cells_are_heads_and_griffin_mixes_kinds(toy):
    mamba2 = head_grid(toy("toy-mamba2"), TEXT, layers=[0])
    assert mamba2.form == "s6" and mamba2.labels[0][0] == "head 0"
    heads = len(mamba2.cells[0])
    assert heads == toy("toy-mamba2").model.config.num_heads
    griffin = head_grid(toy("toy-griffin"), TEXT)
    kinds = dict(zip(griffin.layers, griffin.kinds, strict=True))
    softmax_rows = [k for k, layer in enumerate(griffin.layers) if kinds[layer] == "softmax"]
    assert softmax_rows and {len(griffin.cells[k]) for k in softmax_rows} == {
        toy("toy-griffin").model.config.num_attention_heads}
    assert set(griffin.kinds) == {"softmax", "implicit"}


def test_split_reductions_and_the_sink():
    assert _split(9, 32, 16) == [(i,) for i in range(9)]
    groups = _split(1536, 32, 16)
    assert len(groups) == 16 and {len(g) for g in groups} == {96} and groups[-1][-1] == 1535
    assert sum(len(g) for g in _split(50, 32, 16)) == 50  # uneven: every channel once
    assert Reduction.parse("channels:0-3,7").channels == (0, 1, 2, 3, 7)
    assert Reduction("channels", (0, 1, 2, 3, 7, 9, 10)).text() == "channels:0-3,7,9-10"
    for hostile in ("channels:5-2", "channels:0-99999999", "channels:-3", "channels:a-b"):
        with pytest.raises(PrunescopeError, match="unknown reduction"):
            Reduction.parse(hostile)
    attn = torch.arange(16.0).reshape(4, 4)
    assert without_sink(attn).tolist() == [[5, 6, 7], [9, 10, 11], [13, 14, 15]]
    with pytest.raises(PrunescopeError, match="no token after"):
        without_sink(torch.ones(1, 1))


def test_figure_tiles_each_cell_scaled_and_clickable(toy):
    grid = head_grid(toy("toy-transformer"), TEXT, layers=[0, 1])
    figure = json.loads(head_grid_figure(grid, sink=True, picked=(1, 2)).to_json())
    heat, marks = figure["data"]
    length = len(grid.tokens) - 1  # the sink left out
    heads = len(grid.cells[0])
    assert len(heat["z"]) == 2 * length + 1 and len(heat["z"][0]) == heads * (length + 1) - 1
    first = torch.tensor(heat["z"][0:length][0][:length])  # layer 0, head 0, first row
    expected = without_sink(grid.cells[0][0])
    assert first.tolist() == pytest.approx((expected[0] / expected.abs().max()).tolist(), abs=1e-4)
    assert marks["customdata"][heads + 2] == [1, 2] and marks["selectedpoints"] == [heads + 2]
    assert "left out (attention sink)" in figure["layout"]["title"]["text"]


@pytest.mark.parametrize(("model_type", "form", "kinds"), [
    ("bamba", "s6", ["implicit", "softmax", "implicit"]), ("zamba2", "softmax", ["softmax", "implicit", "implicit"]),
    ("falcon_h1", "softmax", ["softmax", "softmax"]), ("falcon_h1", "unified", ["implicit", "implicit"]),
    ("zamba", "softmax", ["implicit", "softmax"])])
def test_hybrid_grids_keep_each_layers_kind_and_average_to_its_map(tiny_loaded, model_type, form, kinds):
    """Hybrids mix kinds in one grid (Bamba's attention layer under s6; Zamba2's Mamba-2 layers under softmax):
    a softmax row has the config's attention heads, an implicit row its s6 heads (Falcon-H1's unified form and
    Zamba's Mamba-1 s6: a row per d_inner channel, 64, shown as 16 groups), and each row's cells average to
    the layer's map."""
    loaded = tiny_loaded(model_type)
    grid, maps = head_grid(loaded, TEXT, form=form), attention_maps(loaded, TEXT, form=form)
    assert grid.layers == maps.layers and grid.kinds == maps.kinds == kinds
    config = loaded.model.config
    mamba_heads = getattr(config, "mamba_n_heads", None) or config.n_mamba_heads
    for k, kind in enumerate(grid.kinds):
        implicit = 16 if form == "unified" or model_type == "zamba" else mamba_heads  # Zamba: s6 per channel
        assert len(grid.cells[k]) == (config.num_attention_heads if kind == "softmax" else implicit)
        torch.testing.assert_close(torch.stack(grid.cells[k]).mean(0), maps.attn[k], rtol=1e-5, atol=1e-6)
