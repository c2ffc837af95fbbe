"""Time in the paper-table study: the wall clock and progress log of one invocation, the step
times measured on this machine, and the estimate printed before anything runs.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .plan import METHODS, MODES, TASKS, VARIANTS, Budget


class Clock:
    """Wall clock of one invocation: elapsed time, time-stamped progress lines and seconds per phase."""

    def __init__(self, quiet: bool = False):
        self.t0 = time.perf_counter()
        self.quiet = quiet
        self.phases: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, msg: str) -> None:
        if not self.quiet:
            e = self.elapsed()
            print(f"[{int(e // 60):3d}:{int(e % 60):02d}] {msg}", flush=True)

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds


def fmt_s(s: float) -> str:
    """A duration for people: seconds below 90 s, minutes below 90 min, else hours ("?" if not finite)."""
    if not math.isfinite(s):
        return "?"
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _median_time(step, dev, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``step`` after one warm-up call, CUDA synchronised."""
    import torch

    step()  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def calibrate(budget: Budget, device: str, repeats: int = 2) -> dict[str, float]:
    """Seconds per optimisation step of each kind of run, measured now on this machine."""
    import torch

    from models import GVSL, local_ncc, resolve_device, restoration_mse, smoothness, widths_from_base
    from models.downstream import ClassificationNet, SegmentationNet

    dev = resolve_device(device)
    widths = widths_from_base(budget.width)
    g = torch.Generator().manual_seed(0)
    s, p, c = budget.size, budget.patch, budget.cls_size

    out = {}
    m = GVSL(widths=widths).to(dev)
    opt = torch.optim.Adam(m.parameters())
    a = torch.rand((budget.pre_batch, 1, s, s, s), generator=g).to(dev)
    b = torch.rand((budget.pre_batch, 1, s, s, s), generator=g).to(dev)

    def gvsl_step():
        o = m(a, b, source=a, restore=True)
        loss = local_ncc(o.warped, b) + smoothness(o.displacement) + restoration_mse(o.restored, a)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def rest_step():
        _, loc = m.features(a)
        loss = restoration_mse(m.restoration_head(loc), a)
        opt.zero_grad()
        loss.backward()
        opt.step()

    out["pretrain_matching"] = _median_time(gvsl_step, dev, repeats)
    out["pretrain_restoration"] = _median_time(rest_step, dev, repeats)
    m = opt = None  # free the pre-training net before the downstream ones
    for mode in MODES:
        for kind, side, net in (("seg", p, SegmentationNet(8, widths)), ("cls", c, ClassificationNet(1, widths))):
            net = net.to(dev)
            if mode == "linear":
                net.freeze_backbone()
            o2 = torch.optim.Adam([q for q in net.parameters() if q.requires_grad])
            x = torch.rand((budget.ft_batch, 1, side, side, side), generator=g).to(dev)

            def step(net=net, o2=o2, x=x):
                loss = net(x).float().mean()
                o2.zero_grad()
                loss.backward()
                o2.step()

            out[f"{kind}_{mode}"] = _median_time(step, dev, repeats)
    return out


def estimate(budget: Budget, n_seeds: int, steps: dict[str, float]) -> dict[str, float]:
    """Seconds per phase from step times (+15 % for augmentation, validation and checkpoints, 5 s per run)."""
    over, per_run = 1.15, 5.0
    pre = budget.pre_iters * (3 * steps["pretrain_matching"] + steps["pretrain_restoration"]) * over
    pre += len(VARIANTS) * per_run
    down = 0.0
    for mode in MODES:
        down += budget.iters(mode) * len(METHODS) * (2 * steps[f"seg_{mode}"] + steps[f"cls_{mode}"]) * over
        down += len(METHODS) * len(TASKS) * per_run
    clus = len(METHODS) * (budget.n_embed * (1.0 + 3 * steps["seg_linear"]) + 3.0 + 0.005 * 7 * budget.per_label)
    per_seed = {"pretrain": pre, "downstream": down, "clustering": clus}
    est = {k: v * n_seeds for k, v in per_seed.items()}
    est["data"] = 0.2 * (budget.n_heart + budget.n_cls + budget.n_embed) + 0.25 * budget.n_brain + 5.0
    est["total"] = sum(est.values())
    return est
