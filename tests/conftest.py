"""Shared fixtures. Unit tests use `tiny-random` (built in code, seconds); `slow` tests load the
embedded default model through the user cache (`toolkit.cache.cache_root()`), so it is dequantized and
its readout calibrated once per machine. Tests that write caches of their own use temporary ones."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LEXPROBE_QUIET", "1")


@pytest.fixture(autouse=True, scope="session")
def _hash_records(tmp_path_factory):
    """Tests record the hashes of the files they write in a store of their own, not the user's."""
    from lexprobe.toolkit.io import hashes

    store = tmp_path_factory.mktemp("hashes") / hashes.STORE
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hashes, "store_path", lambda: store)
        yield store


@pytest.fixture(scope="session")
def tiny():
    from lexprobe.toolkit.models.loader import load_model

    return load_model("tiny-random", dtype="float32")


@pytest.fixture(scope="session")
def tiny_readout(tiny):
    """A hand-made readout for the random model: a few first tokens refuse, one is expanded."""
    from lexprobe.probes.margin import Node, RefusalReadout

    tok = tiny.tokenizer
    i_tok, sorry, sure = (tok.convert_tokens_to_ids(t) for t in ("I", "S", "C"))
    follow = tok("'m", add_special_tokens=False).input_ids[0]
    return RefusalReadout(
        {
            (): Node({i_tok: 0.7, sorry: 0.95, sure: 0.05}, 0.0),
            (i_tok,): Node({follow: 0.9}, 0.7),
        },
        {"source": "tests/conftest.py", "smooth_temperature": 0.2},
    )


@pytest.fixture(scope="session")
def tiny_readout_file(tmp_path_factory, tiny_readout):
    path = tmp_path_factory.mktemp("readout") / "readout.json"
    path.write_text(tiny_readout.to_json())
    return path


@pytest.fixture(scope="session")
def default_lm():
    from lexprobe.toolkit.models.loader import load_model

    return load_model("default", dtype="float32")


@pytest.fixture(scope="session")
def default_session(default_lm):
    from lexprobe.analyses.options import ModelOptions
    from lexprobe.analyses.session import open_session

    return open_session(ModelOptions(model="default", dtype="float32"))


@pytest.fixture
def error_line(capsys):
    """Reads stderr and checks it is one line with no traceback (the bad-input contract); returns it."""

    def read() -> str:
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert "Traceback" not in err[0]
        return err[0]

    return read


@pytest.fixture(scope="session")
def readme_python_example() -> str:
    """The first python block of the README's "Python API" section."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's Python API section has no python example"
    return blocks[0]


@pytest.fixture(scope="session")
def tiny_probe(tiny):
    """A harmfulness probe for tiny-random: a seeded random read-out of block 1's input at the prompt's
    last token, bias 0."""
    import torch

    from lexprobe.probes.harmfulness import HarmfulnessProbe

    weight = torch.randn(tiny.text_config.hidden_size, generator=torch.Generator().manual_seed(4))
    return HarmfulnessProbe(weight, 0.0, 1, -1, "logistic", {"source": "tests/conftest.py"})


@pytest.fixture(scope="session")
def tiny_probe_file(tmp_path_factory, tiny_probe):
    path = tmp_path_factory.mktemp("probe") / "probe.json"
    path.write_text(tiny_probe.to_json())
    return path
