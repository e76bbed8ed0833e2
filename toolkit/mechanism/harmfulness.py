"""Fitting and selecting the harmfulness probe (`probes.harmfulness`), apart from the refusal direction.

Zhao et al. (NeurIPS 2025) find harmfulness represented at the last token of the user's instruction,
apart from refusal, which is read at the template tokens after it. So the candidate sites are every
block's input at the instruction's last token and at each post-instruction template token.

Labels are what the prompt asks, never what the model does: the bundled harmful calibration
instructions are harmful (1), the harmless ones harmless (0), and so are lexprobe's own *hard
negatives*: harmless calibration instructions with a word the trigger lexicon lists as a harmless
substitute put back to its trigger ("How do I stop the program" -> "How do I kill the program"). A
site that reads "contains a trigger word" fails them; one that reads what is asked does not.

At every site two probes are fitted on the train split:

    mean_difference  w = mean(harmful) - mean(harmless), its projection scaled and shifted by a
                     one-dimensional logistic fit (so its output is a logit too)
    logistic         L2-regularised logistic regression on standardised activations, the
                     penalty chosen per site on the val split's log-loss

The probe is the site and method with the highest val AUROC (ties: the lower val log-loss). The val
split is the calibration val split with its own hard negatives; XSTest is never seen.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from lexprobe.probes.harmfulness import HarmfulnessProbe
from lexprobe.probes.hooks import block_input_modules, output_tensor
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.io.progress import progress
from lexprobe.toolkit.mechanism.direction import template_positions

log = logging.getLogger(__name__)
PENALTIES = (1e-3, 1e-2, 1e-1, 1.0)  # L2 strengths tried per site (on standardised features)
METHODS = ("mean_difference", "logistic")


def site_positions(scorer) -> int:
    """Read-out positions counted from the prompt's end: the template tokens and the instruction's last."""
    return template_positions(scorer) + 1


@torch.no_grad()
def prompt_states(scorer, texts: list[str], desc: str = "activations") -> torch.Tensor:
    """[n, n_layers, positions, d_model] float32: the residual entering every block at the
    instruction's last token and each template token after it, one row per text (under whatever
    steering is active)."""
    lm = scorer.lm
    n_pos, n_tree = site_positions(scorer), len(scorer.readout.tree)
    modules = block_input_modules(lm)
    out = torch.zeros(len(texts), len(modules), n_pos, lm.text_config.hidden_size)
    seen: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        h = output_tensor(output)
        end = h.shape[1] - n_tree
        seen.append(h[:, end - n_pos : end].float().cpu())

    suffixes = [scorer.suffix_ids(scorer.encode(t, f"prompt {i + 1}")) for i, t in enumerate(texts)]
    order = sorted(range(len(texts)), key=lambda i: len(suffixes[i]))
    size = scorer.batch_size
    for chunk in progress([order[i : i + size] for i in range(0, len(order), size)], desc=desc, unit="batch"):
        seen.clear()
        scorer.forward(scorer.batch([suffixes[i] for i in chunk]), hook_pairs=[(m, keep) for m in modules])
        out[chunk] = torch.stack(seen, dim=1)
    return out


# ------------------------------------------------------------------------------------------ fitting
def aurocs(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of every row of scores [sites, n] against one label vector [n] (ties count half)."""
    y = np.asarray(labels, dtype=bool)
    ranks = rankdata(scores, axis=1)
    n_pos, n_neg = y.sum(), (~y).sum()
    return (ranks[:, y].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def log_losses(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Mean binary cross-entropy of every row of logits [sites, n]."""
    z = np.where(np.asarray(labels, dtype=bool), -logits, logits)
    return np.logaddexp(0, z).mean(1)


def _logistic(x: torch.Tensor, y: torch.Tensor, penalty: float, iters: int = 200):
    """L2-regularised logistic regressions fitted side by side: x [sites, n, k] float64, y [n] ->
    (w [sites, k], b [sites]) minimising mean BCE + penalty / 2 * |w|^2 at each site."""
    w = torch.zeros(x.shape[0], x.shape[2], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(x.shape[0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        z = torch.einsum("snk,sk->sn", x, w) + b[:, None]
        value = torch.nn.functional.binary_cross_entropy_with_logits(
            z, y.expand_as(z), reduction="none"
        ).mean(1).sum() + penalty / 2 * (w**2).sum()  # fmt: skip
        value.backward()
        return value

    opt.step(loss)
    return w.detach(), b.detach()


def fit_sites(train_x: torch.Tensor, train_y: np.ndarray, val_x: torch.Tensor, val_y: np.ndarray):
    """Both methods at every site. train_x [n, sites, d], val_x [m, sites, d] (float32).
    Returns (table with a row per site and method: auroc_train, auroc_val, loss_val, penalty;
    weights [methods, sites, d] float32 in activation units; biases [methods, sites])."""
    xt = train_x.transpose(0, 1).double()  # [sites, n, d]
    xv = val_x.transpose(0, 1).double()
    yt = torch.tensor(np.asarray(train_y), dtype=torch.float64)
    pos, neg = yt.bool(), ~yt.bool()
    n_sites, d = xt.shape[0], xt.shape[2]
    weights = torch.zeros(len(METHODS), n_sites, d, dtype=torch.float64)
    biases = torch.zeros(len(METHODS), n_sites, dtype=torch.float64)
    penalties = np.full((len(METHODS), n_sites), np.nan)

    # mean difference, calibrated by a one-dimensional logistic fit
    diff = xt[:, pos].mean(1) - xt[:, neg].mean(1)  # [sites, d]
    proj = torch.einsum("snd,sd->sn", xt, diff)
    centre, spread = proj.mean(1), proj.std(1).clamp_min(1e-12)
    a, c = _logistic(((proj - centre[:, None]) / spread[:, None])[..., None], yt, 0.0)
    weights[0] = diff * (a[:, 0] / spread)[:, None]
    biases[0] = c - a[:, 0] * centre / spread

    # logistic regression on standardised activations, the penalty chosen on the val split
    mu, sd = xt.mean(1, keepdim=True), xt.std(1, keepdim=True).clamp_min(1e-6)
    zt, zv = (xt - mu) / sd, (xv - mu) / sd
    best = np.full(n_sites, np.inf)
    for penalty in PENALTIES:
        w, b = _logistic(zt, yt, penalty)
        loss = log_losses(val_y, (torch.einsum("snd,sd->sn", zv, w) + b[:, None]).numpy())
        better = loss < best
        best[better] = loss[better]
        raw_w = w / sd[:, 0]
        raw_b = b - (raw_w * mu[:, 0]).sum(1)
        weights[1, better] = raw_w[better]
        biases[1, better] = raw_b[better]
        penalties[1, better] = penalty

    rows = []
    for k, method in enumerate(METHODS):
        lt = (torch.einsum("snd,sd->sn", xt, weights[k]) + biases[k][:, None]).numpy()
        lv = (torch.einsum("snd,sd->sn", xv, weights[k]) + biases[k][:, None]).numpy()
        rows.append(
            pd.DataFrame(
                {"site": np.arange(n_sites), "method": method, "auroc_train": aurocs(train_y, lt),
                 "auroc_val": aurocs(val_y, lv), "loss_val": log_losses(val_y, lv), "penalty": penalties[k]}
            )
        )  # fmt: skip
    return pd.concat(rows, ignore_index=True), weights.float(), biases.float()


def calibration_sets(train_n: int | None = None, val_n: int | None = None) -> dict:
    """(texts, labels) of the train and val splits: harmful 1, harmless 0, and each split's hard
    negatives (its harmless instructions rewritten back to trigger words) 0."""
    from lexprobe.toolkit.io.suites import load_suite
    from lexprobe.toolkit.substitution.engine import Substituter, trigger_rewrites

    sub = Substituter(strategies=("lexicon",))
    out = {}
    for split, suffix, n in (("train", "", train_n), ("val", "-val", val_n)):
        bad = load_suite(f"calibration-harmful{suffix}").frame["prompt"].tolist()[:n]
        good = load_suite(f"calibration-harmless{suffix}").frame["prompt"].tolist()[:n]
        hard = trigger_rewrites(sub, good)
        texts = bad + good + hard
        labels = np.array([1] * len(bad) + [0] * (len(good) + len(hard)))
        kinds = ["harmful"] * len(bad) + ["harmless"] * len(good) + ["hard negative"] * len(hard)
        out[split] = (texts, labels, kinds)
    return out


def select_probe(scorer, sets: dict):
    """(the selected HarmfulnessProbe, a table with a row per layer, position and method, every site's
    weights [methods, sites, d_model]) from `calibration_sets`-shaped (texts, labels, kinds) train and
    val splits."""
    (tt, ty, _tk), (vt, vy, vk) = sets["train"], sets["val"]
    for name, y in (("train", ty), ("val", vy)):
        if y.sum() < 2 or (1 - y).sum() < 2:
            raise InputError(f"the {name} split needs at least 2 harmful and 2 harmless prompts")
    xt = prompt_states(scorer, tt, "train activations")
    xv = prompt_states(scorer, vt, "val activations")
    n, n_layers, n_pos, d = xt.shape
    table, weights, biases = fit_sites(xt.reshape(n, -1, d), ty, xv.reshape(len(vt), -1, d), vy)
    table["layer"] = table["site"] // n_pos
    table["position"] = table["site"] % n_pos - n_pos
    hard = np.array([k == "hard negative" for k in vk])
    k_of = {m: k for k, m in enumerate(METHODS)}
    if hard.any():  # how many hard negatives each probe calls harmless (logit < 0)
        lv = (
            np.einsum("nsd,ksd->ksn", xv.reshape(len(vt), -1, d).numpy(), weights.numpy())
            + biases.numpy()[..., None]
        )
        table["hard_negatives_harmless_val"] = [
            float((lv[k_of[m], s][hard] < 0).mean()) for m, s in zip(table["method"], table["site"])
        ]
    ranked = table.sort_values(["auroc_val", "loss_val"], ascending=[False, True], kind="stable")
    best = ranked.index[0]
    table["selected"] = table.index == best
    row = table.loc[best]
    k, s = k_of[row["method"]], int(row["site"])
    details = {
        "selection": {c: (float(row[c]) if isinstance(row[c], (float, np.floating)) else row[c])
                      for c in table.columns if c not in ("site", "selected")},
        "prompts": {"train": len(tt), "val": len(vt), "train_harmful": int(ty.sum()),
                    "val_harmful": int(vy.sum()), "val_hard_negatives": int(hard.sum()),
                    "train_hard_negatives": int(sum(k == "hard negative" for k in sets["train"][2]))},
        "n_layers": n_layers, "positions": n_pos,
    }  # fmt: skip
    probe = HarmfulnessProbe(weights[k, s].clone(), float(biases[k, s]), int(row["layer"]),
                             int(row["position"]), str(row["method"]), details)  # fmt: skip
    return probe, table, weights


def cosines(table: pd.DataFrame, weights: torch.Tensor, vector: torch.Tensor) -> np.ndarray:
    """Each table row's probe weights' cosine with `vector` (the refusal direction) [rows]."""
    unit = vector.double() / vector.double().norm()
    w = weights.double()
    cos = (w @ unit) / w.norm(dim=-1).clamp_min(1e-12)  # [methods, sites]
    k_of = {m: k for k, m in enumerate(METHODS)}
    return np.array([float(cos[k_of[m], s]) for m, s in zip(table["method"], table["site"])])


# ------------------------------------------------------------------------------------------ cache
def find_probe(
    scorer,
    condition: str,
    train_prompts: int | None = None,
    val_prompts: int | None = None,
    info: dict | None = None,
    overwrite: bool = False,
) -> tuple[HarmfulnessProbe, pd.DataFrame, torch.Tensor]:
    """The harmfulness probe of the scorer's model under `condition`, its sites table and every site's
    weights [methods, sites, d_model] (`cosines`): cached per
    model, dtype, condition and settings (its numbers checked against their sha256 on load; a file
    that fails is fitted again), else fitted and selected here on the bundled calibration splits."""
    from safetensors.torch import load_file, save_file

    from lexprobe.toolkit.io.cache import cache_dir, write_text_atomic
    from lexprobe.toolkit.io.locks import building
    from lexprobe.toolkit.io.results import Timer, write_csv_atomic

    lm = scorer.lm
    key = {"dtype": str(lm.dtype), "system_prompt": condition, "train": train_prompts, "val": val_prompts,
           "format": 1}  # fmt: skip
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir("harmfulness", lm.weights_sha256[:16]) / f"{digest}.json"
    table_path, weights_path = path.with_suffix(".csv"), path.with_suffix(".safetensors")
    with building(path):
        if path.exists() and table_path.exists() and weights_path.exists() and not overwrite:
            try:
                probe = HarmfulnessProbe.from_json(path.read_text(), str(path), lm.text_config.hidden_size)
                weights = load_file(weights_path)["weights"]
                if probe.details.get("weights_sha256") != _sha(weights):
                    raise InputError(f"{weights_path}: its numbers do not match the probe's record")
                log.info("harmfulness probe: cache %s", path)
                return probe, pd.read_csv(table_path), weights
            except (InputError, OSError, KeyError) as err:
                log.warning("%s; fitting the probe again", err)
        timer = Timer()
        probe, table, weights = select_probe(scorer, calibration_sets(train_prompts, val_prompts))
        probe.details.update(
            provenance=info or {}, seconds=timer.seconds,
            data={"fit": "calibration harmful/harmless + hard negatives, train split",
                  "selection": "their val split", "n_train": train_prompts or "all", "n_val": val_prompts or "all"},
            weights_sha256=_sha(weights),
        )  # fmt: skip
        write_csv_atomic(table, table_path)
        save_file({"weights": weights.contiguous()}, str(weights_path))
        write_text_atomic(path, probe.to_json())
        return probe, table, weights


def _sha(weights: torch.Tensor) -> str:
    return hashlib.sha256(weights.float().contiguous().numpy().tobytes()).hexdigest()
