"""Copy the data lexprobe ships into prompts/ from a data folder (deterministic; re-run to refresh).

    python scripts/vendor_prompts.py --data DIR

DIR holds `xstest/` (XSTest's xstest_prompts.csv and the completions_llama2orig.csv /
completions_mistralguard.csv human-labelled completion sets) and `calibration/` (harmful_train.json,
harmful_val.json, harmless_train.json, harmless_val.json, as released by Arditi et al. 2024).

XSTest and its two human-labelled completion sets are copied whole. The calibration sets are sampled with a fixed seed: all harmful instructions
(260 train, 39 val) and 260 train / 39 val harmless ones, so both classes have equal size.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "prompts"


def sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    picked = rows if len(rows) <= n else rng.sample(rows, n)
    return [{"instruction": r["instruction"].strip(), "category": r.get("category")} for r in picked]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="the folder with xstest/ and calibration/")
    args = parser.parse_args()
    shutil.copyfile(args.data / "xstest" / "xstest_prompts.csv", HERE / "xstest.csv")
    for model in ("llama2orig", "mistralguard"):
        shutil.copyfile(
            args.data / "xstest" / f"completions_{model}.csv", HERE / f"xstest_completions_{model}.csv"
        )
    calib = args.data / "calibration"
    for split, n in (("train", 260), ("val", 39)):
        harmful = json.loads((calib / f"harmful_{split}.json").read_text())
        harmless = json.loads((calib / f"harmless_{split}.json").read_text())
        for name, rows in (("harmful", harmful), ("harmless", harmless)):
            out = HERE / f"calibration_{name}_{split}.json"
            out.write_text(json.dumps(sample(rows, n, seed=2024), indent=1, ensure_ascii=False) + "\n")
            print(f"{out.name}: {min(n, len(rows))} of {len(rows)}")


if __name__ == "__main__":
    main()
