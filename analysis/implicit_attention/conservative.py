"""Conservative propagation (LRP) rules of the recurrent families, after MambaLRP (Jafari et al., NeurIPS 2024,
arXiv 2406.07592): each mixer's forward re-run with its data-dependent gates and nonlinear factors detached,
so that, given those, every layer is linear in the path that carries relevance and gradient x input at the
embeddings conserves relevance (Euler: F = sum_t R_t + the constant terms, see
:func:`analysis.attribution.conservation.lrp_conservation`).

Three rules, shared by all families:

* an elementwise activation f (SiLU, GELU, relu^2): ``x * (f(x) / x)`` with the factor detached
  (:func:`linearised`; for SiLU the factor is sigmoid(x), MambaLRP's SiLU rule);
* a product of two signals (``y * SiLU(z)``, Griffin's ``x * GELU(y)`` and gated MLP): the uniform rule, half
  of the relevance to each factor (:func:`half_product`, MambaLRP's gate rule);
* a sigmoid gate or a coefficient computed from the data (Delta, B, C, exp(Delta A); RWKV's receptance and
  WKV weights; the RG-LRU's a_t, input gate and sqrt(1 - a_t^2)): detached, a constant of the layer.

Per family (module class -> :class:`Rule`): Mamba's (and Falcon-Mamba's) and Mamba-2's mixers (and Mamba-2's
gated RMSNorm), RWKV's time and channel mixing, Griffin's recurrent block (with its RG-LRU) and MLP. Softmax
attention (Griffin's local attention) and plain norms are detached by the caller for every family
(:func:`analysis.attribution.propagation.conservative_propagation`), which also checks each replacement against the
real module on a random probe. The replacements run without a cache (``use_cache=False``), batch any size.
:data:`LRP_RULES` is what the family registry names (analysis/families.py); nothing here imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN
from transformers.integrations.moe import _default_apply_gate
from transformers.models.mamba.modeling_mamba import mamba_selective_scan
from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan
from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention

from analysis.errors import PrunescopeError
from analysis.implicit_attention.griffin import _gates
from analysis.models.experts import experts_loop
from analysis.models.loader import onloaded

PROBE_LENGTH = 6  # positions of the random input each replacement is checked on


@dataclass(frozen=True)
class Rule:
    """How conservative propagation replaces one module class's forward: ``forward(module)`` builds the
    replacement (the same values, gates detached); ``probe(module, generator)`` gives (args, kwargs) of a random
    call on which the replacement must equal the module itself."""

    forward: Callable[[Any], Callable[..., Any]]  # called with the transformers module the rule names
    probe: Callable[[Any, torch.Generator], tuple[tuple, dict]]


# -- the shared rules ----------------------------------------------------------------------------------------
def linearised(act: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """f(x) (with f(0) = 0) as ``x * (f(x) / x)`` with the factor detached, so gradient x input gives back
    f(x); at x = 0 the factor is f(1e-6) / 1e-6, about f'(0) (SiLU: sigmoid(0) = 1/2). In float32, then cast
    back: in bfloat16 the value is then f(x) rounded once, as transformers' activations give it."""
    wide = x.float()
    safe = torch.where(wide == 0, torch.full_like(wide, 1e-6), wide)
    return (wide * (act(safe) / safe).detach()).to(x.dtype)


def half_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b`` whose gradient sends half of the relevance to each factor (the uniform rule)."""
    product = a * b
    return 0.5 * product + 0.5 * product.detach()


def _no_cache(name: str, state) -> None:
    if state is not None:
        raise PrunescopeError(f"lrp runs {name} without a cache (use_cache=False)")


def _masked(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """transformers' apply_mask_to_padding_states: zero the padded positions."""
    return hidden if attention_mask is None else (hidden * attention_mask[:, :, None]).to(hidden.dtype)


def _hidden_probe(width: Callable[[Any], int]) -> Callable[[Any, torch.Generator], tuple[tuple, dict]]:
    """A probe of one random [1, PROBE_LENGTH, width(module)] hidden state."""
    def probe(module: Any, generator: torch.Generator) -> tuple[tuple, dict]:
        weight = next(p for p in module.parameters() if p.is_floating_point())
        x = torch.randn(1, PROBE_LENGTH, width(module), generator=generator).to(weight.device, weight.dtype)
        return (x,), {}
    return probe


