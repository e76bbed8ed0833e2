"""The default model in bf16 against float32 (slow: loads it twice). Both use the float32 readout, so
every difference is arithmetic: no margin is a placeholder, bf16 batched equals bf16 unbatched within
BF16_BATCH, and bf16 margins stay near float32's. The full 450-prompt comparison with each dtype's own
readout is `python benchmarks/gpu_check.py --device cpu` (docs/models.md, dtype table)."""

import numpy as np
import pytest

from lexprobe.toolkit.io.suites import load_suite
from lexprobe.toolkit.models.loader import load_model
from lexprobe.toolkit.scoring.scorer import Scorer

pytestmark = pytest.mark.slow

BF16_BATCH = 0.2  # max |batched - unbatched| in bf16 (measured on these 48 prompts here: 0.057)
BF16_VS_FP32 = 0.5  # max |bf16 - float32| (measured over all 450 XSTest prompts: 0.22)


@pytest.fixture(scope="module")
def margins(default_session):
    s = default_session
    texts = load_suite("xstest").frame["prompt"].tolist()[:48]
    bf16 = load_model("default", dtype="bfloat16")
    return {
        "float32": Scorer(s.lm, s.fmt, s.readout, batch_size=16).score(texts).margin,
        "bf16": Scorer(bf16, s.fmt, s.readout, batch_size=16).score(texts).margin,
        "bf16_single": Scorer(bf16, s.fmt, s.readout, batch_size=1).score(texts).margin,
    }


def test_no_placeholder_in_any_dtype(margins):
    for values in margins.values():
        assert np.isfinite(values).all() and (np.abs(values) < 100).all()


def test_bf16_batched_equals_unbatched(margins):
    assert np.abs(margins["bf16"] - margins["bf16_single"]).max() < BF16_BATCH


def test_bf16_follows_float32(margins):
    assert np.abs(margins["bf16"] - margins["float32"]).max() < BF16_VS_FP32
    clear = np.abs(margins["float32"]) > BF16_VS_FP32  # away from 0, the decision never changes
    assert ((margins["bf16"] > 0) == (margins["float32"] > 0))[clear].all()
