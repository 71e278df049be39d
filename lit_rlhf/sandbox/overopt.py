"""``lit-rlhf sandbox overopt``: reward over-optimisation curves, gold vs proxy reward against sqrt(KL).

Gao, Schulman & Hilton (2022) optimise a policy against a proxy reward model and watch a gold reward
model: as the policy moves away from its initialisation (d = sqrt(KL) in nats), the proxy keeps
rising while the gold score peaks and falls. The sandbox's gold labeler plays the gold RM here:

1. **models**: the SFT model (reused from ``<out>/sft/model`` or ``--sft``, else trained by
   ``configs/sft.yaml``) and a proxy RM trained by ``configs/rm.yaml`` on comparisons of only
   ``rm_prompts`` prompts: the knob that makes the proxy weak enough to be over-optimised in minutes;
2. **best-of-n**: ``bon_samples`` SFT samples per held-out prompt, each scored by gold and proxy; the
   best-of-n (by proxy) expectation for every n is the unbiased estimator over subsets of the samples,
   its KL ``log n - (n-1)/n`` beside a sampled (plug-in) estimate;
3. **RL**: one longer PPO run and one PPO-ptx run of ``configs/ppo.yaml`` with
   :class:`~lit_rlhf.sandbox.callbacks.GoldProxyKLProbe`: gold, proxy and KL of the same (EMA)
   policy on the same held-out samples every ``probe_every`` rollouts;
4. **fits and report**: ``d (alpha - beta d)`` for best-of-n and ``d (alpha - beta log d)`` for RL
   fitted to the gains over the SFT policy (least squares, R^2), ``overopt.md`` / ``overopt.json``
   and ``overopt.png`` with the gold peak marked.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from lit_rlhf.sandbox.paths import DATA_DIR
from lit_rlhf.sandbox.scaling_fits import Fit, best_of_n_weights, bon_kl, bon_kl_plugin, fit_gain, observed_peak

#: --fast: the plumbing only, for the test suite (seconds; numbers meaningless). Validation is off because
#: the probe measures the policy; steps_per_rollout follows the smaller rollout batch.
FAST = {
    "rm": ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"],
    "ppo": [
        "--trainer.limit_val_batches",
        "0",
        "--data.init_args.val_text",
        "null",
        "--model.init_args.batch.rollout_batch_size",
        "8",
        "--model.init_args.batch.minibatch_size",
        "8",
    ],
    "steps_per_rollout": 1,
}


def best_of_n_curve(
    sft: str,
    rm: str,
    prompts: str,
    num_prompts: int,
    samples_per_prompt: int,
    max_new_tokens: int,
    seed: int,
) -> list[dict[str, float]]:
    """Gold and proxy score of best-of-n (chosen by the proxy) for n = 1, 2, 4, ... <= ``samples_per_prompt``,
    with the analytic and the sampled KL to the SFT policy. Every sample is the SFT policy's at T = 1."""
    from lit_rlhf.data.records import read_records
    from lit_rlhf.models.loading import load_causal_lm, load_scalar_model, load_tokenizer
    from lit_rlhf.sandbox.callbacks import score_samples

    scored = score_samples(
        load_causal_lm(sft, trainable=False),
        load_tokenizer(sft, padding_side="left"),
        read_records(prompts)[:num_prompts],
        reward_model=load_scalar_model(rm, trainable=False),
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        seed=seed,
    )
    k = samples_per_prompt
    gold, proxy = (np.array(scored.scores[name]).reshape(-1, k) for name in ("gold", "proxy"))
    texts = [scored.responses[i : i + k] for i in range(0, len(scored.responses), k)]
    order = np.argsort(proxy, axis=1, kind="stable")  # ascending proxy: best-of-n picks the highest
    gold_sorted, proxy_sorted = np.take_along_axis(gold, order, 1), np.take_along_axis(proxy, order, 1)
    points = []
    n = 1
    while n <= k:
        weights = best_of_n_weights(k, n)
        points.append(
            {
                "n": n,
                "kl": bon_kl(n),
                # Identical texts are one outcome: a small policy repeats itself, which the formula ignores.
                "kl_sampled": float(np.mean([bon_kl_plugin(p, n, outcomes=t) for p, t in zip(proxy, texts)])),
                "gold": float(np.mean(gold_sorted @ weights)),
                "proxy": float(np.mean(proxy_sorted @ weights)),
            }
        )
        n *= 2
    return points