# -- Mamba, Mamba-2 ------------------------------------------------------------------------------------------
def mamba_mixer(mixer: Any) -> Callable[..., torch.Tensor]:
    """Mamba's (and Falcon-Mamba's) mixer: SiLU(conv(x)) linearised; Delta, B, C (from ``x_proj``) detached, so
    the selective scan is linear in its input u; ``y * SiLU(z)`` by the uniform rule."""
    def forward(hidden_states, cache_params=None, attention_mask=None, **kwargs):
        _no_cache("Mamba's mixer", cache_params)
        length, dtype = hidden_states.shape[1], hidden_states.dtype
        x, gate = mixer.in_proj(_masked(hidden_states, attention_mask)).transpose(1, 2).chunk(2, dim=1)
        conv = mixer.conv1d(x.to(mixer.conv1d.weight.dtype))[..., :length]
        u = linearised(ACT2FN[mixer.activation], conv).to(x.dtype)
        u = _masked(u.transpose(1, 2), attention_mask)  # [B, T, d]
        time_step, B, C = torch.split(mixer.x_proj(u).detach(), [mixer.time_step_rank, mixer.ssm_state_size,
                                                                 mixer.ssm_state_size], dim=-1)
        if hasattr(mixer, "dt_layernorm"):  # Falcon-Mamba: dt, B and C RMS-normalised (detached factors too)
            time_step, B, C = mixer.dt_layernorm(time_step), mixer.b_layernorm(B), mixer.c_layernorm(C)
        with onloaded(mixer.dt_proj):  # its weight is used outside its forward, as transformers does
            time_step = mixer.dt_proj.weight.detach() @ time_step.transpose(1, 2)
            bias = mixer.dt_proj.bias.detach().float()
        y = mamba_selective_scan(u.transpose(1, 2), time_step, -torch.exp(mixer.A_log.detach().float()),
                                 B.transpose(1, 2), C.transpose(1, 2), D=mixer.D.float(), z=None, delta_bias=bias,
                                 delta_softplus=True)
        return mixer.out_proj(half_product(y, linearised(F.silu, gate)).transpose(1, 2).to(dtype))
    return forward


def mamba2_mixer(mixer: Any) -> Callable[..., torch.Tensor]:
    """Mamba-2's mixer: SiLU(conv(xBC)) linearised; dt, B and C detached, so the SSD scan is linear in x; the
    gate goes through the gated norm's rule (:func:`gated_rms_norm`)."""
    def forward(hidden_states, cache_params=None, attention_mask=None, **kwargs):
        _no_cache("Mamba-2's mixer", cache_params)
        batch, length, _ = hidden_states.shape
        projected = mixer.in_proj(_masked(hidden_states, attention_mask))
        gate, xbc, dt = projected.split([mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1)
        conv = mixer.conv1d(xbc.transpose(1, 2).to(mixer.conv1d.weight.dtype))[..., :length]
        xbc = _masked(linearised(ACT2FN[mixer.activation], conv).to(xbc.dtype).transpose(1, 2), attention_mask)
        groups = mixer.n_groups * mixer.ssm_state_size
        x, B, C = torch.split(xbc, [mixer.intermediate_size, groups, groups], dim=-1)
        shape = (batch, length, mixer.n_groups, mixer.ssm_state_size)
        y = mamba2_chunk_scan(x.view(batch, length, mixer.num_heads, mixer.head_dim), dt.detach(),
                              -torch.exp(mixer.A_log.detach().float()), B.detach().view(shape),
                              C.detach().view(shape), chunk_size=mixer.chunk_size, D=mixer.D, z=None,
                              dt_bias=mixer.dt_bias.detach(), dt_softplus=True, dt_limit=mixer.time_step_limit)
        y = mixer.norm(y.reshape(batch, length, -1), gate)
        return mixer.out_proj(y.to(hidden_states.dtype))
    return forward


def gated_rms_norm(norm: Any) -> Callable[..., torch.Tensor]:
    """Mamba-2's MambaRMSNormGated: ``y * SiLU(gate)`` by the uniform rule (SiLU linearised), then each
    group's RMS normalisation with 1/rms detached."""
    def forward(hidden_states, gate=None):
        dtype = hidden_states.dtype
        h = hidden_states.to(torch.float32)
        if gate is not None:
            h = half_product(h, linearised(F.silu, gate.to(torch.float32)))
        grouped = h.view(*h.shape[:-1], h.shape[-1] // norm.group_size, norm.group_size)
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True).detach() + norm.variance_epsilon)
        return norm.weight * grouped.view(h.shape).to(dtype)
    return forward


