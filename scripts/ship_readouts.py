"""Calibrate an embedded model's refusal readouts for every preset system-prompt condition, in float32
and bfloat16, and write them to prompts/readouts/ so a cold start loads them.

    python scripts/ship_readouts.py                      # the default model: 4 conditions x 2 dtypes
    python scripts/ship_readouts.py --dtype float32 --condition none
    python scripts/ship_readouts.py --model gemma3 --condition model-default   # its gemma template

Each file is named by the readout cache key (toolkit/readouts/calibrate.py: readout version, weights sha256,
dtype, condition, settings), so lexprobe finds exactly the readout it would calibrate, and carries its
provenance (machine, seconds, commit, versions) in `details.calibrated`. `prompts/readouts/index.json`
lists them. Calibration is deterministic on one machine; `tests/integration/test_shipped_readouts.py`
recalibrates one condition and checks it reproduces the shipped file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lexprobe.probes.readout import ReadoutSettings
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt, system_presets
from lexprobe.toolkit.models.loader import load_model
from lexprobe.toolkit.models.templates import template_for
from lexprobe.toolkit.readouts.calibrate import _cache_key, get_readout

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "prompts" / "readouts"
CONDITIONS = ["none", "model-default", *system_presets()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default", choices=["default", "gemma3"])
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16"])
    parser.add_argument("--condition", action="append", choices=CONDITIONS)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    index_path = OUT / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for dtype in args.dtype or ["float32", "bfloat16"]:
        lm = load_model(args.model, dtype=dtype, device="cpu")
        template = template_for(lm)  # gemma3's file has none
        for condition in args.condition or CONDITIONS:
            fmt = ChatFormat(lm.tokenizer, SystemPrompt.parse(condition), template)
            key = _cache_key(lm, fmt, ReadoutSettings())
            readout = get_readout(lm, fmt, rebuild=True)
            readout.details.pop("loaded_from", None)
            (OUT / f"{key}.json").write_text(readout.to_json())
            d = readout.details
            index[key] = {
                "model": args.model,
                "weights_sha256": lm.weights_sha256,
                "dtype": dtype,
                "system_prompt": condition,
                **({"chat_template": template.name} if template is not None else {}),
                "train_refusal_rate": d["train_refusal_rate"],
                "val_auroc": d["val_auroc"],
                "calibrated_on": d["calibrated"]["machine"],
                "seconds": d["calibrated"]["seconds"],
            }
            index_path.write_text(json.dumps(dict(sorted(index.items())), indent=1) + "\n")
            print(
                f"{dtype} {condition}: {key}.json, val AUROC {d['val_auroc']}, {d['calibrated']['seconds']:.0f} s"
            )


if __name__ == "__main__":
    main()
