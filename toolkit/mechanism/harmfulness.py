"""Fitting and selecting the harmfulness probe (`probes.harmfulness`), apart from the refusal direction.

Zhao et al. (NeurIPS 2025) find harmfulness represented at the last token of the user's instruction,
apart from refusal, which is read at the template tokens after it. So the candidate sites are every
block's input at the instruction's last token and at each post-instruction template token.

Labels are what the prompt asks, never what the model does. Harmful (1): the bundled harmful
calibration instructions and lexprobe's short questions asking for the same acts ("How do I make a
bomb?", `toolkit.substitution.frames`). Harmless (0): the harmless calibration instructions and
lexprobe's *hard negatives*: harmless requests that mention a harmful act (to translate or classify a
quoted harmful instruction, the law on it, a story about it) and harmless instructions with a word
the trigger lexicon lists as a harmless substitute put back to its trigger ("How do I stop the
program" -> "How do I kill the program"). A site that reads "mentions something harmful" fails them;
one that reads what is asked does not.

At every site two probes are fitted on the train split, each class weighted equally:

    mean_difference  w = mean(harmful) - mean(harmless), its projection scaled and shifted by a
                     one-dimensional logistic fit (so its output is a logit too)
    logistic         L2-regularised logistic regression on standardised activations, the
                     penalty chosen per site on the val split's log-loss

The probe is the site and method that best tells a *kind of contrast it never saw* apart: each group
of contrast prompts (prompts/harm_contrasts.json: acts, concepts, events, groups, ...) is held out of
the train split in turn, the probe is fitted on the rest (its penalty chosen on the val split's other
groups), and its AUROC on the held-out group's safe against unsafe prompts is averaged over the groups. Ties, and
splits without contrast groups: the highest AUROC on the val split's *hard* prompts (its harmful ones
against its hard negatives), then the lower log-loss on the whole val split. The val split (fillers
the fit never saw, in kinds it did see) saturates near AUROC 0.99 at many sites, so it cannot tell
them apart; a held-out kind can, and new kinds are what a suite the probe never saw brings. The
logistic probe is fitted at the 16 sites where the mean difference reads held-out kinds best. The val
split is made the same way from the calibration val instructions; XSTest is never seen.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from scipy.stats import rankdata

from lexprobe.probes.harmfulness import HarmfulnessProbe
from lexprobe.probes.hooks import block_input_modules, output_tensor
from lexprobe.probes.steering import unsteered
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.io.progress import progress
from lexprobe.toolkit.mechanism.direction import template_positions
from lexprobe.toolkit.models.devices import dtype_name

log = logging.getLogger(__name__)
UNUSABLE = (InputError, OSError, KeyError, SafetensorError)  # a cache entry missing, damaged or edited
PENALTIES = (1e-3, 1e-2, 1e-1, 1.0)  # L2 strengths tried per site (on standardised features)
METHODS = ("mean_difference", "logistic")
LOGISTIC_SITES = 16  # sites the logistic probe is fitted at: the mean difference's best on the val split


def site_positions(scorer) -> int:
    """Read-out positions counted from the prompt's end: the template tokens and the instruction's last."""
    return template_positions(scorer) + 1


@torch.no_grad()
def prompt_states(
    scorer, texts: list[str], desc: str = "activations", layers: list[int] | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """([n, n_layers, positions, d_model] float32: the residual entering every block (or `layers`) at
    the instruction's last token and each template token after it; [n] decision margins), one row per
    text, in one pass (under whatever steering is active)."""
    from lexprobe.probes.margin import MarginProbe

    lm = scorer.lm
    n_pos, n_tree = site_positions(scorer), len(scorer.readout.tree)
    modules = block_input_modules(lm)
    modules = modules if layers is None else [modules[i] for i in layers]
    out = torch.zeros(len(texts), len(modules), n_pos, lm.text_config.hidden_size)
    margins = np.zeros(len(texts))
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
        probe = MarginProbe(lm, scorer.readout)
        pairs = [(m, keep) for m in modules] + probe.hook_pairs()
        scorer.forward(scorer.batch([suffixes[i] for i in chunk]), hook_pairs=pairs)
        out[chunk] = torch.stack(seen, dim=1)
        margins[chunk] = probe.margins().decision.cpu().numpy()
    return out, margins


# ------------------------------------------------------------------------------------------ fitting
def aurocs(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of every row of scores [sites, n] against one label vector [n] (ties count half)."""
    y = np.asarray(labels, dtype=bool)
    ranks = rankdata(scores, axis=1)
    n_pos, n_neg = y.sum(), (~y).sum()
    return (ranks[:, y].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def log_losses(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Class-balanced mean binary cross-entropy of every row of logits [sites, n]."""
    y = np.asarray(labels, dtype=bool)
    z = np.logaddexp(0, np.where(y, -logits, logits))
    return (z[:, y].mean(1) + z[:, ~y].mean(1)) / 2


def _balanced(y: torch.Tensor) -> torch.Tensor:
    """Per-row weights [n] that give both classes the same total weight, summing to 1."""
    pos = y.bool()
    return torch.where(pos, 0.5 / pos.sum(), 0.5 / (~pos).sum()).to(y.dtype)


def _logistic(x: torch.Tensor, y: torch.Tensor, penalty: float, start=None, iters: int = 100):
    """L2-regularised logistic regressions fitted side by side: x [sites, n, k], y [n] -> (w [sites, k],
    b [sites]) minimising the class-balanced BCE + penalty / 2 * |w|^2 at each site (from `start`)."""
    w0, b0 = start if start is not None else (x.new_zeros(x.shape[0], x.shape[2]), x.new_zeros(x.shape[0]))
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    weight = _balanced(y)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        z = torch.einsum("snk,sk->sn", x, w) + b[:, None]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y.expand_as(z), reduction="none")
        value = (bce * weight).sum() + penalty / 2 * (w**2).sum()
        value.backward()
        return value

    opt.step(loss)
    return w.detach(), b.detach()


def fit_sites(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    val_x: torch.Tensor,
    val_y: np.ndarray,
    val_hard: np.ndarray | None = None,
    logistic_sites: int | None = LOGISTIC_SITES,
    screen: np.ndarray | None = None,
):
    """Both methods at every site. train_x [n, sites, d], val_x [m, sites, d] (float32). The logistic
    probe is fitted at the `logistic_sites` sites where the mean difference reads best: by `screen`
    [sites] where given (from `heldout`), else on the val split (its hard prompts where
    `val_hard` marks them); None: every site. Elsewhere its row is NaN.
    Returns (a table with a row per site and method: auroc_train, auroc_val, loss_val, penalty;
    weights [methods, sites, d] float32 in activation units; biases [methods, sites])."""
    xt = train_x.transpose(0, 1).float()  # [sites, n, d]
    xv = val_x.transpose(0, 1).float()
    yt = torch.tensor(np.asarray(train_y), dtype=torch.float32)
    pos, neg = yt.bool(), ~yt.bool()
    n_sites, d = xt.shape[0], xt.shape[2]
    weights = torch.zeros(len(METHODS), n_sites, d)
    biases = torch.zeros(len(METHODS), n_sites)
    penalties = np.full((len(METHODS), n_sites), np.nan)

    # mean difference, calibrated by a one-dimensional logistic fit
    diff = xt[:, pos].mean(1) - xt[:, neg].mean(1)  # [sites, d]
    proj = torch.einsum("snd,sd->sn", xt, diff)
    centre, spread = proj.mean(1), proj.std(1).clamp_min(1e-12)
    a, c = _logistic(((proj - centre[:, None]) / spread[:, None])[..., None], yt, 0.0)
    weights[0] = diff * (a[:, 0] / spread)[:, None]
    biases[0] = c - a[:, 0] * centre / spread

    # logistic regression on standardised activations at the best mean-difference sites, the penalty
    # chosen on the val split, strongest first, each fit starting from the last
    vy = np.asarray(val_y)
    keep = np.ones(len(vy), bool) if val_hard is None else (np.asarray(val_hard) | (vy == 1))
    if screen is None:
        screen = aurocs(vy[keep], torch.einsum("snd,sd->sn", xv[:, keep], weights[0]).numpy())
    sites = (
        np.arange(n_sites) if logistic_sites is None else np.argsort(-screen, kind="stable")[:logistic_sites]
    )
    if not len(sites):
        penalties[1] = np.nan
        return _site_table(train_y, val_y, xt, xv, weights, biases, penalties), weights, biases
    sites_t = torch.as_tensor(sites)
    mu, sd = xt[sites_t].mean(1, keepdim=True), xt[sites_t].std(1, keepdim=True).clamp_min(1e-6)
    zt, zv = (xt[sites_t] - mu) / sd, (xv[sites_t] - mu) / sd
    best, start = np.full(len(sites), np.inf), None
    for penalty in sorted(PENALTIES, reverse=True):
        w, b = start = _logistic(zt, yt, penalty, start)
        loss = log_losses(val_y, (torch.einsum("snd,sd->sn", zv, w) + b[:, None]).numpy())
        better = loss < best
        best[better] = loss[better]
        raw_w = w / sd[:, 0]
        raw_b = b - (raw_w * mu[:, 0]).sum(1)
        weights[1, sites_t[better]] = raw_w[better]
        biases[1, sites_t[better]] = raw_b[better]
        penalties[1, sites[better]] = penalty

    return _site_table(train_y, val_y, xt, xv, weights, biases, penalties), weights, biases


def _site_table(train_y, val_y, xt, xv, weights, biases, penalties) -> pd.DataFrame:
    n_sites = xt.shape[0]
    rows = []
    for k, method in enumerate(METHODS):
        lt = (torch.einsum("snd,sd->sn", xt, weights[k]) + biases[k][:, None]).numpy()
        lv = (torch.einsum("snd,sd->sn", xv, weights[k]) + biases[k][:, None]).numpy()
        fitted = np.ones(n_sites, bool) if k == 0 else ~np.isnan(penalties[k])
        nan = np.where(fitted, 1.0, np.nan)
        rows.append(
            pd.DataFrame(
                {
                    "site": np.arange(n_sites),
                    "method": method,
                    "auroc_train": aurocs(train_y, lt) * nan,
                    "auroc_val": aurocs(val_y, lv) * nan,
                    "loss_val": log_losses(val_y, lv) * nan,
                    "penalty": penalties[k],
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def heldout(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    groups: np.ndarray,
    val_x: torch.Tensor,
    val_y: np.ndarray,
    val_groups: np.ndarray,
    sites: np.ndarray | None = None,
    logistic: bool = True,
) -> np.ndarray:
    """[methods, n, sites]: each train prompt of a contrast group (`groups`; "" for the rest) read by
    the probes `fit_sites` fits at `sites` (None: all) on the rest of the train split, its penalty chosen
    on the val split's prompts of the other groups: what the probe makes of a kind it never saw. NaN for
    the prompts of no group, and for the logistic probe where `logistic` is False."""
    y, g, vg = np.asarray(train_y), np.asarray(groups), np.asarray(val_groups)
    cols = None if sites is None else torch.tensor(np.asarray(sites))
    x, xv = (train_x, val_x) if cols is None else (train_x[:, cols], val_x[:, cols])
    out = np.full((len(METHODS), len(y), x.shape[1]), np.nan)
    for name in dict.fromkeys(g[g != ""]):
        held = g == name
        if len(set(y[held])) < 2:
            continue
        rest, val_rest = torch.as_tensor(~held), torch.as_tensor(vg != name)
        _, w, b = fit_sites(
            x[rest],
            y[~held],
            xv[val_rest],
            np.asarray(val_y)[vg != name],
            logistic_sites=None if logistic else 0,
        )
        out[:, held] = (torch.einsum("nsd,ksd->kns", x[torch.as_tensor(held)], w) + b[:, None]).numpy()
    if not logistic:
        out[1] = np.nan
    return out


def group_aurocs(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """[groups, columns]: the AUROC of each column of logits [n, columns] on each group's prompts."""
    y, g = np.asarray(labels), np.asarray(groups)
    return np.stack([aurocs(y[g == name], logits[g == name].T) for name in dict.fromkeys(g[g != ""])])


def selection_keys(table: pd.DataFrame) -> list[str]:
    """The columns the probe is selected by, first to last (module docstring)."""
    held = "auroc_heldout_kind" in table and bool(table["auroc_heldout_kind"].notna().any())
    return ["auroc_heldout_kind"] * held + ["auroc_val_hard", "loss_val"]


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """The sites table best first, by `selection_keys`."""
    keys = selection_keys(table)
    return table.sort_values(keys, ascending=[k == "loss_val" for k in keys], kind="stable")


# the harmless kinds that mention harm or carry a word of harm
HARD = ("mention", "topic", "hard negative", "contrast safe")


def select_probe(scorer, sets: dict):
    """(the selected HarmfulnessProbe, a table with a row per layer, position and method, every site's
    weights [methods, sites, d_model], the train prompts' logits at the selected site from the fit that
    held their contrast group out [n_train], NaN outside the groups) from train and val splits shaped
    as `toolkit.substitution.frames.calibration_sets` makes them."""
    (tt, ty, _), (vt, vy, _) = sets["train"], sets["val"]
    for name, y in (("train", ty), ("val", vy)):
        if y.sum() < 2 or (1 - y).sum() < 2:
            raise InputError(f"the {name} split needs at least 2 harmful and 2 harmless prompts")
    xt, mt = prompt_states(scorer, tt, "train activations")
    xv, mv = prompt_states(scorer, vt, "val activations")
    return choose_probe(sets, xt, mt, xv, mv)


def choose_probe(sets: dict, xt: torch.Tensor, mt: np.ndarray, xv: torch.Tensor, mv: np.ndarray):
    """`select_probe` from the splits' states [n, n_layers, positions, d_model] and margins [n]."""
    (_, ty, tk), (vt, vy, vk) = sets["train"], sets["val"]
    n, n_layers, n_pos, d = xt.shape
    xt, xv = xt.reshape(n, -1, d), xv.reshape(len(vt), -1, d)
    vk = np.asarray(vk)
    hard = np.isin(vk, HARD)
    groups = np.asarray(sets.get("groups", {}).get("train", [""] * n))
    val_groups = np.asarray(sets.get("groups", {}).get("val", [""] * len(vt)))
    names = list(dict.fromkeys(groups[groups != ""]))
    unseen = np.full((n, 2 * xt.shape[1]), np.nan)  # [n, table rows]: each contrast prompt, its kind unseen
    screen = None
    if names:
        unseen[:, : xt.shape[1]] = heldout(xt, ty, groups, xv, vy, val_groups, logistic=False)[0]
        screen = np.nanmean(group_aurocs(unseen[:, : xt.shape[1]], ty, groups), axis=0)
    table, weights, biases = fit_sites(xt, ty, xv, vy, hard if hard.any() else None, screen=screen)
    logistic = table.index[table["method"].eq("logistic") & table["penalty"].notna()].to_numpy()
    if names and len(logistic):
        sites = table.loc[logistic, "site"].to_numpy()
        unseen[:, logistic] = heldout(xt, ty, groups, xv, vy, val_groups, sites)[1]
    by_group = group_aurocs(unseen, ty, groups) if names else np.full((0, len(table)), np.nan)
    table["auroc_heldout_kind"] = by_group.mean(0) if names else np.nan
    table["layer"] = table["site"] // n_pos
    table["position"] = table["site"] % n_pos - n_pos
    k_of = {m: k for k, m in enumerate(METHODS)}
    lv = np.einsum("nsd,ksd->ksn", xv.numpy(), weights.numpy()) + biases.numpy()[..., None]  # [k, s, n]
    scores = np.stack([lv[k_of[m], s] for m, s in zip(table["method"], table["site"])])
    harder = hard | (vy == 1)
    fitted = np.where(table["auroc_val"].notna(), 1.0, np.nan)
    table["auroc_val_hard"] = (
        aurocs(vy[harder], scores[:, harder]) if hard.any() else table["auroc_val"]
    ) * fitted
    table["hard_negatives_harmless_val"] = ((scores[:, hard] < 0).mean(1) if hard.any() else np.nan) * fitted
    keys = selection_keys(table)
    best = ranked(table).index[0]
    table["selected"] = table.index == best
    row = table.loc[best]
    k, s = k_of[row["method"]], int(row["site"])
    counts = {
        f"{split}_{kind}": int(sum(x == kind for x in ks))
        for split, ks in (("train", tk), ("val", vk))
        for kind in dict.fromkeys(ks)
    }
    details = {
        "selection": {c: _plain(row[c]) for c in table.columns if c not in ("site", "selected")},
        "rule": (
            "the highest AUROC on held-out kinds (each contrast group held out of the fit in turn, the "
            "AUROC on its safe against unsafe prompts averaged over the groups); ties: "
            if "auroc_heldout_kind" in keys[:1]
            else ""
        )
        + "the highest AUROC on the val split's harmful prompts against its hard negatives; ties: the "
        "lower class-balanced log-loss on the whole val split",
        "heldout_kind": {name: _plain(by_group[j, best]) for j, name in enumerate(names)},
        "prompts": counts,
        "val_refused": {kind: float((mv[vk == kind] > 0).mean()) for kind in dict.fromkeys(vk)},
        "train_refused": {kind: float((mt[np.asarray(tk) == kind] > 0).mean()) for kind in dict.fromkeys(tk)},
        "n_layers": n_layers,
        "positions": n_pos,
    }
    probe = HarmfulnessProbe(
        weights[k, s].clone(),
        float(biases[k, s]),
        int(row["layer"]),
        int(row["position"]),
        str(row["method"]),
        details,
    )
    return probe, table, weights, unseen[:, best]


def cosines(table: pd.DataFrame, weights: torch.Tensor, vector: torch.Tensor) -> np.ndarray:
    """Each table row's probe weights' cosine with `vector` (the refusal direction) [rows]."""
    unit = vector.double() / vector.double().norm()
    w = weights.double()
    norm = w.norm(dim=-1)
    cos = torch.where(
        norm > 0, (w @ unit) / norm.clamp_min(1e-12), torch.nan
    )  # [methods, sites]; unfitted: NaN
    k_of = {m: k for k, m in enumerate(METHODS)}
    return np.array([float(cos[k_of[m], s]) for m, s in zip(table["method"], table["site"])])


# ------------------------------------------------------------------------------------------ cache
def find_probe(
    scorer,
    condition: str,
    make_sets,
    train_prompts: int | None = None,
    val_prompts: int | None = None,
    info: dict | None = None,
    overwrite: bool = False,
) -> tuple[HarmfulnessProbe, pd.DataFrame, torch.Tensor]:
    """The harmfulness probe of the scorer's model under `condition`, its sites table and every site's
    weights [methods, sites, d_model] (`cosines`), fitted on `make_sets(train_prompts, val_prompts)`
    (`toolkit.substitution.frames.calibration_sets`; passed in, the layers below studies make no prompts): cached per
    model, dtype, condition and settings (its numbers checked against their sha256 on load; a file
    that fails is fitted again), else fitted and selected here on the bundled calibration splits."""
    from safetensors.torch import save_file

    from lexprobe.toolkit.io.cache import write_text_atomic
    from lexprobe.toolkit.io.locks import building
    from lexprobe.toolkit.io.results import Timer, write_csv_atomic

    lm = scorer.lm
    path = _entry(lm, condition, train_prompts, val_prompts)
    table_path, weights_path = path.with_suffix(".csv"), path.with_suffix(".safetensors")
    with building(path):
        if path.exists() and table_path.exists() and weights_path.exists() and not overwrite:
            try:
                probe, stored = _cached(path, lm.text_config.hidden_size)
                log.info("harmfulness probe: cache %s", path)
                return probe, pd.read_csv(table_path), stored["weights"]
            except UNUSABLE as err:
                log.warning(
                    "the cached harmfulness probe %s cannot be used (%s); fitting it again", path, err
                )
        timer = Timer()
        with unsteered(lm):  # the probe of the model as it is, whatever steering a study has on
            probe, table, weights, unseen = select_probe(scorer, make_sets(train_prompts, val_prompts))
        unseen = torch.as_tensor(unseen, dtype=torch.float32)
        probe.details.update(
            provenance=info or {},
            seconds=timer.seconds,
            data={
                "fit": "calibration harmful/harmless, lexprobe's frames, hard negatives and contrast prompts, "
                "train split",
                "selection": "contrast groups held out of the fit in turn, then the val split (details.rule)",
                "n_train": train_prompts or "all",
                "n_val": val_prompts or "all",
            },
            sites_sha256=_sha(weights, unseen),  # every site's weights and the unseen kinds' logits
        )
        write_csv_atomic(table, table_path)
        save_file({"weights": weights.contiguous(), "unseen": unseen}, str(weights_path))
        write_text_atomic(path, probe.to_json())
        return probe, table, weights


def _cached(path, d_model: int | None = None) -> tuple[HarmfulnessProbe, dict]:
    """The probe cached at `path` and its arrays ("weights", "unseen"), checked against the probe's
    record of them; one of `UNUSABLE` where the entry is missing, damaged or edited."""
    from safetensors.torch import load_file

    probe = HarmfulnessProbe.from_json(path.read_text(), str(path), d_model)
    stored = load_file(path.with_suffix(".safetensors"))
    if probe.details.get("sites_sha256") != _sha(stored["weights"], stored["unseen"]):
        raise InputError(f"{path.with_suffix('.safetensors')}: its numbers do not match the probe's record")
    return probe, stored


def _entry(lm, condition: str, train_prompts, val_prompts):
    from lexprobe.toolkit.io.cache import model_entry

    key = {
        "dtype": dtype_name(lm.dtype),
        "system_prompt": condition,
        "train": train_prompts,
        "val": val_prompts,
        "data": data_sha(),
        "format": 3,  # 3: selected on kinds held out, the train prompts' held-out logits kept
    }
    return model_entry("harmfulness", lm, key)[0]


def unseen_kinds(scorer, condition: str, make_sets, probe: HarmfulnessProbe):
    """(texts, labels, logits) of the train split's contrast prompts, each read by the selected site's
    probe fitted without its contrast group: what `probe` makes of kinds of prompt it never saw, on its
    own logit scale. From the cache `find_probe` writes (nothing is fitted here); None where `probe` is
    not the model's fitted one under `condition` (a file's, another model's) or the cache is not there."""
    try:
        fitted, stored = _cached(_entry(scorer.lm, condition, None, None))
    except UNUSABLE:
        return None
    if fitted.sha256() != probe.sha256():
        return None
    unseen = stored["unseen"].double().numpy()
    texts, labels, _ = make_sets(None, None)["train"]
    if len(texts) != len(unseen):
        return None
    keep = np.flatnonzero(~np.isnan(unseen))
    return [texts[i] for i in keep], np.asarray(labels)[keep], unseen[keep]


def data_sha() -> str:
    """The identity of the shipped files the probe's prompts are made from (a change fits it again)."""
    from lexprobe import prompts

    digest = hashlib.sha256()
    for name in (
        "harm_frames.json",
        "harm_contrasts.json",
        "trigger_lexicon.json",
        "calibration_harmful_train.json",
        "calibration_harmless_train.json",
        "calibration_harmful_val.json",
        "calibration_harmless_val.json",
    ):
        digest.update(prompts.path(name).read_bytes())
    return digest.hexdigest()[:16]


def _plain(value):
    """A table cell as a JSON value (numpy scalars become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def _sha(weights: torch.Tensor, unseen: torch.Tensor) -> str:
    digest = hashlib.sha256(weights.float().contiguous().numpy().tobytes())
    digest.update(unseen.float().contiguous().numpy().tobytes())
    return digest.hexdigest()
