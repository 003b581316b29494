"""Queries (analysis/queries.py): one object per session-kept computation, its key and its run; and the pages
build no key by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from analysis.attention import attention_maps
from analysis.attribution.tokens import token_relevance
from analysis.head_grid import head_grid
from analysis.models import load_model
from analysis.queries import HeadGridQuery, MapsQuery, RelevanceQuery, StoredScoresQuery

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
TEXT = "a:3 b:5 | a:"


@pytest.fixture(scope="module")
def mamba():
    return load_model("toy-mamba", device="cpu")


def test_keys_name_the_model_dtype_and_every_setting(mamba):
    key = MapsQuery(TEXT, "s6", "mean", (1,)).key(mamba)
    assert key == MapsQuery(TEXT, "s6", "mean", (1,)).key(mamba)  # equal settings: one result
    assert key[:3] == ("attention-maps", mamba.fingerprint(), "float32")
    others = [MapsQuery(TEXT, "unified", "mean", (1,)), MapsQuery(TEXT, "s6", "absmean", (1,)),
              MapsQuery(TEXT, "s6", "mean", (2,)), MapsQuery(TEXT + " ", "s6", "mean", (1,)),
              HeadGridQuery(TEXT, "s6")]
    assert len({key, *(q.key(mamba) for q in others)}) == 1 + len(others)
    transformer = load_model("toy-transformer", device="cpu")
    assert MapsQuery(TEXT).key(transformer) != MapsQuery(TEXT).key(mamba)  # another model's weights
    assert StoredScoresQuery(8, 2, 4).key(mamba) != StoredScoresQuery(8, 2, 8).key(mamba)


def test_runs_equal_the_library_calls(mamba):
    maps = MapsQuery(TEXT, "unified", "absmean", (0, 2)).run(mamba)
    direct = attention_maps(mamba, TEXT, form="unified", reduce="absmean", layers=[0, 2])
    assert maps.layers == [0, 2] and torch.equal(maps.attn, direct.attn)
    relevance = RelevanceQuery(TEXT, "gxi", "s6").run(mamba)
    assert torch.equal(relevance.scores, token_relevance(mamba, TEXT, "gxi", form="s6").scores)
    grid = HeadGridQuery(TEXT, "s6").run(mamba)
    assert all(torch.equal(a, b) for a, b in zip(grid.cells[0], head_grid(mamba, TEXT, "s6").cells[0], strict=True))


def test_pages_build_no_keys_by_hand():
    """Every kept or memoised result is keyed by a request or query: no page or component writes a key tuple
    (``memo(("kind", ...``) or a fingerprint-bearing tuple itself."""
    hand_made = re.compile(r"memo\(\(|\(\s*\"[a-z-]+\",\s*\w+\.fingerprint\(\)")
    found = [f"{path.relative_to(ROOT)}:{n}" for folder in ("app", "components")
             for path in (ROOT / folder).rglob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if hand_made.search(line) and "task-upload" not in line]  # an upload is keyed by its bytes' hash
    assert found == []
