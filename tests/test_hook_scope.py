"""Hooks on a shared model are scoped and locked: after an exception inside a hook scope or inside a hook
during the forward (as in captum's hook-removal tests), every module's hook dicts, the adapter's block list
and the model's output are exactly what they were; and a second thread cannot hook the model while another
holds a scope on it."""

from __future__ import annotations

import threading

import pytest
import torch

from analysis.models.hooks import hook_scope, model_lock
from analysis.models.tiny import TINY_FAMILIES
from analysis.pruning import NeuronMask

pytestmark = pytest.mark.usefixtures("one_thread")

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
              "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


class Boom(Exception):
    pass


def _hooks(model: torch.nn.Module) -> dict:
    """Every module's hook dicts, copied (hook ids and functions)."""
    return {name: tuple(dict(getattr(module, d)) for d in HOOK_DICTS) for name, module in model.named_modules()}


def _n_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _blocks(loaded) -> tuple:
    adapter = loaded.adapter
    container = getattr(adapter._layers_parent, adapter._layers_attr)
    return container, list(container)


def _ids(loaded) -> torch.Tensor:
    return torch.tensor([loaded.tokenizer.encode("the cat is big and the dog is small")], device=loaded.device)


def _logits(loaded) -> torch.Tensor:
    with loaded.lock, torch.no_grad():
        return loaded.model(input_ids=_ids(loaded), use_cache=False).logits


class Restored:
    """Snapshot hooks, blocks and output on entry; on exit check they are all back (and that ``Boom`` came)."""

    def __init__(self, loaded):
        self.loaded = loaded

    def __enter__(self):
        self.hooks, (self.container, self.blocks) = _hooks(self.loaded.model), _blocks(self.loaded)
        self.logits, self.n_before = _logits(self.loaded), _n_hooks(self.loaded.model)
        self.modules = list(self.loaded.model.modules())
        self.raises = pytest.raises(Boom)
        self.raises.__enter__()
        return self

    def __exit__(self, *exc):
        caught = self.raises.__exit__(*exc)
        container, blocks = _blocks(self.loaded)
        assert _hooks(self.loaded.model) == self.hooks
        assert container is self.container and all(a is b for a, b in zip(blocks, self.blocks, strict=True))
        assert torch.equal(_logits(self.loaded), self.logits)
        return caught

    def hooked(self) -> bool:
        """True when hooks beyond those present on entry are on the model's modules right now (counted over the
        modules seen on entry: a truncated continuation hides the lower blocks, and transformers keeps output
        recording hooks of its own on them)."""
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in self.modules) > self.n_before


def _raiser(restored: Restored, layer: int):
    """A site function that raises at ``layer``, after checking the scope's hooks are really on the model."""
    def fn(at: int, activation: torch.Tensor):
        assert restored.hooked()
        if at == layer:
            raise Boom
    return fn


