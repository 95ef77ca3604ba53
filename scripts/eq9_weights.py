"""Eq. 9's loss weights over the paper's schedule, for each ``loss.weighting`` mode (docs/training.md).

Simulates the weights' own optimisation: Adam (lr 1e-4, torch's defaults otherwise), StepLR every 3
epochs x0.9, 6,250 steps per epoch (100k triplets / batch 16), 50 epochs.  A weight's gradient
depends only on its own loss value (``learned``: 0.5 e^w L + 1; ``uncertainty``: -0.5 e^-s L + 0.5),
so each loss is given as a value with batch-to-batch noise (log-normal, ``--noise``); the effective
factor on each loss (0.5 e^w, 0.5 e^-s) is printed at chosen epochs.

With ``--checkpoint RUN/last.pt`` (a run trained with Adam) it also reads each parameter's gradient
RMS from Adam's state (sqrt of the bias-corrected second moment, divided by the loss factor the run
had) and prints, at the simulated ``learned`` factor of each epoch, the share of parameters whose
Adam step is cut by more than half because the scaled gradient falls below Adam's epsilon (1e-8).

    python scripts/eq9_weights.py [--lc 0.5 --lt 0.1] [--checkpoint RUN/last.pt]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

EPOCHS, STEPS, LR, LR_STEP, GAMMA = 50, 6250, 1e-4, 3, 0.9
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults
REPORT = (1, 2, 5, 10, 20, 30, 40, 50)


def simulate(modes: list[tuple[str, float]], losses: list[float], *, epochs: int = EPOCHS, steps: int = STEPS,
             lr: float = LR, noise: float = 0.3, seed: int = 0) -> dict[tuple[str, float], np.ndarray]:
    """Effective factor on each loss after each epoch (``[epoch, loss]``) for each ``(mode, init)``,
    mode in learned | uncertainty | released | fixed.  Adam's update (torch.optim.Adam's, defaults
    betas (0.9, 0.999), eps 1e-8) is written out in numpy over all weights at once (one weight per
    mode and loss; Adam is element-wise, so this equals one optimizer per weight)."""
    n = len(losses)
    learned = np.repeat([m == "learned" for m, _ in modes], n)
    trained = np.repeat([m in ("learned", "uncertainty") for m, _ in modes], n)
    w = np.repeat([float(i) for _, i in modes], n)
    base = np.tile(np.asarray(losses, dtype=np.float64), len(modes))
    m, v, t = np.zeros_like(w), np.zeros_like(w), 0
    rng = np.random.default_rng(seed)
    out = {mode: np.empty((epochs, n)) for mode in modes}
    for epoch in range(epochs):
        rate = lr * GAMMA ** (epoch // LR_STEP)
        factors = np.exp(noise * rng.standard_normal((steps, n)))
        for k in range(steps):
            value = base * np.tile(factors[k], len(modes))
            grad = np.where(learned, 0.5 * np.exp(w) * value + 1.0, -0.5 * np.exp(-w) * value + 0.5)
            t += 1
            m = BETA1 * m + (1 - BETA1) * grad
            v = BETA2 * v + (1 - BETA2) * grad * grad
            step = rate * (m / (1 - BETA1 ** t)) / (np.sqrt(v / (1 - BETA2 ** t)) + EPS)
            w = np.where(trained, w - step, w)
        for j, (mode, _) in enumerate(modes):
            out[(mode, _)][epoch] = effective(mode, w[j * n:(j + 1) * n])
    return out


def effective(mode: str, w: np.ndarray) -> np.ndarray:
    """The factor each loss is multiplied by (Eq. 9's 0.5 e^w; Kendall's 0.5 e^-s; fixed: 1)."""
    if mode == "fixed":
        return np.ones_like(w)
    return 0.5 * np.exp(-w if mode == "uncertainty" else w)


def gradient_rms(checkpoint: str) -> tuple[torch.Tensor, float]:
    """Per-element gradient RMS at loss factor 1 from a checkpoint's Adam state (elements with a
    gradient), and the factor the run had."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = ck["optimizer"]["state"]
    weights = ck.get("history", [{}])[-1]
    factor = weights.get("weight_triplet", 1.0)
    rms = []
    for s in state.values():
        if "exp_avg_sq" not in s or s["exp_avg_sq"].numel() < 2:
            continue  # skip the loss weights themselves
        step = float(s["step"])
        rms.append((s["exp_avg_sq"] / (1 - BETA2 ** step)).sqrt().flatten())
    rms = torch.cat(rms) / factor
    return rms[rms > 0], factor  # elements that never had a gradient (e.g. padding-only taps) never move


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lc", type=float, default=0.5, help="classification loss value (Eq. 7)")
    ap.add_argument("--lt", type=float, default=0.1, help="triplet loss value (Eq. 8)")
    ap.add_argument("--noise", type=float, default=0.3, help="batch-to-batch log-normal spread of the losses")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--steps", type=int, default=STEPS, help="steps per epoch")
    ap.add_argument("--checkpoint", help="a run's last.pt: report how many Adam steps the decay cuts")
    args = ap.parse_args(argv)
    losses = [args.lc, args.lt]
    report = [e for e in REPORT if e <= args.epochs]
    modes = [("learned", 0.0), ("learned", 1.0), ("uncertainty", 0.0), ("released", 1.0), ("fixed", 0.0)]
    print(f"effective factor on (L_c = {args.lc}, L_t = {args.lt}) after epoch; Adam lr {LR}, StepLR "
          f"{LR_STEP}/{GAMMA}, {args.steps} steps/epoch")
    print("mode (init)".ljust(20) + "".join(f"{e:>20d}" for e in report))
    trajectories = simulate(modes, losses, epochs=args.epochs, steps=args.steps, noise=args.noise)
    for (mode, init), traj in trajectories.items():
        cells = "".join(f"{traj[e - 1][0]:>9.3g} / {traj[e - 1][1]:<8.3g}" for e in report)
        print(f"{mode} ({init:g})".ljust(20) + cells)
    learned = trajectories[("learned", 0.0)]
    if args.checkpoint:
        rms, factor = gradient_rms(args.checkpoint)
        print(f"\n{rms.numel():,} parameter elements with a gradient; gradient RMS at factor 1: "
              f"median {rms.median():.3g}, 10th percentile {rms.quantile(0.1):.3g} (run factor {factor:.3g})")
        print("share of elements whose Adam step is cut by more than half (RMS x factor < eps) under 'learned (0)':")
        for e in report:
            c = learned[e - 1][1]
            print(f"  epoch {e:>2d}: factor {c:.3g}: {float((rms * c < EPS).double().mean()):.1%}")


if __name__ == "__main__":
    main()
