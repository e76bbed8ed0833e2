"""lexprobe's integrated gradients vs captum's `LLMGradientAttribution` + `LayerIntegratedGradients`,
side by side in one run: same model, same prompts, same number of steps, same integration rule, same
rows per batch, same reference token (the pad token) for the attributed inputs.

    python benchmarks/attribution.py [--model default] [--ids 10 59] [--steps 16] [--rule gausslegendre]

captum (the naive way): the whole chat-formatted prompt is the input, every token (template and system
prompt included) moves to the reference, every step runs the full sequence and full-vocabulary logits
at every position; the attributed function is log P(greedy first response token).
lexprobe: only the user tokens move; the template head and system prompt come from a KV cache computed
once; the batch holds the interpolation steps of one suffix (user tokens, template tail, readout tree);
logits only at the readout positions; the attributed function is the refusal (decision) margin.

Each side's completeness error |sum(attr) - (f(x) - f(b))| / |f(x) - f(b)| is for its own function.
Prints per prompt and in total: CPU seconds of this process (on a shared machine wall time mostly
measures the neighbours; run with OMP_NUM_THREADS=1 so CPU time is the work), their ratio
(captum / lexprobe) and both completeness errors.

`--match-default` runs lexprobe with its defaults instead (adaptive rule, refined until the error is
under 5%) and gives captum as many steps as lexprobe ended with (`--rule` for captum's side): equal
step counts, and the completeness each side gets from them.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch


def captum_ig(lm, text: str, target_id: int, steps: int, batch: int, rule: str) -> tuple[float, float, int]:
    """(seconds, completeness error, tokens) for captum's LLM IG on the full chat text."""
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    from lexprobe.toolkit.attribution.gradient import completeness_error

    start = time.process_time()
    lig = LayerIntegratedGradients(lm.model, lm.embed)
    llm_attr = LLMGradientAttribution(lig, lm.tokenizer)
    inp = TextTokenInput(text, lm.tokenizer, baselines=lm.pad_token_id)
    res = llm_attr.attribute(
        inp, target=torch.tensor([target_id]), n_steps=steps, internal_batch_size=batch, method=rule
    )
    seconds = time.process_time() - start
    present = inp.to_tensor()  # [1, seq] interpretable input: 1 = the token, 0 = the reference
    ids = inp.to_model_input(present)  # [1, seq] token ids
    reference = inp.to_model_input(torch.zeros_like(present))  # every token -> the pad token

    def logp(input_ids):
        with torch.no_grad():
            logits = lm.model(input_ids=input_ids).logits[0, -1].double()
        return float(torch.log_softmax(logits, -1)[target_id])

    f_x, f_b = logp(ids), logp(reference)
    total = float(res.seq_attr.sum())
    return seconds, completeness_error(total, f_x, f_b), ids.shape[1]


def lexprobe_ig(scorer, text: str, steps: int | None, batch: int, rule: str) -> tuple[float, float, int, int]:
    """(seconds, completeness error, suffix tokens, steps) for lexprobe's IG at exactly `steps` steps, or
    with its defaults (adaptive rule, refined until the error is under 5%) when `steps` is None."""
    from lexprobe.toolkit.attribution import AttributionSettings, PromptTarget, attribute

    start = time.process_time()
    if steps is None:
        settings = AttributionSettings(batch_size=batch)
    else:
        settings = AttributionSettings(n_steps=steps, max_steps=steps, rule=rule, batch_size=batch)
    target = PromptTarget(scorer, text, settings)
    out = attribute(target, "integrated_gradients")
    info = out.info
    return time.process_time() - start, info["completeness_error"], target._batch.ids.shape[1], info["steps"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--system-prompt", default="model-default")
    p.add_argument("--readout", default=None, help="readout JSON (else the cached/calibrated one)")
    p.add_argument("--suite", default="xstest")
    p.add_argument("--ids", nargs="+", default=["10", "59"])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--rule", default="gausslegendre", help="gausslegendre (captum's default) | trapezoid")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass, both sides")
    p.add_argument(
        "--match-default",
        action="store_true",
        help="run lexprobe with its defaults (adaptive, < 5%% error) and captum with as many steps as that took",
    )
    a = p.parse_args()
    os.environ.setdefault("LEXPROBE_QUIET", "1")
    warnings.filterwarnings("ignore", module="captum")  # its LLMAttribution deprecation notes

    from lexprobe.analyses.options import ModelOptions
    from lexprobe.analyses.session import open_session
    from lexprobe.toolkit.io.suites import load_suite
    from lexprobe.toolkit.scoring.scorer import Scorer

    session = open_session(
        ModelOptions(model=a.model, system_prompt=a.system_prompt, dtype=a.dtype, readout=a.readout)
    )
    lm = session.lm
    scorer = Scorer(lm, session.fmt, session.readout, batch_size=a.batch_size)
    suite = load_suite(a.suite).select(ids=a.ids)
    from lexprobe.toolkit.models.language import nlp

    nlp()  # load spaCy (word segmentation) before the clock starts
    captum_rule = "riemann_trapezoid" if a.rule == "trapezoid" else a.rule
    steps = (
        "lexprobe defaults; captum: as many steps" if a.match_default else f"{a.steps} steps, rule {a.rule}"
    )
    print(
        f"model {a.model} ({lm.dtype}), system prompt {a.system_prompt}, {steps}, captum rule {captum_rule}, "
        f"batch {a.batch_size}, threads {torch.get_num_threads()}"
    )
    print(
        f"{'id':>5} {'tokens c/l':>10} {'steps':>5} {'captum cpu-s':>12} {'lexprobe cpu-s':>14} {'ratio':>6} "
        f"{'err captum':>10} {'err lexprobe':>12}"
    )
    totals = np.zeros(2)
    errors = []
    for row in suite.frame.itertuples():
        prompt = session.fmt.format(row.prompt)
        with torch.no_grad():
            first = int(lm.model(input_ids=torch.tensor([prompt.input_ids])).logits[0, -1].argmax())
        want = None if a.match_default else a.steps
        l_s, l_err, l_tok, n = lexprobe_ig(scorer, row.prompt, want, a.batch_size, a.rule)
        c_s, c_err, c_tok = captum_ig(lm, prompt.text, first, n, a.batch_size, captum_rule)
        totals += (c_s, l_s)
        errors.append((c_err, l_err))
        print(
            f"{row.id:>5} {f'{c_tok}/{l_tok}':>10} {n:>5} {c_s:12.1f} {l_s:14.1f} {c_s / l_s:6.2f} "
            f"{c_err:10.4f} {l_err:12.4f}",
            flush=True,
        )
    errs = np.array(errors)
    print(
        f"total: captum {totals[0]:.1f} cpu-s, lexprobe {totals[1]:.1f} cpu-s, ratio {totals[0] / totals[1]:.2f}x; "
        f"mean completeness error captum {errs[:, 0].mean():.4f}, lexprobe {errs[:, 1].mean():.4f}"
    )


if __name__ == "__main__":
    main()
