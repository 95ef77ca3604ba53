"""scripts/eq9_weights.py: its Adam is torch's, and each mode's weights move as the docs say."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "eq9_weights.py"


@pytest.fixture(scope="module")
def eq9():
    spec = importlib.util.spec_from_file_location("eq9_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_written_out_adam_is_torch_adam_with_steplr(eq9):
    losses, epochs, steps = [0.5, 0.1], 7, 40
    got = eq9.simulate([("learned", 0.0), ("uncertainty", 0.0)], losses, epochs=epochs, steps=steps, lr=1e-2)
    rng = np.random.default_rng(0)  # the script's draws, in its order
    factors = [np.exp(0.3 * rng.standard_normal((steps, 2))) for _ in range(epochs)]
    for mode, grad_of in (("learned", lambda w, L: 0.5 * torch.exp(w) * L + 1),
                          ("uncertainty", lambda w, L: -0.5 * torch.exp(-w) * L + 0.5)):
        w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        opt = torch.optim.Adam([w], lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.9)
        for e in range(epochs):
            for k in range(steps):
                value = torch.tensor(losses, dtype=torch.float64) * torch.from_numpy(factors[e][k])
                w.grad = grad_of(w.detach(), value)
                opt.step()
            sched.step()
            sign = 1 if mode == "learned" else -1
            want = 0.5 * torch.exp(sign * w.detach()).numpy()
            np.testing.assert_allclose(got[(mode, 0.0)][e], want, rtol=1e-9)


def test_each_mode_moves_as_documented(eq9):
    out = eq9.simulate([("learned", 0.0), ("uncertainty", 0.0), ("released", 1.0), ("fixed", 0.0)], [0.5, 0.1],
                       epochs=3, steps=2000, lr=1e-2)
    learned = out[("learned", 0.0)]
    assert (np.diff(learned, axis=0) < 0).all() and learned[-1].max() < 0.5 * math.exp(-50)  # only falls
    assert np.allclose(out[("released", 1.0)], 0.5 * math.e) and np.allclose(out[("fixed", 0.0)], 1.0)
    # Kendall's weighting settles at 0.5 / L (s = log L), up to the batch noise
    assert out[("uncertainty", 0.0)][-1] == pytest.approx([0.5 / 0.5, 0.5 / 0.1], rel=0.1)
