"""Conservative LRP through the recurrent families (MambaLRP rules, analysis/implicit_attention/conservative.py):
relevance is conserved (the scores sum to F; with random biases, to F minus the biases' share, computed
separately), the replaced forwards compute the model's own logits, LRP differs from gradient x input, the
rules' gradients are the ones documented, and a replacement that does not reproduce its module is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from analysis.attribution.conservation import lrp_conservation
from analysis.attribution.propagation import conservative_propagation
from analysis.attribution.tokens import target_logit, token_relevance, top_prediction
from analysis.errors import PrunescopeError
from analysis.families import FAMILIES
from analysis.implicit_attention import conservative
from analysis.implicit_attention.conservative import half_product, linearised
from analysis.implicit_attention.mamba import capture_mamba, mamba_loop_matrices
from analysis.models import load_model
from analysis.models.hooks import hook_scope

TEXT = "a:3 b:5 c:1 d:7 | b:5 a:"
RECURRENT = ["mamba", "mamba2", "rwkv", "recurrent_gemma", "falcon_mamba"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(loaded):
    return torch.tensor([loaded.tokenizer(TEXT).input_ids])


def _logit(loaded, target):
    with loaded.lock, torch.no_grad():
        return float(loaded.model(_ids(loaded), use_cache=False).logits[0, -1, target])


def retaining(seen: dict, name: str, output: bool = False):
    """A hook keeping the module's output (or input) as ``seen[name]`` with its gradient retained, from the LRP
    pass only (the replacement checks' random probes carry no gradient)."""
    def hook(module, args, *out):
        tensor = out[0] if output else args[0]
        if tensor.requires_grad:
            seen[name] = tensor
            tensor.retain_grad()
    return hook


def assert_conserved_where_gxi_is_not(loaded, gxi_off: float, atol: float) -> None:
    """With zero biases on the relevance path, the LRP scores sum to the model's own logit F (Griffin, xLSTM:
    soft-capped) within 1e-5 relative, bias share 0; plain gradient x input misses F by more than ``gxi_off``
    and differs from LRP beyond ``atol`` (so the rules, not the model, make it conserve)."""
    lrp = token_relevance(loaded, TEXT, "lrp")
    assert lrp_conservation(loaded, TEXT, lrp.target_id).bias_share == 0
    gxi = token_relevance(loaded, TEXT, "gxi", target_id=lrp.target_id).scores
    logit = _logit(loaded, lrp.target_id)
    assert abs(float(lrp.scores.sum()) - logit) <= 1e-5 * abs(logit)
    assert abs(float(gxi.sum()) - logit) > gxi_off
    assert not torch.allclose(lrp.scores, gxi, atol=atol)


@pytest.mark.parametrize("model_type", RECURRENT)
def test_relevance_sums_to_the_logit(tiny_loaded, model_type):
    """The tiny models' biases on the relevance path are all zero (the time-step and gate biases are not, but
    only feed detached factors), so the LRP scores sum to F itself (measured: < 2e-7 relative); plain
    gradient x input does not (sums 0.0016 .. 1.02 against F ~ 7)."""
    assert_conserved_where_gxi_is_not(tiny_loaded(model_type), 0.5, 1e-3)


@pytest.fixture(scope="module")
def with_biases(tiny_dirs):
    """model_type -> a private copy of the tiny model with every bias drawn N(0, 0.3^2)."""
    def load(model_type):
        loaded = load_model(tiny_dirs[model_type], device="cpu")
        generator = torch.Generator().manual_seed(1)
        with loaded.lock, torch.no_grad():
            for name, p in loaded.model.named_parameters():
                if name.endswith("bias"):
                    p.copy_(0.3 * torch.randn(p.shape, generator=generator))
        return loaded
    return load


@pytest.mark.parametrize("model_type", RECURRENT)
def test_with_biases_relevance_plus_the_biases_share_is_the_logit(with_biases, model_type):
    """F = sum_t R_t + sum_b <dF/db, b> (measured: |error| < 2e-7 relative), the bias share being large."""
    loaded = with_biases(model_type)
    target = top_prediction(loaded, _ids(loaded))
    budget = lrp_conservation(loaded, TEXT, target)
    assert budget.logit == pytest.approx(_logit(loaded, target), rel=1e-5)
    assert abs(budget.bias_share) > 0.02 * abs(budget.logit)  # the identity is not just the zero-bias case
    assert abs(budget.error) < 1e-5, budget
    scores = token_relevance(loaded, TEXT, "lrp", target_id=target).scores
    assert float(scores.sum()) == pytest.approx(budget.relevance, rel=1e-5)
    assert not any(p.requires_grad for p in loaded.model.parameters())  # restored


@pytest.mark.parametrize("model_type", RECURRENT)
def test_bfloat16_models_pass_the_checks_and_conserve_to_its_precision(tiny_dirs, model_type):
    """CUDA's default dtype: each replacement reproduces its module to a few bfloat16 roundings (a strict
    float32 tolerance refused them, LayerNorm too), and relevance is conserved to about bfloat16's precision
    (measured: tiny 0.03 .. 0.9 %, toy checkpoints <= 0.5 %; F itself is rounded to 1/16 at ~12)."""
    loaded = load_model(tiny_dirs[model_type], device="cpu", dtype="bfloat16")
    budget = lrp_conservation(loaded, TEXT)
    assert abs(budget.error) < 2e-2, budget


@pytest.mark.parametrize("model_type", RECURRENT)
def test_the_replaced_forwards_compute_the_models_logits_and_are_restored(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    model, rules = loaded.model, FAMILIES[loaded.family].lrp
    assert rules
    named = [m for m in model.modules() if type(m).__name__ in rules]
    falcon = {name for name in rules if name.startswith("FalconMamba")}  # the mamba family's Falcon-Mamba rules
    expected = falcon if model_type == "falcon_mamba" else set(rules) - falcon
    assert {type(m).__name__ for m in named} == expected  # every rule for this model type applies to it
    with loaded.lock, torch.no_grad():
        before = model(_ids(loaded), use_cache=False).logits
        with conservative_propagation(loaded):
            assert all("forward" in m.__dict__ for m in named)
            inside = model(_ids(loaded), use_cache=False).logits
        assert not any("forward" in m.__dict__ for m in model.modules())
        after = model(_ids(loaded), use_cache=False).logits
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5)
    assert torch.equal(after, before)


def test_mambas_relevance_flows_through_its_implicit_attention(tiny_loaded):
    """Against the float64 loop's matrices (independent of the rules): given Delta, B, C the SSM is the linear
    map u -> (alpha + D) u, and the uniform rule hands the SSM half of the gated product's relevance, so with
    g = dF/d(out_proj input) the relevance reaching u is u * (alpha + D)^T (SiLU(z) g / 2), and the one
    reaching the conv's input x (through conv + SiLU, sigmoid detached) is x * M^T (g / 2), M being the
    unified matrices diag(SiLU z) (alpha + D) diag(sigmoid c) Toeplitz(conv)."""
    loaded = tiny_loaded("mamba")
    ids, layer = _ids(loaded), 1
    mixer, target = loaded.adapter.block(layer).mixer, top_prediction(loaded, _ids(loaded))
    inn = capture_mamba(loaded, ids, [layer])[layer]
    channels = torch.arange(inn.n_channels)
    alpha, unified = (mamba_loop_matrices(inn, form, channels).double() for form in ("s6", "unified"))
    seen: dict[str, torch.Tensor] = {}

    def keep(name, output=False):
        return retaining(seen, name, output)

    with loaded.lock, hook_scope(loaded.model) as add, torch.enable_grad():
        add(mixer.in_proj, keep("in_proj", output=True))
        add(mixer.x_proj, keep("u"), pre=True)
        add(mixer.out_proj, keep("gated"), pre=True)
        with conservative_propagation(loaded):
            embeds = loaded.model.get_input_embeddings()(ids).detach().requires_grad_(True)
            target_logit(loaded, embeds, target, linear_cap=True).sum().backward()
    d, z = inn.n_channels, inn.z.double()
    weights = 0.5 * seen["gated"].grad[0].double()  # [T, d]: the SSM branch's half of the relevance
    u, got_u = seen["u"].detach()[0].double(), (seen["u"].grad * seen["u"])[0].double()
    expected_u = u * (torch.einsum("cij,ic->jc", alpha, F.silu(z) * weights) + inn.D.double() * F.silu(z) * weights)
    torch.testing.assert_close(got_u, expected_u, rtol=1e-4, atol=1e-5 * float(expected_u.abs().max()))
    x = seen["in_proj"].detach()[0, :, :d].double()
    got_x = (seen["in_proj"].grad[0, :, :d] * seen["in_proj"].detach()[0, :, :d]).double()
    expected_x = x * torch.einsum("cim,ic->mc", unified, weights)
    torch.testing.assert_close(got_x, expected_x, rtol=1e-4, atol=1e-5 * float(expected_x.abs().max()))
    assert float(expected_x.abs().max()) > 0


def test_the_rules_gradients():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0], dtype=torch.float64, requires_grad=True)
    out = linearised(F.silu, x)
    torch.testing.assert_close(out, F.silu(x))
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, torch.sigmoid(x).detach(), rtol=0, atol=1e-6)  # MambaLRP: sigmoid detached
    a = torch.tensor([1.5, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.5, 3.0], dtype=torch.float64, requires_grad=True)
    product = half_product(a, b)
    assert torch.equal(product, a * b)
    ga, gb = torch.autograd.grad(product.sum(), [a, b])
    torch.testing.assert_close(a * ga + b * gb, (a * b).detach())  # each factor gets half: conserved
    torch.testing.assert_close(a * ga, 0.5 * (a * b).detach())


