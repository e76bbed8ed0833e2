"""The Python API: load a model once, then score, generate, attribute, perturb and diagnose in memory.

    import lexprobe
    probe = lexprobe.load("default")                 # the model and its refusal readout, loaded once
    scores = probe.score("xstest", types=["homonyms"])
    attr = probe.attribute(["How do I kill a Python process?"], methods=["saliency", "occlusion"])
    attr.show()                                      # or display `attr` in a notebook
    attr.save("runs/kill")                           # nothing is written unless asked

Prompts may be one string, a list of strings, a DataFrame with a `prompt` column (and optionally `id`,
`type`, `label`), a bundled suite name (`lexprobe.list_suites()`) or a path to a CSV/TSV/JSONL/Parquet
file. Every result has `to_frame()`, `save(dir, overwrite=False)`, `load(dir)`, `show()` and a notebook
view.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from lexprobe.analyses import attribute as _attribute
from lexprobe.analyses import contrast as _contrast
from lexprobe.analyses import diagnose as _diagnose
from lexprobe.analyses import direction as _direction
from lexprobe.analyses import evaluate as _evaluate
from lexprobe.analyses import generate as _generate
from lexprobe.analyses import harmfulness as _harmfulness
from lexprobe.analyses import minimal_pairs as _pairs
from lexprobe.analyses import mitigate as _mitigate
from lexprobe.analyses import pathway as _pathway
from lexprobe.analyses import score as _score
from lexprobe.analyses.options import ModelOptions, SuiteOptions
from lexprobe.analyses.session import Session, open_session, session_from_model
from lexprobe.arguments import attribution_settings, checked
from lexprobe.probes.margin import RefusalReadout
from lexprobe.toolkit import config as _values
from lexprobe.toolkit.attribution.core import needs_float32
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.io.results import Result, read_run
from lexprobe.toolkit.io.suites import SURROGATE, Prompts, as_suite, listed
from lexprobe.toolkit.models.devices import dtype_name


@checked
def load(
    model: str = "default",
    *,
    system_prompt: str = "model-default",
    chat_template=None,
    dtype: str = "auto",
    device: str = "auto",
    readout: str | Path | RefusalReadout | None = None,
    weights_sha256: str | None = None,
    batch_size: int = 16,
    generate_batch_size: int = 48,
    attribution: bool = False,
    recalibrate: bool = False,
    verify_weights: bool = False,
) -> Probe:
    """A model spec (`default`, `smollm2`, `gemma3`, `tiny-random`, a Hugging Face directory, a cached hub
    id or a `.gguf` file) under one system-prompt condition, with its refusal readout (shipped with lexprobe for
    the default model's preset conditions, else calibrated once per model, dtype and condition, then
    cached; `recalibrate=True` calibrates it here all the same; or `readout`, a file or a
    `RefusalReadout`). `chat_template`: for a model whose files have none, or to replace its own (a
    family of `lexprobe templates`, a Jinja file, or "none" for the raw prompt of a base model; the
    embedded `gemma3` takes "gemma" unless told otherwise). `dtype="auto"` is bfloat16 on CUDA and on a CPU
    with native bf16, float32 on other CPUs, and float32 everywhere with `attribution=True`. Weights files are hashed once and again when they change, or every time
    with `verify_weights=True`. `batch_size`: prompts in one forward pass; `generate_batch_size`: completions
    generated together."""
    options = ModelOptions(
        model=model,
        system_prompt=system_prompt,
        chat_template=chat_template,
        dtype=dtype,
        device=device,
        weights_sha256=weights_sha256,
        batch_size=batch_size,
        generate_batch_size=generate_batch_size,
        readout=readout,
        gradients=attribution,
        recalibrate=recalibrate,
        verify_weights=verify_weights,
    )
    return Probe(_said(lambda: open_session(options)), options)


def _said(open_):
    """Open a session with lexprobe's notes (the dtype `auto` chose and why, the readout taken) on
    stderr, as the CLI says them; dropped when opening fails, so only the exception speaks."""
    from lexprobe.toolkit.io.progress import NOTES, install_notes

    install_notes()
    try:
        session = open_()
    except BaseException:
        NOTES.drop()
        raise
    NOTES.flush()
    return session


class Probe:
    """A loaded model, its chat format under one system prompt, and its refusal readout."""

    def __init__(self, session: Session, options: ModelOptions):
        self.session, self.options = session, options

    @classmethod
    @checked
    def from_hf(
        cls,
        model,
        tokenizer,
        *,
        system_prompt: str = "model-default",
        chat_template=None,
        readout: str | Path | RefusalReadout | None = None,
        name: str | None = None,
        weights_sha256: str | None = None,
        batch_size: int = 16,
        generate_batch_size: int = 48,
    ) -> Probe:
        """A `*ForCausalLM` and tokenizer (with a chat template) you already loaded, on their device and
        in their dtype; the model is put in eval mode with its parameters frozen (attribution takes
        gradients with respect to the input embeddings only). The weights are hashed once for
        provenance and the readout cache, unless you pass `weights_sha256`."""
        if not (hasattr(model, "config") and hasattr(model, "parameters")) or not callable(tokenizer):
            raise InputError(
                "Probe.from_hf takes a transformers *ForCausalLM model and its tokenizer, "
                f"not {type(model).__name__} and {type(tokenizer).__name__}"
            )
        options = ModelOptions(
            model=name or getattr(model.config, "name_or_path", "") or type(model).__name__,
            system_prompt=system_prompt,
            chat_template=chat_template,
            readout=readout,
            batch_size=batch_size,
            generate_batch_size=generate_batch_size,
        )
        return cls(_said(lambda: session_from_model(model, tokenizer, options, weights_sha256)), options)

    # ------------------------------------------------------------------ what is loaded
    @property
    def model(self):
        return self.session.lm.model

    @property
    def tokenizer(self):
        return self.session.lm.tokenizer

    @property
    def readout(self) -> RefusalReadout:
        return self.session.readout

    def __repr__(self) -> str:
        lm = self.session.lm
        dtype = dtype_name(lm.dtype)
        return f"Probe({lm.spec!r}, {dtype} on {lm.device}, system prompt {self.session.system.name!r})"

    # ------------------------------------------------------------------ studies
    @checked
    def score(
        self,
        prompts: Prompts = "xstest",
        *,
        types=None,
        ids=None,
        limit=None,
        layers=False,
        harmfulness=False,
    ):
        """The refusal margin of every prompt (`ScoreResult`): margin > 0 where greedy decoding would
        open with a refusal, p_refuse, with `layers=True` the logit-lens margin of every layer, and with
        `harmfulness=True` the harmfulness probe's logit (> 0: represented harmful; this model's probe,
        or a probe.json / `HarmfulnessResult.probe`). `result.separation()`: each column's AUROC of
        unsafe against safe prompts."""
        config = _score.ScoreConfig(model=self.options, layers=layers, harmfulness=harmfulness)
        return _score.run(config, session=self.session, suite=as_suite(prompts, types, ids, limit))

    @checked
    def generate(self, prompts: Prompts = "xstest", *, types=None, ids=None, limit=None, max_new_tokens=128):
        """Greedy completions (`CompletionsResult`); `lexprobe.classify` labels them."""
        config = _generate.GenerateConfig(model=self.options, max_new_tokens=max_new_tokens)
        return _generate.run(config, session=self.session, suite=as_suite(prompts, types, ids, limit))

    @checked
    def attribute(
        self,
        prompts: Prompts,
        *,
        methods=("integrated_gradients",),
        types=None,
        ids=None,
        limit=None,
        faithfulness: bool = True,
        n_random: int = 3,
        contrasts: bool = False,
        pair_map: str | None = None,
        harmfulness=False,
        **settings,
    ):
        """Which of the user's words push each prompt's margin toward refusal (`AttributionResult`), by
        each method (`lexprobe.list_attribution_methods()`), with faithfulness next to a random ranking.
        `settings` are `AttributionSettings` fields: target, n_steps, max_steps, tolerance, rule,
        baseline, n_samples, replacement, group_phrases, seed."""
        settings.setdefault("batch_size", self.options.batch_size)
        auto_bf16 = self.options.dtype == "auto" and self.session.lm.dtype != torch.float32
        if auto_bf16 and needs_float32(_attribute.parse_methods(listed(methods))):
            logging.getLogger("lexprobe").warning(
                "this probe was loaded in %s for forward passes (dtype='auto'); the CLI attributes with these "
                "methods in float32: lexprobe.load(..., attribution=True) for the same numbers",
                dtype_name(self.session.lm.dtype),
            )
        config = _attribute.AttributeConfig(
            model=self.options,
            methods=listed(methods),
            settings=attribution_settings(settings),
            faithfulness=faithfulness,
            n_random=n_random,
            contrasts=contrasts,
            pair_map=pair_map,
            harmfulness=harmfulness,
        )
        return _attribute.run(config, session=self.session, suite=as_suite(prompts, types, ids, limit))

    @checked
    def perturb(
        self,
        prompts: Prompts,
        *,
        types=None,
        ids=None,
        limit=None,
        strategies=("lexicon", "auto"),
        rewrites=(),
        lexicon: str | None = None,
        min_similarity: float = 0.7,
        per_word: int = 1,
        content_words: int | None = None,
        attributions=None,
        seed: int = 0,
        harmfulness=False,
    ):
        """Swap each trigger and content word for a neutral one and measure the margin change, with
        matched controls and paired statistics (`PerturbResult`). `rewrites`: ["kill=stop,end"];
        `attributions`: an `AttributionResult` (or its attributions.csv) to correlate with;
        `harmfulness=True`: the harmfulness probe's logit of each prompt and variant beside its margin."""
        if isinstance(attributions, Result):
            attributions = attributions.to_frame()
        config = _pairs.PerturbConfig(
            model=self.options,
            strategies=listed(strategies),
            rewrites=[rewrites] if isinstance(rewrites, str) else list(rewrites),
            lexicon=lexicon,
            min_similarity=min_similarity,
            per_word=per_word,
            content_words=content_words,
            attributions=attributions,
            seed=seed,
            harmfulness=harmfulness,
        )
        return _pairs.run(config, session=self.session, suite=as_suite(prompts, types, ids, limit))

    @checked
    def pairs(self, pairs, *, seed: int = 0, harmfulness=False):
        """Margins of prompt pairs (`PairsResult`): a DataFrame or file with prompt_a and prompt_b, or a
        list of (prompt_a, prompt_b) tuples; delta = margin_b - margin_a, with paired statistics
        (`harmfulness=True`: the harmfulness probe's logits beside them)."""
        if isinstance(pairs, list | tuple):
            shaped = all(isinstance(p, list | tuple) and len(p) == 2 for p in pairs)
            text = shaped and all(isinstance(t, str) and not SURROGATE.search(t) for p in pairs for t in p)
            if not pairs or not text:
                raise InputError(
                    "pairs: give (prompt_a, prompt_b) tuples of text (no unpaired surrogates), a DataFrame "
                    "or a file with those columns"
                )
            pairs = pd.DataFrame(list(pairs), columns=["prompt_a", "prompt_b"])
        config = _pairs.PairsConfig(model=self.options, pairs=pairs, seed=seed, harmfulness=harmfulness)
        return _pairs.run_pairs(config, session=self.session)

    @checked
    def contrast(
        self,
        suite: str = "xstest",
        *,
        types=None,
        pair_map: str | None = None,
        inv: bool = True,
        inv_per_prompt: int = 1,
        min_similarity: float = 0.7,
        seed: int = 0,
        harmfulness=False,
    ):
        """Safe prompts against their paired unsafe contrasts (`ContrastResult`): gap, AUROC, DIR and INV.
        `suite`: a bundled suite name or file with a pair map (XSTest's, or `pair_map` with safe_id,
        unsafe_id); `types`: the safe types to pair (all by default)."""
        config = _contrast.ContrastConfig(
            model=self.options,
            suite=SuiteOptions(suite=str(suite), types=listed(types) or []),
            pair_map=pair_map,
            inv=inv,
            inv_per_prompt=inv_per_prompt,
            min_similarity=min_similarity,
            seed=seed,
            harmfulness=harmfulness,
        )
        return _contrast.run(config, session=self.session)

    @checked
    def diagnose(
        self,
        prompts: Prompts = "xstest",
        *,
        types=None,
        ids=None,
        limit=None,
        methods=("saliency", "occlusion"),
        attribution: bool = True,
        faithfulness: bool = True,
        perturb: bool = True,
        mechanism: bool = True,
        pair_map: str | None = None,
        top: int = 15,
        seed: int = 0,
        **settings,
    ):
        """Why these prompts get refused, in one report (`DiagnoseResult`): margins and contrasts,
        top-attributed words, trigger swaps beside matched controls, and a verdict from those numbers.
        `result.save(dir)` writes report.html with its tables and figures."""
        settings.setdefault("batch_size", self.options.batch_size)
        config = _diagnose.DiagnoseConfig(
            model=self.options,
            methods=listed(methods) if attribution else [],
            attribution=attribution,
            faithfulness=faithfulness,
            perturb=perturb,
            mechanism=mechanism,
            pair_map=pair_map,
            top=top,
            seed=seed,
            settings=attribution_settings(settings),
        )
        return _diagnose.run(config, session=self.session, suite=as_suite(prompts, types, ids, limit))

    # ------------------------------------------------------------------ inside the model
    @checked
    def direction(self, *, val_prompts: int = 32, kl_bound: float = 0.1):
        """The refusal direction of this model and condition (`DirectionResult`: `.direction`, the
        candidates table): cached, else found on the calibration splits (minutes on a CPU)."""
        config = _direction.DirectionConfig(model=self.options, val_prompts=val_prompts, kl_bound=kl_bound)
        return _direction.run(config, session=self.session)

    @checked(ablate=_values.ablate_share, add=_values.add_multiple)
    def steered(self, fix=None, *, ablate: float = 0.0, add: float = 0.0, direction=None):
        """A context manager: every study of this probe inside it runs steered. `fix`: the setting
        `lexprobe mitigate` chose (its chosen.json, the folder holding it, or a `MitigateResult`); or the
        refusal direction (this model's, or `direction`, a `RefusalDirection` or a direction.json)
        ablated by the share `ablate` and/or added `add` times at its layer.

            with probe.steered("runs/mitigate/chosen.json"):
                fixed = probe.score("my_suite.csv")
            with probe.steered(ablate=1.0):
                ablated = probe.score("xstest")
        """
        import contextlib

        from lexprobe.toolkit.mechanism.direction import load_direction
        from lexprobe.toolkit.mechanism.fixes import load_chosen

        if fix is None and not (ablate or add):
            raise InputError("steered(): give a fix, or ablate or add (a direction alone steers nothing)")
        if ablate and add:
            raise InputError(
                "steered(ablate=..., add=...): ablation removes the direction the addition adds; give one"
            )
        if fix is not None and (ablate or add or direction is not None):
            raise InputError(
                "steered(fix, ...): a chosen fix is applied on its own; drop ablate/add/direction"
            )
        lm = self.session.lm
        chosen = load_chosen(fix, lm, flag="fix") if fix is not None else None  # checked now, not later

        @contextlib.contextmanager
        def steering():
            if chosen is not None:
                source = "a MitigateResult" if hasattr(fix, "chosen") else str(fix)
                new = chosen[0]
                by = {
                    "file": source,
                    "sha256": chosen[1]["sha256"],
                    "mitigation": chosen[1].get("mitigation"),
                }
            else:
                found = (
                    self.direction().direction
                    if direction is None
                    else load_direction(direction, lm.text_config.hidden_size, len(lm.layers))
                )
                new, by = found.steering(ablate=ablate, add=add), None
            before = self.session.steering, self.session.steered_by
            self.session.steering, self.session.steered_by = new, by
            try:
                yield self
            finally:
                self.session.steering, self.session.steered_by = before

        return steering()

    @checked
    def harmfulness(self, *, train_prompts: int | None = None, val_prompts: int | None = None):
        """The harmfulness probe of this model and condition (`HarmfulnessResult`: `.probe`, every
        candidate site with its val AUROC and cosine with the refusal direction): cached, else fitted on
        the calibration splits and lexprobe's frames of them (minutes on a CPU)."""
        config = _harmfulness.HarmfulnessConfig(
            model=self.options, train_prompts=train_prompts, val_prompts=val_prompts
        )
        return _harmfulness.run(config, session=self.session)

    @checked
    def pathway(
        self,
        prompt: str | None = None,
        variant: str | None = None,
        *,
        contrast: str | None = None,
        substitutions=None,
        top: int = 3,
        direction=None,
    ):
        """Activation patching from `variant` into `prompt` (or the largest swaps of a perturb result's
        `substitutions`), and projections on the refusal direction (this model's, or `direction`, a
        `RefusalDirection`) (`PathwayResult`)."""
        from dataclasses import replace

        if hasattr(substitutions, "to_frame"):
            substitutions = substitutions.to_frame()
        config = _pathway.PathwayConfig(
            model=replace(self.options, direction=direction),
            prompt=prompt,
            variant=variant,
            contrast=contrast,
            substitutions=substitutions,
            top=top,
        )
        return _pathway.run(config, session=self.session)

    @checked
    def mitigate(
        self,
        prompts: Prompts = "xstest",
        *,
        types=None,
        ids=None,
        limit=None,
        ablate=(0.25, 0.5, 1.0),
        conditional=(1.0,),
        gate_width: float = 1.0,
        false_refusal=(1.0, 2.0),
        coefficients=(0.0, 0.5, 1.0),
        instruction: bool = True,
        generate_per_type: int = 5,
        max_unsafe_drop: float = 0.05,
        direction=None,
        harmfulness=True,
    ):
        """Each fix's refusal rates on the safe and the unsafe prompts with paired bootstrap CIs
        (`MitigateResult`; its frame is tradeoff.csv), the selection split's rates, and the fix the rule
        chooses there (`result.chosen`, chosen.json; `probe.steered(result)` applies it), with this
        model's refusal direction or `direction` and its harmfulness probe or `harmfulness`."""
        from dataclasses import replace

        config = _mitigate.MitigateConfig(
            model=replace(self.options, direction=direction),
            harmfulness=harmfulness,
            ablate=list(ablate),
            conditional=list(conditional),
            gate_width=gate_width,
            false_refusal=list(false_refusal),
            coefficients=list(coefficients),
            instruction=instruction,
            generate_per_type=generate_per_type,
            max_unsafe_drop=max_unsafe_drop,
        )
        return _mitigate.run(config, session=self.session, suite=as_suite(prompts, types, ids, limit))


