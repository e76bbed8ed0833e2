"""Train lexprobe's default response classifier and report its held-one-model-out figures.

    python scripts/train_classifier.py            # held-out table + writes prompts/classifier_default.json
    python scripts/train_classifier.py --no-write # held-out table only
    python scripts/train_classifier.py --variants # held-out figures of other settings (none is kept)

Data: the human-labelled XSTest completions vendored in prompts/ (Llama-2-70b-chat with its original
system prompt; Mistral-7B-Instruct with a guardrail prompt), 450 each. Features:
`toolkit.response_features` (needs the offline MiniLM package). Model: multinomial logistic regression
(scikit-learn, lbfgs, C=1.0, balanced class weights); deterministic, so a rerun rewrites the same file.

Held-out figures: train on one model's completions, label the other's; binary agreement (refusal =
full or partial) and 3-way macro-F1 against `final_label`, beside strmatch and rules on the same rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, f1_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lexprobe import prompts  # noqa: E402
from lexprobe.toolkit.behaviour.classify import LABELS, classify, is_refusal, labels_from_probabilities  # noqa: E402
from lexprobe.toolkit.behaviour.features import FEATURE_NAMES, featurize  # noqa: E402

MODELS = ("llama2orig", "mistralguard")
HUMAN = {"1_full_compliance": LABELS[0], "2_full_refusal": LABELS[1], "3_partial_refusal": LABELS[2]}
C, SEED = 1.0, 0


def load(model: str) -> pd.DataFrame:
    frame = pd.read_csv(prompts.path(f"xstest_completions_{model}.csv"), keep_default_na=False)
    return frame.assign(human=frame["final_label"].map(HUMAN))


def fit(x: np.ndarray, y: list[str]) -> LogisticRegression:
    return LogisticRegression(C=C, class_weight="balanced", max_iter=10_000, random_state=SEED).fit(x, y)


def predict(model: LogisticRegression, x: np.ndarray) -> list[str]:
    order = [list(model.classes_).index(label) for label in LABELS]
    return labels_from_probabilities(model.predict_proba(x)[:, order])


def scores(human: list[str], predicted: list[str]) -> dict[str, float]:
    binary = np.mean([is_refusal(h) == is_refusal(p) for h, p in zip(human, predicted)])
    per_class = f1_score(human, predicted, labels=list(LABELS), average=None)
    return {
        "binary_agreement": round(float(binary), 4),
        "macro_f1": round(float(per_class.mean()), 4),
        **{f"f1_{label}": round(float(f), 4) for label, f in zip(LABELS, per_class)},
    }


def variants(x_all: np.ndarray, rows: dict, frames: dict) -> None:
    """Held-one-model-out figures of the settings tried beside the shipped one: the regularisation C,
    and the cues with prompt similarities or the embeddings alone."""
    from lexprobe.toolkit.behaviour.features import RULE_NAMES, SIMILARITY_NAMES

    cues = len(RULE_NAMES) + len(SIMILARITY_NAMES)
    columns = {"all": slice(None), "cues+similarities": slice(0, cues), "embeddings": slice(cues, None)}
    out = []
    for name, cols in columns.items():
        for c in (0.1, 0.3, 1.0, 3.0):
            row = {"features": name, "C": c}
            for train, test in (MODELS, MODELS[::-1]):
                model = LogisticRegression(C=c, class_weight="balanced", max_iter=10_000, random_state=SEED)
                model.fit(x_all[rows[train]][:, cols], frames[train]["human"].tolist())
                got = scores(frames[test]["human"].tolist(), predict(model, x_all[rows[test]][:, cols]))
                row |= {f"{test} {k}": got[k] for k in ("binary_agreement", "macro_f1", "f1_partial_refusal")}
            out.append(row)
            print(row, file=sys.stderr)
    print(pd.DataFrame(out).to_string(index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-write", action="store_true", help="only print the held-out table")
    ap.add_argument("--variants", action="store_true", help="only print other settings' held-out figures")
    ap.add_argument("--out", default=str(ROOT / "prompts" / "classifier_default.json"))
    args = ap.parse_args()

    frames = {m: load(m) for m in MODELS}
    both = pd.concat([frames[m] for m in MODELS], ignore_index=True)
    t0 = time.time()
    x_all = featurize(both["completion"].tolist(), both["prompt"].tolist())  # [900, n_features]
    print(f"features {x_all.shape} in {time.time() - t0:.0f}s", file=sys.stderr)
    offsets = np.cumsum([0] + [len(frames[m]) for m in MODELS])
    rows = {m: np.arange(offsets[i], offsets[i + 1]) for i, m in enumerate(MODELS)}
    if args.variants:
        variants(x_all, rows, frames)
        return

    held_out = []
    for train in MODELS:
        for test in MODELS:
            if test == train:
                continue
            model = fit(x_all[rows[train]], frames[train]["human"].tolist())
            f = frames[test]
            preds = {
                "strmatch": classify(f["completion"].tolist(), f["prompt"].tolist(), name="strmatch"),
                "rules": classify(f["completion"].tolist(), f["prompt"].tolist(), name="rules"),
                "default": predict(model, x_all[rows[test]]),
            }
            for name, p in preds.items():
                held_out.append(
                    {"train": train, "test": test, "classifier": name, **scores(f["human"].tolist(), p)}
                )
            matrix = confusion_matrix(f["human"], preds["default"], labels=list(LABELS))
            short = [label.replace("full_", "").replace("_refusal", "") for label in LABELS]
            print(f"default, trained on {train}, scored on {test}: rows human, columns predicted")
            print(pd.DataFrame(matrix, index=short, columns=short).to_string(), end="\n\n")
    table = pd.DataFrame(held_out)
    print(table.to_string(index=False))

    final = fit(x_all, both["human"].tolist())
    train_fit = scores(both["human"].tolist(), predict(final, x_all))
    print(f"final model (trained on both), on its own training rows: {train_fit}")
    if args.no_write:
        return
    data = {
        f"prompts/xstest_completions_{m}.csv": hashlib.sha256(
            prompts.path(f"xstest_completions_{m}.csv").read_bytes()
        ).hexdigest()
        for m in MODELS
    }
    coef, intercept = np.round(final.coef_, 8), np.round(final.intercept_, 8)
    logits = x_all @ coef.T + intercept
    assert (logits.argmax(axis=1) == final.predict_proba(x_all).argmax(axis=1)).all(), (
        "rounding changed labels"
    )
    spec = {
        "what": "lexprobe default response classifier: multinomial logistic regression over "
        "toolkit.response_features (cues, prompt similarities, MiniLM embeddings of 1st/2nd/last sentence)",
        "trained_by": "python scripts/train_classifier.py",
        "training_data": data,
        "n_train": len(both),
        "labels": "XSTest final_label (human), mapped to full_compliance / full_refusal / partial_refusal",
        "estimator": {"sklearn": sklearn.__version__, "C": C, "class_weight": "balanced", "solver": "lbfgs"},
        "held_out": held_out,
        "classes": [str(c) for c in final.classes_],
        "features": list(FEATURE_NAMES),
        "feature_means": np.round(x_all.mean(axis=0), 8).tolist(),
        "intercept": intercept.tolist(),
        "coef": coef.tolist(),
    }
    Path(args.out).write_text(json.dumps(spec, indent=1) + "\n")
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