def _gated_norm_probe(norm: Any, generator: torch.Generator) -> tuple[tuple, dict]:
    (y,), _ = _hidden_probe(lambda m: m.weight.shape[0])(norm, generator)
    return (y, torch.randn(y.shape, generator=generator).to(y)), {}


# -- RWKV ----------------------------------------------------------------------------------------------------
def _shift_mix(module: Any, hidden: torch.Tensor, *names: str) -> list[torch.Tensor]:
    """``hidden * mu + shifted * (1 - mu)`` for each time-mix parameter ``mu`` named (linear in hidden)."""
    shifted = module.time_shift(hidden)
    return [hidden * getattr(module, n) + shifted * (1 - getattr(module, n)) for n in names]


def rwkv_time_mixing(att: Any) -> Callable[..., tuple[torch.Tensor, None]]:
    """RWKV-4 time mixing: the keys (hence the WKV weights exp(k - w (t-1-i)) and their normaliser) and the
    receptance gate sigmoid(r) detached: the output is linear in the values."""
    def forward(hidden, state=None, use_cache=False):
        _no_cache("RWKV's time mixing", state)
        key, value, receptance = _shift_mix(att, hidden, "time_mix_key", "time_mix_value", "time_mix_receptance")
        wkv, _ = rwkv_linear_attention(att.time_decay, att.time_first, att.key(key).detach(), att.value(value))
        return att.output(torch.sigmoid(att.receptance(receptance)).detach() * wkv), None
    return forward


def rwkv_channel_mixing(ffn: Any) -> Callable[..., tuple[torch.Tensor, None]]:
    """RWKV-4 channel mixing: relu(k)^2 linearised (factor relu(k)), the receptance gate detached."""
    def forward(hidden, state=None):
        _no_cache("RWKV's channel mixing", state)
        key, receptance = _shift_mix(ffn, hidden, "time_mix_key", "time_mix_receptance")
        value = ffn.value(linearised(lambda k: torch.square(torch.relu(k)), ffn.key(key)))
        return torch.sigmoid(ffn.receptance(receptance)).detach() * value, None
    return forward


