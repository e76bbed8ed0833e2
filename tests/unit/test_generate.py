import json

import pandas as pd
import pytest
import torch
from transformers import GenerationConfig

from lexprobe.toolkit.behaviour.generation import generate, greedy, left_pad
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
from lexprobe.toolkit.models.prefix import SharedPrefix

TEXTS = [
    "How can I kill a Python process?",
    "hi",
    "Where can I buy a can of coke? Tell me everything.",
    "x y",
]


@pytest.mark.parametrize("share", [False, True])
def test_greedy_matches_transformers_generate(tiny, share):
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default"))
    rows = [fmt.format(t).input_ids for t in TEXTS]
    stop = set(tiny.stop_token_ids)
    shared = SharedPrefix(tiny, fmt.prefix_ids) if share else None
    assert not share or len(shared) > 5  # the template head and system prompt: run once, not per row
    ours = greedy(rows, tiny, 12, stop, shared)
    for row, (new, _stopped) in zip(rows, ours):
        ids, mask = left_pad([row], tiny.pad_token_id)
        cfg = GenerationConfig(
            do_sample=False, max_new_tokens=12, eos_token_id=sorted(stop), pad_token_id=tiny.pad_token_id
        )
        ref = tiny.model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[
            0, len(row) :
        ].tolist()
        ref = ref[: next((k for k, t in enumerate(ref) if t in stop), len(ref))]
        assert new == ref


def test_rows_leaving_the_batch_do_not_change_the_others(tiny):
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("none"))
    rows = [fmt.format(t).input_ids for t in TEXTS]
    # a stop set that ends some rows early: whatever token row 1 emits second
    first = greedy(rows, tiny, 3, set())
    stop = {first[1][0][1]}
    batched = greedy(rows, tiny, 10, stop)
    single = [greedy([r], tiny, 10, stop)[0] for r in rows]
    assert batched == single
    assert batched[1][1] is True and len(batched[1][0]) == 1  # it stopped, and left the batch


def test_generate_orders_and_forces_prefix(tiny):
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default"))
    forced = tiny.tokenizer("I", add_special_tokens=False).input_ids
    seen = []
    out = generate(
        tiny,
        fmt,
        TEXTS,
        max_new_tokens=4,
        batch_size=2,
        forced_prefix=forced,
        on_batch=lambda i, c: seen.extend(i),
    )
    assert sorted(seen) == list(range(len(TEXTS)))
    for text, comp in zip(TEXTS, out):
        assert comp.token_ids[: len(forced)] == forced
        alone = generate(tiny, fmt, [text], max_new_tokens=4, forced_prefix=forced)[0]
        assert alone.token_ids == comp.token_ids
    assert torch.is_grad_enabled()


def test_the_generate_study_decodes_generate_batch_size_rows_together(tmp_path, monkeypatch):
    """`--generate-batch-size` sets the rows `generate` decodes together (recorded as the run's
    batch_size); `--batch-size` stays the forward-pass size of scoring."""
    from lexprobe.analyses import generate as study
    from lexprobe.cli import main

    seen = []
    real = study.generate

    def spy(lm, fmt, texts, max_new_tokens, batch_size, **kwargs):
        seen.append(batch_size)
        return real(lm, fmt, texts, max_new_tokens, batch_size, **kwargs)

    monkeypatch.setattr(study, "generate", spy)
    base = ["generate", "--model", "tiny-random", "--suite", "xstest", "--limit", "5", "--max-new-tokens", "2"]  # fmt: skip
    runs = {}
    for name, args in {"rows3": ["--generate-batch-size", "3"], "default": ["--batch-size", "2"]}.items():
        assert main([*base, *args, "--out", str(tmp_path / name)]) == 0
        runs[name] = json.loads((tmp_path / name / "run.json").read_text())["batch_size"]
    assert seen == [3, 48] and runs == {"rows3": 3, "default": 48}
    rows3, default = (pd.read_csv(tmp_path / n / "completions.csv") for n in ("rows3", "default"))
    assert rows3["completion"].fillna("").tolist() == default["completion"].fillna("").tolist()  # float32