def test_a_rule_that_does_not_reproduce_its_module_is_refused(tiny_loaded, monkeypatch):
    loaded = tiny_loaded("mamba")
    wrong = conservative.Rule(lambda mixer: (lambda hidden_states, **kw: 2 * mixer(hidden_states)),
                              conservative.MAMBA["MambaMixer"].probe)
    monkeypatch.setitem(FAMILIES["mamba"].lrp, "MambaMixer", wrong)
    with pytest.raises(PrunescopeError, match="conservative MambaMixer does not reproduce") as raised:
        token_relevance(loaded, TEXT, "lrp")
    assert len(str(raised.value).splitlines()) == 1
    assert not any("forward" in m.__dict__ for m in loaded.model.modules())


def test_a_gated_norm_without_a_rule_is_refused_in_one_line(tiny_loaded, monkeypatch):
    """A gated RMSNorm (``y * act(gate)`` inside) is not a plain norm: without its family's rule, one line
    instead of a TypeError from the plain norm's forward."""
    loaded = tiny_loaded("mamba2")
    monkeypatch.delitem(FAMILIES["mamba2"].lrp, "MambaRMSNormGated")
    with pytest.raises(PrunescopeError, match="no rule for the gated normalisation MambaRMSNormGated") as raised:
        token_relevance(loaded, TEXT, "lrp")
    assert len(str(raised.value).splitlines()) == 1
    assert not any("forward" in m.__dict__ for m in loaded.model.modules())