@pytest.mark.parametrize("site", ["hook_sites", "hook_block_inputs"])
@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_a_hook_raising_leaves_no_trace(tiny_loaded, model_type, site):
    loaded = tiny_loaded(model_type)
    with Restored(loaded) as restored:
        with getattr(loaded.adapter, site)(_raiser(restored, loaded.n_layers - 1)):
            loaded.model(input_ids=_ids(loaded), use_cache=False)


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_hook_sites_raising_in_the_scope_leaves_no_trace(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    with Restored(loaded) as restored:
        with loaded.adapter.hook_sites(lambda layer, act: act * 0.5):
            changed = _logits(loaded)
            assert restored.hooked() and not torch.equal(changed, restored.logits)
            raise Boom


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_mask_applied_raising_leaves_no_trace(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    mask = NeuronMask.from_pairs((layer, i) for layer in range(loaded.n_layers) for i in range(0, 16, 2))
    with Restored(loaded) as restored:  # raised in the scope, after a masked forward
        with mask.applied(loaded):
            assert restored.hooked() and not torch.equal(_logits(loaded), restored.logits)
            raise Boom
    last = loaded.adapter.block(loaded.n_layers - 1)
    with Restored(loaded) as restored:  # raised during the forward, under session(mask)
        def boom(*_):
            if _n_hooks(loaded.model) > restored.n_before + 1:  # the mask's hooks are on, beyond this one
                raise Boom

        handle = last.register_forward_hook(boom)
        try:
            with loaded.session(mask):
                loaded.model(input_ids=_ids(loaded), use_cache=False)
        finally:
            handle.remove()


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_continuation_raising_restores_the_block_list(tiny_loaded, model_type):
    """continue_from truncates the block list and feeds a block input by hook; a raise in a site hook undoes both."""
    loaded = tiny_loaded(model_type)
    adapter = loaded.adapter
    start = adapter.layer_chunk_multiple()
    if start >= adapter.n_layers:
        pytest.skip("no continuation start above layer 0")
    ids = _ids(loaded)
    c = adapter.continuation_tokens
    with torch.no_grad():
        prefix = adapter.run_prefix(ids[:, :-c])
        block_input = torch.zeros(1, c, loaded.model.config.hidden_size, dtype=loaded.dtype)
        with Restored(loaded) as restored:
            def fn(layer, act):
                assert restored.hooked() and len(_blocks(loaded)[0]) == adapter.n_layers - start  # truncated
                raise Boom
            with adapter.hook_sites(fn, layers=[adapter.n_layers - 1]):
                adapter.continue_from(prefix, ids[:, -c:], 1, start_layer=start, block_input=block_input)


def _captures():
    from analysis.attribution.tokens import token_relevance
    from analysis.implicit_attention.griffin import capture_griffin, griffin_attention_maps
    from analysis.implicit_attention.lfm2 import capture_lfm2
    from analysis.implicit_attention.mamba import capture_mamba
    from analysis.implicit_attention.rwkv import capture_rwkv
    from analysis.implicit_attention.xlstm import capture_xlstm

    def relevance(loaded):
        return token_relevance(loaded, "the cat is big and the dog", "gradattn")

    return [("mamba", capture_mamba), ("mamba2", capture_mamba), ("rwkv", capture_rwkv),
            ("recurrent_gemma", capture_griffin), ("recurrent_gemma", griffin_attention_maps),
            ("mamba", relevance), ("rwkv", relevance), ("recurrent_gemma", relevance), ("lfm2", capture_lfm2),
            ("lfm2", relevance), ("xlstm", capture_xlstm), ("xlstm", relevance)]


@pytest.mark.parametrize("case", range(len(_captures())))
def test_implicit_attention_captures_raising_leave_no_trace(tiny_loaded, case):
    """A raise in the last block during a capture's forward (gradattn: its grad-enabled forward) unhooks it."""
    model_type, capture = _captures()[case]
    loaded = tiny_loaded(model_type)
    relevance = capture.__name__ == "relevance"
    with Restored(loaded) as restored:
        def boom(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if _n_hooks(loaded.model) > restored.n_before + 1 and (hidden.requires_grad or not relevance):
                raise Boom  # the capture's hooks are on (beyond this one), and it is the forward we want

        handle = loaded.adapter.block(loaded.n_layers - 1).register_forward_hook(boom)
        try:
            capture(loaded) if relevance else capture(loaded, _ids(loaded)[0])
        finally:
            handle.remove()


def test_a_second_thread_waits_for_the_first_scope(tiny_loaded):
    loaded = tiny_loaded("llama")
    model, adapter = loaded.model, loaded.adapter
    a_inside, a_release, b_trying, b_inside = (threading.Event() for _ in range(4))
    order: list[str] = []
    a_calls: list[int] = []
    seen_by_b: dict = {}
    errors: list[BaseException] = []

    def a_hook(module, args, output):
        a_calls.append(1)

    def thread_a():
        try:
            with hook_scope(model) as add:
                add(adapter.block(0), a_hook)
                a_inside.set()
                assert a_release.wait(60)
                order.append("a leaves")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def thread_b():
        try:
            b_trying.set()
            with adapter.hook_sites(lambda layer, act: None):
                order.append("b enters")
                b_inside.set()
                seen_by_b["hooks"] = [fn for m in model.modules() for fn in m._forward_hooks.values()]
                with torch.no_grad():
                    model(input_ids=_ids(loaded), use_cache=False)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    hooks_before = _n_hooks(model)  # transformers keeps output-recording hooks once attentions were asked for
    a = threading.Thread(target=thread_a)
    a.start()
    assert a_inside.wait(60)
    probe = threading.Thread(target=lambda: seen_by_b.setdefault("free", loaded.lock.acquire(blocking=False)))
    probe.start()
    probe.join(60)
    assert seen_by_b["free"] is False  # another thread cannot take the lock while A is in its scope
    b = threading.Thread(target=thread_b)
    b.start()
    assert b_trying.wait(60)
    b.join(timeout=0.3)
    assert b.is_alive() and not b_inside.is_set()  # B is blocked at the scope's entry
    a_release.set()
    a.join(60)
    b.join(60)
    assert not a.is_alive() and not b.is_alive() and not errors
    assert order == ["a leaves", "b enters"]
    assert a_hook not in seen_by_b["hooks"] and not a_calls  # B's forward never ran A's hook
    assert _n_hooks(model) == hooks_before


def test_the_lock_is_reentrant_and_shared(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    assert loaded.lock is loaded.adapter.lock is model_lock(loaded.model)
    mask = NeuronMask.from_pairs([(0, 1), (1, 3)])
    seen, hooks_before = [], _n_hooks(loaded.model)
    with loaded.session(mask), loaded.lock:  # the same thread re-enters through every site
        with loaded.adapter.hook_sites(lambda layer, act: seen.append(layer)):
            with hook_scope(loaded.model) as add:
                add(loaded.adapter.block(0), lambda *_: seen.append("block"))
                _logits(loaded)
    assert seen == [0, "block", 1]  # block 0's site, block 0's output, block 1's site
    assert _n_hooks(loaded.model) == hooks_before


def test_a_scope_only_hooks_its_own_model(tiny_loaded):
    loaded, other = tiny_loaded("llama"), tiny_loaded("gpt2")
    before = _n_hooks(other.model), _n_hooks(loaded.model)
    with pytest.raises(ValueError, match="not a module of the scope's model"):
        with hook_scope(loaded.model) as add:
            add(other.adapter.block(0), lambda *_: None)
    assert (_n_hooks(other.model), _n_hooks(loaded.model)) == before
    with pytest.raises(ValueError, match="different hook lock"):
        model_lock(loaded.model, threading.RLock())
