"""Conservative LRP through LFM2 and xLSTM (rules: analysis/implicit_attention/conservative_lx.py): relevance is
conserved (the scores sum to F; with random biases, to F minus the biases' share), it differs from gradient x
input, the replaced forwards compute the model's own logits and are restored, the relevance reaching each mixer's
value input is the family's own implicit-attention matrices applied to the LRP gradient (the gates detached),
bfloat16 conserves to its precision, and a rule that does not reproduce its module is refused."""

from __future__ import annotations

import pytest
import torch

from analysis.attribution.conservation import lrp_conservation
from analysis.attribution.propagation import conservative_propagation
from analysis.attribution.tokens import target_logit, token_relevance, top_prediction
from analysis.errors import PrunescopeError
from analysis.families import FAMILIES
from analysis.implicit_attention import conservative_lx
from analysis.implicit_attention.lfm2 import capture_lfm2, lfm2_matrices
from analysis.implicit_attention.xlstm import capture_xlstm, xlstm_matrices
from analysis.models import load_model
from analysis.models.hooks import hook_scope
from analysis.models.tiny import build_tiny_model
from tests.test_lrp_recurrent import TEXT, _ids, _logit, assert_conserved_where_gxi_is_not, retaining

MODEL_TYPES = ["lfm2", "xlstm"]
BIASED = {"lfm2": {"conv_bias": True}, "xlstm": {"use_bias": True}}  # the tiny models have no biases otherwise

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_relevance_sums_to_the_logit(tiny_loaded, model_type):
    """No biases on the relevance path (xLSTM's gate biases feed detached factors only), so the LRP scores sum
    to the model's own (xLSTM: soft-capped) logit F (measured: 4e-8 LFM2, 2e-7 xLSTM, relative); gradient x
    input does not (2.2 against 6.4; -1.6 against 7.8)."""
    assert_conserved_where_gxi_is_not(tiny_loaded(model_type), 1.0, 1e-2)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_with_biases_relevance_plus_the_biases_share_is_the_logit(tmp_path, model_type):
    """LFM2 with conv biases (in_proj, conv, out_proj), xLSTM with ``use_bias`` (projections and norms), every
    bias N(0, 0.3^2): F = sum_t R_t + sum_b <dF/db, b> (measured: |error| <= 3e-7), the bias share large."""
    loaded = load_model(build_tiny_model(model_type, tmp_path / model_type, **BIASED[model_type]), device="cpu")
    generator = torch.Generator().manual_seed(1)
    with loaded.lock, torch.no_grad():
        biases = [p for name, p in loaded.model.named_parameters() if name.endswith("bias")]
        for p in biases:
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    target = top_prediction(loaded, _ids(loaded))
    budget = lrp_conservation(loaded, TEXT, target)
    assert budget.logit == pytest.approx(_logit(loaded, target), rel=1e-5)
    assert abs(budget.bias_share) > 0.1 * abs(budget.logit)  # the identity is not just the zero-bias case
    assert abs(budget.error) < 1e-5, budget
    assert not any(p.requires_grad for p in loaded.model.parameters())  # restored


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_the_replaced_forwards_compute_the_models_logits_and_are_restored(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    model, rules = loaded.model, FAMILIES[loaded.family].lrp
    assert rules
    named = [m for m in model.modules() if type(m).__name__ in rules]
    assert {type(m).__name__ for m in named} == set(rules)  # every rule applies to this model
    own = [m for m in model.modules() if "forward" in m.__dict__]  # xLSTM's backends (the adapter's dtype fix)
    with loaded.lock, torch.no_grad():
        before = model(_ids(loaded), use_cache=False).logits
        with conservative_propagation(loaded):
            assert all("forward" in m.__dict__ for m in named)
            inside = model(_ids(loaded), use_cache=False).logits
        assert [m for m in model.modules() if "forward" in m.__dict__] == own
        after = model(_ids(loaded), use_cache=False).logits
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5)
    assert torch.equal(after, before)