def fit_curve(form: str, points: list[dict[str, float]], kl_key: str = "kl") -> dict[str, dict]:
    """Fits of gold and proxy gains (over the first point, the SFT policy) against d = sqrt(KL); a curve with
    too few points away from d = 0 gets ``alpha = beta = r2 = None`` and the reason."""
    d = np.sqrt(np.maximum([p[kl_key] for p in points], 0.0))  # a k1 KL estimate can dip below 0 by noise
    fits = {}
    for key in ("gold", "proxy"):
        values = np.array([p[key] for p in points])
        peak_d, peak_value = observed_peak(d, values)
        summary = {
            "start": float(values[0]),
            "observed_peak_kl": peak_d**2,
            "observed_peak": peak_value,
            "last": float(values[-1]),
        }
        try:
            fit = fit_gain(form, d, values - values[0])
        except ValueError as error:
            fits[key] = {
                "alpha": None,
                "beta": None,
                "r2": None,
                "num_points": len(values),
                "fitted_peak_kl": None,
                "error": str(error),
                **summary,
            }
            continue
        peak_kl = fit.peak_kl if fit.peak_kl is not None and math.isfinite(fit.peak_kl) else None  # JSON has no inf
        fits[key] = {
            "alpha": fit.alpha,
            "beta": fit.beta,
            "r2": fit.r2,
            "num_points": fit.num_points,
            "fitted_peak_kl": peak_kl,
            **summary,
        }
    return fits


def over_optimised(points: list[dict[str, float]], margin: float = 0.01) -> bool:
    """Gold has peaked and fallen (last point ``margin`` below the peak) while the proxy ended at or near its
    own maximum (within ``margin``) and above where it was at the gold peak."""
    gold, proxy = [p["gold"] for p in points], [p["proxy"] for p in points]
    peak = int(np.argmax(gold))
    return (
        peak < len(gold) - 1
        and gold[-1] < gold[peak] - margin
        and proxy[-1] > max(proxy) - margin
        and proxy[-1] > proxy[peak]
    )