@checked
def classify(completions, *, classifier: str = "default"):
    """Label completions full_compliance / full_refusal / partial_refusal (`ClassifiedResult`): a
    `CompletionsResult`, a DataFrame with `completion` (and `prompt`), a file, or a bundled set."""
    if hasattr(completions, "to_frame"):
        completions = completions.to_frame()
    if not isinstance(completions, str | Path | pd.DataFrame):
        raise InputError(
            f"completions of type {type(completions).__name__}: give a CompletionsResult, a DataFrame with a "
            "`completion` column, a file or a bundled set"
        )
    completions = str(completions) if isinstance(completions, Path) else completions
    return _evaluate.run_classify(_evaluate.ClassifyConfig(completions=completions, classifier=classifier))


def result_types() -> tuple[type, ...]:
    """Every kind of result, in the order `load_result` tries them (a validity directory also holds a
    summary.json, so it goes before diagnose's)."""
    from lexprobe.analyses.margin_validity import ValidityResult
    from lexprobe.analyses.plausibility import PlausibilityResult
    from lexprobe.analyses.transplant import TransplantResult
    from lexprobe.toolkit.attribution.result import AttributionResult

    return (
        ValidityResult,
        _diagnose.DiagnoseResult,
        _score.ScoreResult,
        _generate.CompletionsResult,
        _evaluate.ClassifiedResult,
        _evaluate.EvaluationResult,
        AttributionResult,
        _pairs.PerturbResult,
        _pairs.PairsResult,
        _contrast.ContrastResult,
        TransplantResult,
        PlausibilityResult,
        _direction.DirectionResult,
        _pathway.PathwayResult,
        _mitigate.MitigateResult,
        _harmfulness.HarmfulnessResult,
    )


def load_result(directory: str | Path):
    """The result saved in `directory` (by `save` or by a `lexprobe` command), whichever study made it."""
    out = Path(directory).expanduser()
    kind = read_run(out).get("kind") if (out / "run.json").is_file() else None
    by_kind = {cls.kind: cls for cls in result_types()}
    if kind in by_kind:  # run.json says which study made the folder
        return by_kind[kind].load(out)
    for cls in result_types():  # a folder saved before run.json had a kind: by its main table
        if (out / cls.filename).exists():
            return cls.load(out)
    names = ", ".join(sorted({k.filename for k in result_types()}))
    raise InputError(
        f"'{out}' holds no lexprobe result (none of {names}): give a directory a result was saved to"
    )


__all__ = ["Probe", "classify", "load", "load_result", "result_types"]