# -- Griffin (RecurrentGemma) --------------------------------------------------------------------------------
def _rglru(lru: Any, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """The RG-LRU from an empty state with a_t, the input gate and sqrt(1 - a_t^2) detached: linear in x."""
    batch, length, width = x.shape
    with onloaded(lru), torch.no_grad():  # its gate weights are read outside its forward
        log_a, input_gate = _gates(lru, x.reshape(batch * length, width))
    log_a, input_gate = log_a.view(x.shape), input_gate.view(x.shape)
    reset = position_ids[:, :, None] == 0
    multiplier = torch.sqrt(1 - torch.exp(2 * log_a))
    multiplier = reset + ~reset * multiplier
    normalized = x * input_gate * multiplier.type(x.dtype)
    lru.recurrent_states = None
    hidden, lru.recurrent_states = lru._rnn_scan(normalized, torch.exp(log_a), reset, None)
    return hidden


def griffin_recurrent_block(block: Any) -> Callable[..., tuple[torch.Tensor, None]]:
    """Griffin's recurrent block: GELU(linear_y) linearised, the RG-LRU's gates detached (:func:`_rglru`),
    their product by the uniform rule."""
    def forward(input_states, position_ids, attention_mask=None, use_cache=False, **kwargs):
        if use_cache:
            raise PrunescopeError("lrp runs Griffin's recurrent block without a cache (use_cache=False)")
        length = input_states.shape[1]
        y_branch = linearised(block.act_fn, block.linear_y(input_states))
        x_branch = block.conv_1d(block.linear_x(input_states).transpose(1, 2))[..., :length]
        block.conv1d_state = None
        x_branch = _rglru(block.rg_lru, x_branch.transpose(1, 2), position_ids)
        return block.linear_out(half_product(x_branch, y_branch)), None
    return forward


def _recurrent_block_probe(block: Any, generator: torch.Generator) -> tuple[tuple, dict]:
    (x,), _ = _hidden_probe(lambda m: m.hidden_size)(block, generator)
    return (x, torch.arange(PROBE_LENGTH, device=x.device)[None]), {"attention_mask": None, "use_cache": False}


def gated_mlp(mlp: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A gated MLP ``down(act(gate(x)) * up(x))`` (Griffin's, Llama-style MLPs of the hybrids): the activation
    linearised, its product with up by the uniform rule."""
    def forward(hidden_states):
        gate = linearised(mlp.act_fn, mlp.gate_proj(hidden_states))
        return mlp.down_proj(half_product(gate, mlp.up_proj(hidden_states)))
    return forward


# -- mixture-of-experts --------------------------------------------------------------------------------------
def routed_experts(experts: Any) -> Callable[..., torch.Tensor]:
    """A transformers experts module (3D expert weights, :mod:`analysis.models.experts`): the routing weights
    detached (gates computed from the data), each expert's activation linearised and ``act(gate) * up`` split by
    the uniform rule; the same loop as the neuron site's, so the neurons stay hookable under LRP. Experts with
    their own gating function (``_apply_gate`` overridden, e.g. a clamped one) are refused."""
    if experts.has_gate and type(experts)._apply_gate is not _default_apply_gate:
        raise PrunescopeError(f"lrp does not know the gating of {type(experts).__name__}")

    def activate(projected: torch.Tensor) -> torch.Tensor:
        if not experts.has_gate:
            return linearised(experts.act_fn, projected)
        gate, up = projected.chunk(2, dim=-1)
        return half_product(linearised(experts.act_fn, gate), up)

    def forward(hidden_states, top_k_index, top_k_weights):
        return experts_loop(experts, hidden_states, top_k_index, top_k_weights.detach(), activate)
    return forward


def _experts_probe(experts: Any, generator: torch.Generator) -> tuple[tuple, dict]:
    """PROBE_LENGTH random tokens, each routed to two distinct random experts with random weights."""
    weight = experts.down_proj
    hidden = torch.randn(PROBE_LENGTH, weight.shape[1] if not experts.is_transposed else weight.shape[2],
                         generator=generator)
    k = min(2, experts.num_experts)
    index = torch.stack([torch.randperm(experts.num_experts, generator=generator)[:k] for _ in range(PROBE_LENGTH)])
    weights = torch.rand(PROBE_LENGTH, k, generator=generator).softmax(-1)
    device, dtype = weight.device, weight.dtype
    return (hidden.to(device, dtype), index.to(device), weights.to(device, dtype)), {}


EXPERTS_RULE = Rule(routed_experts, _experts_probe)  # name each experts class of a family's MoE with it


def own_forward(module: Any) -> Callable[..., torch.Tensor]:
    """The module's own forward: for modules that only compute detached factors (Falcon-Mamba's weightless
    RMS norms of dt, B and C), which the generic norm rule must not take for a norm on the relevance path."""
    return type(module).forward.__get__(module)


def _buffer_probe(module: Any, generator: torch.Generator) -> tuple[tuple, dict]:
    """A random [1, PROBE_LENGTH, width] input of a module whose only tensor is its ``weight`` buffer."""
    weight = module.weight
    return (torch.randn(1, PROBE_LENGTH, weight.shape[-1], generator=generator).to(weight.device, weight.dtype),), {}


def _hidden_size(module: Any) -> int:
    return module.hidden_size


def _rwkv_width(module: Any) -> int:
    return module.time_mix_key.shape[-1]


MAMBA: Mapping[str, Rule] = {"MambaMixer": Rule(mamba_mixer, _hidden_probe(_hidden_size)),
                             "FalconMambaMixer": Rule(mamba_mixer, _hidden_probe(_hidden_size)),
                             "FalconMambaWeightlessRMSNorm": Rule(own_forward, _buffer_probe)}
MAMBA2: Mapping[str, Rule] = {"Mamba2Mixer": Rule(mamba2_mixer, _hidden_probe(_hidden_size)),
                              "MambaRMSNormGated": Rule(gated_rms_norm, _gated_norm_probe)}
RWKV: Mapping[str, Rule] = {"RwkvSelfAttention": Rule(rwkv_time_mixing, _hidden_probe(_rwkv_width)),
                            "RwkvFeedForward": Rule(rwkv_channel_mixing, _hidden_probe(_rwkv_width))}
GRIFFIN: Mapping[str, Rule] = {"RecurrentGemmaRecurrentBlock": Rule(griffin_recurrent_block, _recurrent_block_probe),
                               "RecurrentGemmaMlp": Rule(gated_mlp, _hidden_probe(_hidden_size))}
TRANSFORMER: Mapping[str, Rule] = {}  # softmax attention and norms only: the caller's generic part