def _lrp_backward(loaded, taps):
    """One LRP backward of F (top prediction); ``taps`` = {name: (module, kind)} with kind "out" (the module's
    output) or "in" (its input): each tapped tensor with its gradient kept, from the LRP pass only."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name, output):
        return retaining(seen, name, output)

    target = top_prediction(loaded, _ids(loaded))
    with loaded.lock, hook_scope(loaded.model) as add, torch.enable_grad():
        for name, (module, kind) in taps.items():
            add(module, keep(name, kind == "out"), pre=kind == "in")
        with conservative_propagation(loaded):
            embeds = loaded.model.get_input_embeddings()(_ids(loaded)).detach().requires_grad_(True)
            target_logit(loaded, embeds, target, linear_cap=True).sum().backward()
    return seen


def _close(got, expected):
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    assert float(expected.abs().max()) > 0


def test_lfm2_relevance_flows_through_its_implicit_attention(tiny_loaded):
    """Given B and C the gated conv is x -> M x with M the family's unified banded matrices (C_i w B_j, captured
    from a plain forward, independent of the rules), so with g = dF/d(out_proj input) the relevance reaching x is
    x * M^T g, B and C get none, and it sums to <g, y> (the layer conserves)."""
    loaded = tiny_loaded("lfm2")
    layer = 2
    op = loaded.adapter.block(layer).conv
    seen = _lrp_backward(loaded, {"bcx": (op.in_proj, "out"), "y": (op.out_proj, "in")})
    b_grad, c_grad, x_grad = seen["bcx"].grad[0].double().chunk(3, dim=-1)
    assert float(b_grad.abs().max()) == 0 and float(c_grad.abs().max()) == 0  # the gates are constants
    x = seen["bcx"].detach()[0].double().chunk(3, dim=-1)[2]
    g = seen["y"].grad[0].double()
    matrices = lfm2_matrices(capture_lfm2(loaded, _ids(loaded), [layer])[layer], "unified").double()
    expected = x * torch.einsum("cij,ic->jc", matrices, g)
    _close(x * x_grad, expected)
    assert float(expected.sum()) == pytest.approx(float((g * seen["y"].detach()[0].double()).sum()), rel=1e-5)


def test_xlstm_relevance_flows_through_its_implicit_attention(tiny_loaded):
    """Given q, k and the gates the mLSTM (19 tokens: two chunks of 8, the last 3 by the recurrent kernel) is
    per head ``h = A v``; the multi-head norm (1/sigma detached, centring P kept) and the output gate (detached)
    make out_proj's input M (P v) with M the family's unified matrices, captured from a plain forward. So with
    g = dF/d(out_proj input) the relevance reaching v is v * P(M^T g), and q, k and the gates get none."""
    loaded = tiny_loaded("xlstm")
    layer = 1
    mlstm = loaded.adapter.block(layer).mlstm_layer
    taps = {"v": (mlstm.v, "out"), "q": (mlstm.q, "out"), "k": (mlstm.k, "out"), "i": (mlstm.igate_preact, "out"),
            "f": (mlstm.fgate_preact, "out"), "o": (mlstm.ogate_preact, "out"), "out_in": (mlstm.out_proj, "in")}
    seen = _lrp_backward(loaded, taps)
    assert all(seen[name].grad is None for name in "qkifo")  # constants of the layer: no gradient reaches them
    inn = capture_xlstm(loaded, _ids(loaded), [layer])[layer]
    assert inn.length > 2 * loaded.model.config.chunk_size and inn.length % loaded.model.config.chunk_size
    g = seen["out_in"].grad[0].double()
    back = torch.einsum("cij,ic->jc", xlstm_matrices(inn, "unified").double(), g)  # [T, v]
    heads = back.reshape(inn.length, inn.n_heads, -1)
    back = (heads - heads.mean(dim=-1, keepdim=True)).reshape(back.shape)  # P^T = P
    v = seen["v"].detach()[0].double()
    _close(v * seen["v"].grad[0].double(), v * back)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bfloat16_models_pass_the_checks_and_conserve_to_its_precision(tiny_dirs, model_type):
    """CUDA's default dtype: each replacement reproduces its module to a few bfloat16 roundings, and relevance
    is conserved to about bfloat16's precision (measured: LFM2 0.21 %, xLSTM 0.23 %; F ~ 7 has ulp 1/32)."""
    loaded = load_model(tiny_dirs[model_type], device="cpu", dtype="bfloat16")
    budget = lrp_conservation(loaded, TEXT)
    assert abs(budget.error) < 1e-2, budget


def test_a_gated_conv_rule_that_forgets_a_gate_is_refused(tiny_loaded, monkeypatch):
    """The replacement is checked against Lfm2ShortConv on a probe: one that drops the C gate is a one-line
    error, and nothing stays patched."""
    loaded = tiny_loaded("lfm2")

    def without_c(op):
        def forward(hidden_states, past_key_values=None, attention_mask=None, **kwargs):
            b_gate, _, x = op.in_proj(hidden_states).transpose(-1, -2).chunk(3, dim=-2)
            conv = op.conv(b_gate.detach() * x)[..., :hidden_states.shape[1]]
            return op.out_proj(conv.transpose(-1, -2))
        return forward

    rule = conservative_lx.LFM2["Lfm2ShortConv"]
    monkeypatch.setitem(FAMILIES["lfm2"].lrp, "Lfm2ShortConv", conservative_lx.Rule(without_c, rule.probe))
    with pytest.raises(PrunescopeError, match="conservative Lfm2ShortConv does not reproduce") as raised:
        token_relevance(loaded, TEXT, "lrp")
    assert len(str(raised.value).splitlines()) == 1
    assert not any("forward" in m.__dict__ for m in loaded.model.modules())  # LFM2: none of its own


def test_xlstms_rms_norm_is_not_the_generic_one(tiny_loaded, monkeypatch):
    """xLSTMRMSNorm has ``eps`` (no ``variance_epsilon``), which the generic rule reads as Gemma's (1 + weight)
    norm: without its own rule the probe check refuses it in one line rather than giving a wrong map."""
    loaded = tiny_loaded("xlstm")
    monkeypatch.delitem(FAMILIES["xlstm"].lrp, "xLSTMRMSNorm")
    with pytest.raises(PrunescopeError, match="does not know how to detach the normalisation xLSTMRMSNorm"):
        token_relevance(loaded, TEXT, "lrp")
