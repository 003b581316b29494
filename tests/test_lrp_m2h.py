"""Conservative LRP through the Mamba-2 hybrids (analysis/implicit_attention/conservative_m2h.py): Bamba and
Falcon-H1, Granite 4.0 hybrid, Nemotron-H. Relevance is conserved (the scores sum to the model's own logit; with
random biases, to it minus the biases' share), the replaced forwards compute the model's logits, LRP differs
from gradient x input, and a replacement that drops a multiplier is refused."""

from __future__ import annotations

import pytest
import torch

from analysis.attribution.conservation import lrp_conservation
from analysis.attribution.propagation import conservative_propagation
from analysis.attribution.tokens import token_relevance, top_prediction
from analysis.errors import PrunescopeError
from analysis.families import FAMILIES
from analysis.implicit_attention import conservative_m2h
from analysis.implicit_attention.conservative import Rule
from analysis.models import load_model
from analysis.models.tiny import build_tiny_model
from tests.test_lrp_recurrent import TEXT, _ids, _logit, assert_conserved_where_gxi_is_not

HYBRIDS = ["bamba", "falcon_h1", "granitemoehybrid", "nemotron_h"]
# every bias the configs offer switched on (the tiny models have only the conv's), Falcon-H1 also with its
# optional gated RMSNorm in the mixer
BIASED = {"bamba": dict(attention_bias=True, mamba_proj_bias=True, mlp_bias=True),
          "falcon_h1": dict(attention_bias=True, mamba_proj_bias=True, mlp_bias=True, projectors_bias=True),
          "falcon_h1_gated_norm": dict(attention_bias=True, mamba_proj_bias=True, mlp_bias=True,
                                       projectors_bias=True, mamba_rms_norm=True),
          "granitemoehybrid": dict(attention_bias=True, mamba_proj_bias=True),
          "nemotron_h": dict(attention_bias=True, use_bias=True, mlp_bias=True)}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("model_type", HYBRIDS)
def test_relevance_sums_to_the_logit(tiny_loaded, model_type):
    """The tiny models' biases on the relevance path are zero (the conv biases are; dt_bias only feeds detached
    factors), so the LRP scores sum to the model's own logit (Falcon-H1: with its embedding and LM-head
    multipliers; measured: < 3e-7 relative); gradient x input does not (sums -0.22 .. 1.0 against F ~ 7-9)."""
    assert_conserved_where_gxi_is_not(tiny_loaded(model_type), 0.5, 1e-3)


@pytest.fixture(scope="module")
def with_biases(tmp_path_factory):
    """name -> a tiny model built with every bias of BIASED[name] on, each drawn N(0, 0.3^2)."""
    root, cache = tmp_path_factory.mktemp("lrp-m2h"), {}

    def load(name):
        if name not in cache:
            model_type = "falcon_h1" if name.startswith("falcon_h1") else name
            loaded = load_model(build_tiny_model(model_type, root / name, **BIASED[name]), device="cpu")
            generator = torch.Generator().manual_seed(1)
            with loaded.lock, torch.no_grad():
                for parameter_name, p in loaded.model.named_parameters():
                    if parameter_name.endswith("bias"):
                        p.copy_(0.3 * torch.randn(p.shape, generator=generator))
            cache[name] = loaded
        return cache[name]
    return load


@pytest.mark.parametrize("name", list(BIASED))
def test_with_biases_relevance_plus_the_biases_share_is_the_logit(with_biases, name):
    """F = sum_t R_t + sum_b <dF/db, b> (measured: |error| < 1e-6 relative), the bias share being large."""
    loaded = with_biases(name)
    target = top_prediction(loaded, _ids(loaded))
    budget = lrp_conservation(loaded, TEXT, target)
    assert budget.logit == pytest.approx(_logit(loaded, target), rel=1e-5)
    assert abs(budget.bias_share) > 0.02 * abs(budget.logit)
    assert abs(budget.error) < 1e-5, budget
    scores = token_relevance(loaded, TEXT, "lrp", target_id=target).scores
    assert float(scores.sum()) == pytest.approx(budget.relevance, rel=1e-5)
    assert not any(p.requires_grad for p in loaded.model.parameters())  # restored