def read_history(path: Path) -> list[dict[str, float]]:
    """Probe measurements (``probe/*`` JSON lines) as points ``{"rollout", "kl", "gold", "proxy"}``."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {
            "rollout": r["probe/rollout"],
            "kl": max(r["probe/kl"], 0.0),
            "gold": r["probe/gold"],
            "proxy": r["probe/proxy"],
        }
        for r in rows
    ]


def plot_curves(curves: dict[str, tuple[str, list[dict[str, float]], dict]], out: Path) -> Path:
    """One panel per curve: gold and proxy against d = sqrt(KL), fitted curves drawn, gold peak marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 4.2), squeeze=False)
    for ax, (title, (form, points, fits)) in zip(axes[0], curves.items()):
        d = np.sqrt([p["kl"] for p in points])
        grid = np.linspace(0, d.max() * 1.05, 200)
        for key, color, marker in (("gold", "tab:orange", "o"), ("proxy", "tab:blue", "s")):
            f = fits[key]
            ax.plot(d, [p[key] for p in points], marker, color=color, ms=4, alpha=0.8, label=f"{key} (measured)")
            if f["alpha"] is not None:
                fitted = Fit(form, f["alpha"], f["beta"], f["r2"], f["num_points"])
                ax.plot(
                    grid,
                    f["start"] + fitted(grid),
                    "-",
                    color=color,
                    label=f"{key} fit  α={f['alpha']:.3f} β={f['beta']:.3f} R²={f['r2']:.2f}",
                )
        peak_kl = fits["gold"]["fitted_peak_kl"]
        if peak_kl is not None and peak_kl**0.5 <= grid[-1]:
            ax.axvline(peak_kl**0.5, color="tab:orange", ls="--", lw=1, label=f"gold peak (fit): KL {peak_kl:.2f} nats")
        gold_peak = fits["gold"]
        ax.plot(
            gold_peak["observed_peak_kl"] ** 0.5,
            gold_peak["observed_peak"],
            "*",
            color="tab:red",
            ms=12,
            label=f"gold peak (measured): KL {gold_peak['observed_peak_kl']:.2f} nats",
        )
        ax.set_title(title)
        ax.set_xlabel("d = sqrt(KL(policy || SFT)), nats^½")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _peak(kl: Optional[float], points: list[dict[str, float]]) -> str:
    """The fitted peak's KL, or where it lies when it is not inside the measured range."""
    measured = max(p["kl"] for p in points)
    if kl is None:
        return "none"  # rising everywhere, or so flat that the turn is astronomically far
    return f"{kl:.2f}" if kl <= measured else f"beyond {measured:.1f}"


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def write_overopt_report(
    root: Path, curves: dict[str, tuple[str, list[dict[str, float]], dict]], bon: list[dict[str, float]], settings: dict
) -> Path:
    """overopt.md (tables), overopt.json (every point and fit) and overopt.png next to each other under ``root``."""
    plot = plot_curves(curves, root / "overopt.png")
    lines = [
        "| curve | score | form | α | β | R² | start | peak (measured) at KL | last | fitted peak KL "
        "| over-optimised |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for title, (form, points, fits) in curves.items():
        flag = "yes" if over_optimised(points) else "no"
        for key in ("gold", "proxy"):
            f = fits[key]
            lines.append(
                f"| {title} | {key} | {'d(α−βd)' if form == 'bon' else 'd(α−β·log d)'} | {_fmt(f['alpha'])} "
                f"| {_fmt(f['beta'])} | {_fmt(f['r2'], 2)} "
                f"| {f['start']:.3f} | {f['observed_peak']:.3f} at {f['observed_peak_kl']:.2f} | {f['last']:.3f} "
                f"| {_peak(f['fitted_peak_kl'], points)} "
                f"| {flag if key == 'gold' else ''} |"
            )
    lines += [
        "",
        "Best-of-n (chosen by the proxy RM from SFT samples at T = 1):",
        "",
        "| n | KL analytic (log n − (n−1)/n) | KL sampled (plug-in) | gold | proxy |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {p['n']} | {p['kl']:.3f} | {p['kl_sampled']:.3f} | {p['gold']:.3f} | {p['proxy']:.3f} |" for p in bon]
    for title, (form, points, _) in curves.items():
        if form == "rl":
            lines += [
                "",
                f"{title} (probe every {settings['probe_every']} rollouts: gold, proxy and KL of the same EMA policy):",
                "",
                "| rollout | KL | sqrt(KL) | gold | proxy |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {int(p['rollout'])} | {p['kl']:.3f} | {p['kl'] ** 0.5:.3f} | {p['gold']:.3f} | {p['proxy']:.3f} |"
                for p in points
            ]
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), f"Plot: {plot}"]
    text = "\n".join(lines)
    print("\n" + text + "\n", flush=True)
    (root / "overopt.md").write_text(text + "\n")
    results = {
        "settings": settings,
        "best_of_n": bon,
        "curves": {t: {"form": f, "points": p, "fits": fits} for t, (f, p, fits) in curves.items()},
    }
    (root / "overopt.json").write_text(json.dumps(results, indent=2))
    return root / "overopt.md"


