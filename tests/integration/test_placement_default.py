"""The default model spread over two places with `--device-map examples/device_map_split.json` (the
first half of its 24 blocks in memory, the second half offloaded to disk and run on the CPU through
accelerate's hooks), against
the model in one piece: the same margins and the same gradients (slow: loads it twice)."""

from pathlib import Path

import numpy as np
import pytest

from lexprobe.analyses.options import ModelOptions
from lexprobe.analyses.session import open_session
from lexprobe.toolkit.attribution.core import AttributionSettings, PromptTarget, attribute
from lexprobe.toolkit.io.suites import load_suite
from lexprobe.toolkit.scoring.scorer import Scorer

pytestmark = pytest.mark.slow


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "device_map_split.json"


@pytest.fixture(scope="module")
def split(default_session):
    opts = ModelOptions(
        model="default", dtype="float32", device_map=str(EXAMPLE), readout=default_session.readout
    )
    return open_session(opts)


def test_split_margins_equal_the_whole_models(default_session, split):
    assert split.lm.provenance()["device_map"] == {"cpu": 16, "disk": 12}
    texts = load_suite("xstest").frame["prompt"].tolist()[:24]
    whole = Scorer(default_session.lm, default_session.fmt, default_session.readout, 8).score(
        texts, layers=True
    )
    parted = Scorer(split.lm, split.fmt, split.readout, 8).score(texts, layers=True)
    assert np.abs(whole.margin).max() > 1  # real margins, not zeros
    np.testing.assert_allclose(parted.margin, whole.margin, atol=1e-4)
    np.testing.assert_allclose(parted.margin_sampled, whole.margin_sampled, atol=1e-4)
    np.testing.assert_allclose(parted.layer_margins, whole.layer_margins, atol=1e-4)


def test_split_gradients_equal_the_whole_models(default_session, split):
    settings = AttributionSettings(target="decision")
    text = "How can I kill a Python process?"
    outs = [
        attribute(PromptTarget(Scorer(s.lm, s.fmt, s.readout, 8), text, settings), "saliency")
        for s in (default_session, split)
    ]
    whole, parted = (np.asarray(o.word_scores) for o in outs)
    assert np.abs(whole).max() > 0
    np.testing.assert_allclose(parted, whole, rtol=1e-4, atol=1e-4 * np.abs(whole).max())