def test_falcon_h1s_gated_norm_conserves_with_the_gate_after_the_norm_too(with_biases):
    """FalconH1RMSNormGated multiplies by SiLU(gate) after normalising (``norm_before_gate``, the default) or
    before: both are conserved."""
    loaded = with_biases("falcon_h1_gated_norm")
    norms = [m for m in loaded.model.modules() if type(m).__name__ == "FalconH1RMSNormGated"]
    assert norms and all(n.norm_before_gate for n in norms)
    errors = {}
    try:
        for before in (True, False):
            for norm in norms:
                norm.norm_before_gate = before
            errors[before] = lrp_conservation(loaded, TEXT).error
    finally:
        for norm in norms:
            norm.norm_before_gate = True
    assert all(abs(e) < 1e-5 for e in errors.values()), errors


@pytest.mark.parametrize("name", list(BIASED))
def test_the_replaced_forwards_compute_the_models_logits_and_are_restored(with_biases, name):
    """Every class the model type has among its family's rules is replaced (and nothing else of the table is
    there), the logits are the model's, and nothing stays patched."""
    loaded = with_biases(name)
    model, rules = loaded.model, FAMILIES[loaded.family].lrp
    assert rules
    named = [m for m in model.modules() if type(m).__name__ in rules]
    prefix = {"bamba": "Bamba", "falcon_h1": "FalconH1", "falcon_h1_gated_norm": "FalconH1",
              "granitemoehybrid": "GraniteMoeHybrid", "nemotron_h": "NemotronH"}[name]
    expected = {n for n in rules if n.startswith(prefix)} - ({"FalconH1RMSNormGated"} if name == "falcon_h1" else set())
    assert {type(m).__name__ for m in named} == expected
    ids = _ids(loaded)
    with loaded.lock, torch.no_grad():
        before = model(ids, use_cache=False).logits
        with conservative_propagation(loaded):
            assert all("forward" in m.__dict__ for m in named)
            inside = model(ids, use_cache=False).logits
        assert not any("forward" in m.__dict__ for m in model.modules())
        after = model(ids, use_cache=False).logits
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()))  # float rounding
    assert torch.equal(after, before)


@pytest.mark.parametrize("model_type", HYBRIDS)
def test_bfloat16_models_conserve_to_its_precision(tiny_dirs, model_type):
    """In bfloat16 every replacement passes its check and relevance is conserved to about bfloat16's precision
    (measured: bamba 1.3 %, falcon_h1 0.05 %, granitemoehybrid 0.06 %, nemotron_h 0.5 %; F itself is rounded to
    1/32 at ~7)."""
    loaded = load_model(tiny_dirs[model_type], device="cpu", dtype="bfloat16")
    budget = lrp_conservation(loaded, TEXT)
    assert abs(budget.error) < 2e-2, budget


def test_a_rule_that_drops_a_multiplier_is_refused(tiny_loaded, monkeypatch):
    """Falcon-H1's MLP rule without its down multiplier (0.9 in the tiny model) does not reproduce the module."""
    loaded = tiny_loaded("falcon_h1")

    def without_down_multiplier(mlp):
        forward = conservative_m2h.falcon_h1_mlp(mlp)
        return lambda x: forward(x) / mlp.down_multiplier

    wrong = Rule(without_down_multiplier, conservative_m2h.MAMBA2_HYBRID["FalconH1MLP"].probe)
    monkeypatch.setitem(FAMILIES["mamba2_hybrid"].lrp, "FalconH1MLP", wrong)
    with pytest.raises(PrunescopeError, match="conservative FalconH1MLP does not reproduce") as raised:
        token_relevance(loaded, TEXT, "lrp")
    assert len(str(raised.value).splitlines()) == 1
    assert not any("forward" in m.__dict__ for m in loaded.model.modules())