def overopt(
    out: str = "runs/overopt",
    seed: int = 0,
    sft: Optional[str] = None,
    rm: Optional[str] = None,
    rm_prompts: int = 100,
    rm_k: int = 4,
    kl_coef: float = 0.0,
    learning_rate: float = 1.0e-4,
    rollouts: int = 64,
    probe_every: int = 4,
    probe_prompts: int = 100,
    probe_samples: int = 4,
    bon_prompts: int = 100,
    bon_samples: int = 32,
    ptx: bool = True,
    fast: bool = False,
    wandb: bool = False,
    configs: str = "configs",
) -> Path:
    """Reward over-optimisation curves on the sandbox: gold (labeler) and proxy (RM) score against
    sqrt(KL to SFT) for best-of-n and for PPO / PPO-ptx, fitted (Gao et al. 2022) and plotted.

    The default setting is the documented knob that shows over-optimisation in minutes on 2 CPU
    cores: a proxy RM trained on few comparisons (``rm_prompts`` x ``rm_k``), no KL penalty
    (``kl_coef``) and a larger learning rate, for ``rollouts`` rollouts.

    Args:
        out: Output directory: ``overopt.md``, ``overopt.json``, ``overopt.png`` and each stage's outputs.
        seed: Seed of every stage and sampler.
        sft: SFT model directory. Default: ``<out>/sft/model`` when it exists, else trained with ``<configs>/sft.yaml``.
        rm: Proxy reward-model directory. Default: trained with ``<configs>/rm.yaml`` on ``rm_prompts`` prompts.
        rm_prompts: Training prompts whose SFT samples are gold-labeled into the proxy RM's comparisons
            (the full sandbox run uses 1000): fewer makes a weaker proxy that PPO exploits sooner.
        rm_k: Responses sampled and ranked per RM prompt (K; paper 4 to 9).
        kl_coef: PPO's KL coefficient beta (paper 0.02): lower lets the policy run further from SFT.
        learning_rate: PPO's policy learning rate (configs/ppo.yaml: 5e-5).
        rollouts: PPO iterations (rollout batches of 32 episodes) of each RL run.
        probe_every: Measure gold, proxy and KL of the policy every this many rollouts.
        probe_prompts: Held-out prompts per measurement.
        probe_samples: Samples per held-out prompt per measurement.
        bon_prompts: Held-out prompts of the best-of-n sweep.
        bon_samples: SFT samples per prompt for best-of-n (n = 1, 2, 4, ... up to this).
        ptx: Also run PPO-ptx (``ptx.gamma`` of configs/ppo.yaml).
        fast: For tests: 2 RM steps, rollouts of 8 episodes, no PPO validation (pair it with small ``rollouts``,
            ``probe_*`` and ``bon_*``); the numbers are then meaningless.
        wandb: Also log each stage to Weights & Biases (offline unless WANDB_MODE=online).
        configs: Directory holding sft.yaml, rm.yaml and ppo.yaml.
    """
    from lit_rlhf.errors import ConfigError
    from lit_rlhf.sampling import sample_responses
    from lit_rlhf.sandbox.labeling import label_samples
    from lit_rlhf.sandbox.pipeline import fit, probe_callback
    from lit_rlhf.sandbox.report import MAX_NEW_TOKENS, last_value, read_csv_metrics

    for name, value, low in (
        ("rm_prompts", rm_prompts, 2),
        ("rm_k", rm_k, 2),
        ("rollouts", rollouts, 1),
        ("probe_every", probe_every, 1),
        ("probe_prompts", probe_prompts, 1),
        ("probe_samples", probe_samples, 1),
        ("bon_prompts", bon_prompts, 1),
        ("bon_samples", bon_samples, 2),
    ):
        if value < low:
            raise ConfigError(f"--{name} must be at least {low}, got {value}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seed_args = ["--seed_everything", str(seed)]
    size = FAST if fast else {}

    sft_dir = sft or str(root / "sft/model")
    if not Path(sft_dir).exists():
        if sft:
            raise ConfigError(
                f"--sft '{sft}' does not exist: run `lit-rlhf fit --config {configs}/sft.yaml` or "
                "`lit-rlhf sandbox run`"
            )
        fit(f"{configs}/sft.yaml", root / "sft", "sft", seed_args, wandb=wandb)
    rm_dir = rm or str(root / "rm/model")
    if rm is None:
        samples = sample_responses(
            model=sft_dir,
            prompts=str(DATA_DIR / "prompts_train.jsonl"),
            out=str(root / "comparisons/samples.jsonl"),
            k=rm_k,
            limit=rm_prompts,
            max_new_tokens=MAX_NEW_TOKENS,
            temperature=1.0,
            seed=seed,
        )
        label_samples(str(samples), str(root / "comparisons"), seed=seed)
        rm_data = [
            "--data.init_args.train",
            str(root / "comparisons/train.jsonl"),
            "--data.init_args.val",
            str(root / "comparisons/val.jsonl"),
        ]
        fit(
            f"{configs}/rm.yaml",
            root / "rm",
            "rm_proxy",
            seed_args + ["--model.init_args.model", sft_dir] + rm_data + size.get("rm", []),
            wandb=wandb,
        )
    print(f"[overopt] models ready: {time.perf_counter() - started:.0f} s", flush=True)

    prompts = str(DATA_DIR / "prompts_eval.jsonl")
    bon = best_of_n_curve(sft_dir, rm_dir, prompts, bon_prompts, bon_samples, MAX_NEW_TOKENS, seed)
    print(f"[overopt] best-of-n: {time.perf_counter() - started:.0f} s", flush=True)

    curves: dict[str, tuple[str, list[dict[str, float]], dict]] = {"best-of-n": ("bon", bon, fit_curve("bon", bon))}
    runs = [("PPO", "ppo", ["--model.init_args.ptx.gamma", "0"])] + ([("PPO-ptx", "ppo_ptx", [])] if ptx else [])
    for title, name, extra in runs:
        history = root / name / "probe.jsonl"
        history.unlink(missing_ok=True)  # a rerun starts a fresh curve
        probe = probe_callback(probe_prompts, probe_every, probe_samples, history_file=history)
        overrides = (
            seed_args
            + [
                "--model.init_args.policy",
                sft_dir,
                "--model.init_args.reward_model",
                rm_dir,
                "--model.init_args.kl.coef",
                str(kl_coef),
                "--model.init_args.optimizer.learning_rate",
                str(learning_rate),
                "--trainer.max_epochs",
                "1000",
                "--trainer.max_steps",
                str(rollouts * size.get("steps_per_rollout", steps_per_rollout(f"{configs}/ppo.yaml"))),
                "--trainer.check_val_every_n_epoch",
                "1000",  # the probe measures; no per-epoch validation needed
            ]
            + extra
            + size.get("ppo", [])
        )
        fit(f"{configs}/ppo.yaml", root / name, name, overrides, wandb=wandb, callbacks=[probe])
        points = read_history(history)
        curves[title] = ("rl", points, fit_curve("rl", points))
        print(f"[overopt] {title}: {time.perf_counter() - started:.0f} s", flush=True)

    rm_accuracy = last_value(read_csv_metrics(root / "rm/csv/metrics.csv"), "val/accuracy") if rm is None else None
    trained_rm = rm is None  # the RM knobs say nothing about a given --rm
    settings = {
        "rm_prompts": rm_prompts if trained_rm else None,
        "rm_k": rm_k if trained_rm else None,
        "rm_val_accuracy": None if rm_accuracy is None else round(rm_accuracy, 3),
        "kl_coef": kl_coef,
        "learning_rate": learning_rate,
        "rollouts": rollouts,
        "probe_every": probe_every,
        "probe_prompts": probe_prompts,
        "probe_samples": probe_samples,
        "bon_prompts": bon_prompts,
        "bon_samples": bon_samples,
        "seed": seed,
        "sft": sft_dir,
        "rm": rm_dir,
    }
    report = write_overopt_report(root, curves, bon, settings)
    print(f"[overopt] done in {time.perf_counter() - started:.0f} s; report: {report}")
    return report


def steps_per_rollout(config: str) -> int:
    """Optimizer steps per rollout of a PPO config: ``ppo_epochs x rollout_batch_size / minibatch_size`` of its
    ``batch`` group (``trainer.max_steps`` counts optimizer steps, the curve counts rollouts)."""
    import yaml

    from lit_rlhf.modules.ppo_settings import RolloutBatchSettings

    batch = RolloutBatchSettings(**yaml.safe_load(Path(config).read_text())["model"]["init_args"].get("batch", {}))
    return batch.ppo_epochs * batch.rollout_batch_size // batch.minibatch_size
