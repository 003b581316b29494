"""Models larger than one device: accelerate's device map, tested without a GPU by putting half the blocks of a
tiny model of every family on the CPU and half on disk (offloaded; accelerate's device-alignment hooks load each
block's weights when it runs). The same answers (also masked), IG maps, attention matrices, token relevance
(every method) and task vectors as the plain model, and the same fingerprint, so cached results are shared."""

from __future__ import annotations

import pytest
import torch

from analysis.attention import attention_maps
from analysis.attribution.propagation import LRP_FAMILIES
from analysis.attribution.runs import attribute_task
from analysis.attribution.tokens import METHODS, token_relevance
from analysis.errors import ModelLoadError
from analysis.evaluation import evaluate_task
from analysis.evaluation.task_vectors import task_vectors
from analysis.models import load_model
from analysis.models.tiny import TINY_FAMILIES
from analysis.pruning import NeuronMask
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


def half_on_disk(plain) -> dict[str, str]:
    """{module: device}: the model's blocks from the middle on to "disk", everything else to "cpu"."""
    names = {id(module): name for name, module in plain.model.named_modules()}
    blocks = [names[id(plain.adapter.block(i))] for i in range(plain.n_layers)]
    parents = {".".join(b.split(".")[:k]) for b in blocks for k in range(len(b.split(".")))}
    placement = {b: ("cpu" if i < len(blocks) // 2 else "disk") for i, b in enumerate(blocks)}
    for name, _module in plain.model.named_modules():
        inside = any(name == b or name.startswith(b + ".") for b in blocks)
        if name and not inside and name not in parents and not any(name.startswith(p + ".") for p in placement):
            if ".".join(name.split(".")[:-1]) in parents or "." not in name:
                placement[name] = "cpu"
    return placement


@pytest.mark.parametrize("model_type", [t for t in TINY_FAMILIES if t != "recurrent_gemma"])
def test_a_model_half_on_disk_answers_like_the_plain_model(tiny_dirs, tiny_loaded, model_type):
    plain = tiny_loaded(model_type)
    offloaded = load_model(tiny_dirs[model_type], device="cpu", device_map=half_on_disk(plain))
    assert offloaded.placement == "cpu+disk" and "cpu+disk" in offloaded.describe()
    assert any(p.device.type == "meta" for p in offloaded.model.parameters())  # really offloaded
    assert offloaded.fingerprint() == plain.fingerprint()  # so the results cache is shared
    task = builtin_tasks()["antonyms"]
    ours = evaluate_task(offloaded, task, 2, 6, seed=1).records.prediction.tolist()
    assert ours == evaluate_task(plain, task, 2, 6, seed=1).records.prediction.tolist()
    ids = torch.tensor([plain.tokenizer("a:1 b:2 | a:").input_ids])
    with plain.lock, offloaded.lock, torch.no_grad():
        torch.testing.assert_close(offloaded.model(ids).logits, plain.model(ids).logits, rtol=1e-5, atol=1e-5)
    mask = NeuronMask.from_pairs([(plain.n_layers - 1, i) for i in range(0, 40, 3)])  # hooks on a disk block
    masked = evaluate_task(offloaded, task, 2, 6, seed=1, mask=mask).records.prediction.tolist()
    assert masked == evaluate_task(plain, task, 2, 6, seed=1, mask=mask).records.prediction.tolist()

    def relative_error(compute) -> float:
        ours, reference = compute(offloaded), compute(plain)
        return float((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-12))

    ig = relative_error(lambda m: attribute_task(m, task, "gold", n=2, shots=1, steps=3).per_prompt)
    maps = relative_error(lambda m: attention_maps(m, "a:1 b:2 | a:").attn)  # implicit or softmax
    vectors = relative_error(lambda m: torch.tensor(task_vectors(
        m, builtin_tasks()["to-upper"], shots=1, n=3, dummy_queries=1).table.accuracy.values))
    assert max(ig, maps, vectors) < 1e-5, (ig, maps, vectors)
    methods = [m for m in METHODS if m != "lrp" or plain.family in LRP_FAMILIES]  # lrp swaps norm forwards
    relevance = {m: relative_error(lambda model, m=m: token_relevance(model, "a:1 b:2 | a:", m).scores)
                 for m in methods}
    assert max(relevance.values()) < 1e-5, relevance


def test_bad_device_maps_are_one_line(tiny_dirs):
    with pytest.raises(ModelLoadError, match="unknown device map 'everywhere'"):
        load_model(tiny_dirs["llama"], device_map="everywhere")
    with pytest.raises(ModelLoadError, match="max_memory needs a device_map"):
        load_model(tiny_dirs["llama"], max_memory={"cpu": "1GiB"})


def test_griffin_with_layers_on_disk_is_refused_in_one_line(tiny_dirs, tiny_loaded):
    """transformers' Griffin decoding step reads conv_1d.weight outside the module (a meta tensor when the
    layer is on disk): refused up front instead of a RuntimeError mid-generation."""
    plain = tiny_loaded("recurrent_gemma")
    with pytest.raises(ModelLoadError, match="cannot run with layers on disk: its decoding step reads"):
        load_model(tiny_dirs["recurrent_gemma"], device="cpu", device_map=half_on_disk(plain))


def test_the_cli_loads_with_a_device_map(tiny_dirs, tiny_loaded, capsys):
    import json

    from analysis.cli import main

    plain = tiny_loaded("llama")
    placement = json.dumps(half_on_disk(plain))
    code = main(["eval", "--model", tiny_dirs["llama"], "--task", "antonyms", "--shots", "2", "--n", "4",
                 "--device-map", placement, "--no-cache"])
    out = capsys.readouterr().out
    assert code == 0 and "cpu+disk" in out
    for option, value, message in (("--device-map", "{broken", "argument --device-map: not a JSON object"),
                                   ("--max-memory", "cpu:1GiB", "expected device=size pairs")):
        with pytest.raises(SystemExit) as exited:  # argparse's one line, exit 2
            main(["eval", "--model", tiny_dirs["llama"], "--task", "antonyms", option, value])
        assert exited.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("model_type", ["zamba2", "zamba"])
@pytest.mark.parametrize("on_disk", ["half", "all"])
def test_tied_shared_blocks_offload(tmp_path, model_type, on_disk):
    """Real Zamba checkpoints tie their shared transformer block across the layers that run it; accelerate
    indexes the tied weights under one name and failed to load (or fingerprint) a copy under its own name. With
    the copies on disk and in memory (half) or all on disk: the same fingerprint and logits as the plain model,
    and the in-memory copy still holds its weights after a forward."""
    from analysis.models.tiny import build_tiny_model

    path = build_tiny_model(model_type, tmp_path / "m", num_hidden_layers=3,
                            layers_block_type=["hybrid", "mamba", "hybrid"], tie_word_embeddings=True)
    plain = load_model(str(path), device="cpu")
    placement = half_on_disk(plain)
    if on_disk == "all":
        placement = {name: "disk" if name.startswith("model.layers") else device for name, device in placement.items()}
    offloaded = load_model(str(path), device="cpu", device_map=placement)
    assert offloaded.fingerprint() == plain.fingerprint()
    ids = torch.tensor([plain.tokenizer("a:1 b:2 | a:").input_ids])
    with plain.lock, offloaded.lock, torch.no_grad():
        torch.testing.assert_close(offloaded.model(ids).logits, plain.model(ids).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(offloaded.model(ids).logits, plain.model(ids).logits, rtol=1e-5, atol=1e-5)
    layer = offloaded.model.model.layers[0]
    shared = getattr(layer, "shared_transformer", None) or layer.shared_transf  # Zamba2's name, Zamba's
    assert all(p.device.type != "meta" for p in shared.parameters()) is (on_disk == "half")
