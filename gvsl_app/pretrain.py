"""GVSL pre-training as a generator of progress reports (CLI, GUI and torchrun share it)."""
from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from models import GVSL, local_ncc, multiscale_ncc, restoration_mse, smoothness, widths_from_base
from models.spatial import sampling_coordinates, warp
from models.checkpoint import load_state_into
from models.device import autocast

from . import distributed
from .config import PretrainConfig, as_dict
from .progress import Progress, StopFlag
from .runs import RunFolder


class PretrainObjective(nn.Module):
    """The loss of one pre-training variant as a module (so DDP can wrap it whole).

    ``gvsl``: NCC (or multi-scale NCC, ``config.similarity``) + smoothness on the match of
    the moving scan to the fixed scan + restoration MSE of the appearance-transformed moving
    scan. With ``match_input="transformed"`` (the paper's recipe) the backbone matches the
    appearance-transformed moving scan (the clean one is warped); with ``"clean"`` (the
    default) it matches the clean scans and restores the transformed one in a second pass.
    ``restoration``: MSE only (Models Genesis-style fundament). ``matching``: Z-Matching only,
    on clean scans. ``no-affine``: like ``gvsl`` with the affine head disabled.
    """

    def __init__(self, model: GVSL, config: PretrainConfig):
        super().__init__()
        self.model = model
        self.variant = config.variant
        self.similarity = multiscale_ncc if config.similarity == "multiscale-ncc" else local_ncc
        self.match_clean = config.match_input == "clean"
        self.w = (config.w_ncc, config.w_smooth, config.w_mse)
        self.w_affine = config.w_affine if config.variant != "no-affine" else 0.0

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, moving_input: torch.Tensor,
                amp_device: torch.device | None = None, deformable: bool = True) -> dict[str, torch.Tensor]:
        w_ncc, w_smooth, w_mse = self.w
        terms: dict[str, torch.Tensor] = {}
        with autocast(amp_device or moving.device, enabled=amp_device is not None):
            if self.variant == "restoration":
                terms["mse"] = restoration_mse(self._restore(moving_input), moving)
            else:
                restore = self.variant != "matching"
                clean = self.variant == "matching" or self.match_clean
                out = self.model(moving if clean else moving_input, fixed, source=moving,
                                 restore=restore and not clean, deformable=deformable)
                terms["ncc"] = self.similarity(out.warped, fixed)
                terms["smooth"] = smoothness(out.displacement)
                if self.w_affine > 0:
                    # The affine part scored on its own: otherwise the deformable head, which
                    # learns faster, absorbs the global misalignment and the affine head starves.
                    coords = sampling_coordinates(tuple(fixed.shape[2:]), affine=out.affine, batch=fixed.shape[0])
                    terms["ncc_affine"] = self.similarity(warp(moving, coords), fixed)
                if restore:
                    restored = self._restore(moving_input) if clean else out.restored
                    terms["mse"] = restoration_mse(restored, moving)
        weights = {"ncc": w_ncc, "smooth": w_smooth, "mse": w_mse, "ncc_affine": self.w_affine}
        terms["loss"] = sum(weights[k] * v for k, v in terms.items())
        return terms

    def _restore(self, corrupted: torch.Tensor) -> torch.Tensor:
        _, local = self.model.features(corrupted)
        return self.model.restoration_head(local).float()


def close_loader(iterator) -> None:
    """Shut DataLoader workers down through their done event, also when leaving on an
    exception; workers ignore SIGTERM (see ``datasets.worker_init``), so they must never be
    left for multiprocessing's exit hook to terminate."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class StepSampler(Sampler[int]):
    """Global sample indices from ``start`` on, interleaved across ranks.

    Sample ``k`` of rank ``r`` is ``k * world + r``; each index fully determines its pair
    and augmentation, so a resumed run sees exactly the samples it would have seen.
    """

    def __init__(self, start: int, count: int, rank: int = 0, world: int = 1):
        self.start, self.count, self.rank, self.world = start, count, rank, world

    def __iter__(self):
        for k in range(self.start, self.start + self.count):
            yield k * self.world + self.rank

    def __len__(self) -> int:
        return self.count


def build_model(config: PretrainConfig) -> GVSL:
    return GVSL(widths=widths_from_base(config.width), use_affine=config.variant != "no-affine",
                affine_head=config.affine_head, deformable_head=config.deformable_head)


def _lr_lambda(config: PretrainConfig):
    def f(step: int) -> float:
        return min(1.0, (step + 1) / config.warmup) if config.warmup > 0 else 1.0
    return f


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(), "python": random.getstate()[1]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _make_data(config: PretrainConfig, info: distributed.DistInfo, start_step: int, device: torch.device):
    from .datasets import PairDataset, validation_pair, worker_init

    dataset = PairDataset(config.data, config.size, seed=config.seed, n_synthetic=config.n_synthetic,
                          relative_pose=config.relative_pose)
    remaining = config.iters - start_step
    sampler = StepSampler(start_step * config.batch, remaining * config.batch, info.rank, info.world)
    loader = DataLoader(dataset, batch_size=config.batch, sampler=sampler, num_workers=config.workers,
                        pin_memory=device.type == "cuda", persistent_workers=config.workers > 0,
                        worker_init_fn=worker_init if config.workers > 0 else None,
                        prefetch_factor=4 if config.workers > 0 else None)
    return dataset, loader, validation_pair(dataset)


def pretrain(config: PretrainConfig, stop: StopFlag | None = None) -> Iterator[Progress]:
    """Run (or resume) a pre-training run, yielding a ``Progress`` per logged step.

    Writes the run folder on rank 0: ``config.yaml``, ``metrics.jsonl``, ``last.pt`` every
    ``ckpt_every`` steps and when stopped, ``best.pt`` when the NCC (or MSE for the
    restoration variant) on a fixed validation pair improves, and ``report.json``. A
    non-finite loss stops the run with ``phase="error"`` without overwriting checkpoints.
    """
    stop = StopFlag() if stop is None else stop  # an unset flag is falsy: never `stop or ...`
    info, device = distributed.setup(config.device)
    try:
        # Only rank 0 writes the run folder, so only rank 0 holds it.
        with RunFolder(config.run).lock() if info.is_main else contextlib.nullcontext():
            yield from _pretrain(config, stop, info, device)
    finally:
        distributed.teardown()


def _pretrain(config: PretrainConfig, stop: StopFlag, info: distributed.DistInfo,
              device: torch.device) -> Iterator[Progress]:
    run = RunFolder(config.run)
    torch.manual_seed(config.seed + info.rank)
    model = build_model(config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config))
    start, best = 0, math.inf
    if info.is_main:
        run.remove_stale_temporaries()
    if config.resume:
        run.require_resumable()
        ck = run.load_checkpoint("last")
        load_state_into(model, ck["model"], source=run.last)
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        start, best = int(ck["iteration"]), float(ck.get("best", math.inf))
    if start >= config.iters:
        yield Progress(start, config.iters, phase="done", message="run already complete")
        return
    # The data is read (and refused, if bad) before the run folder is touched.
    dataset, loader, val_pair = _make_data(config, info, start, device)
    if info.is_main:
        if not config.resume:
            run.start_fresh(config.overwrite)
        run.create()
        run.write_config(config)
        if start:
            run.truncate_metrics(start)
    objective: nn.Module = PretrainObjective(model, config)
    if info.enabled:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.variant != "gvsl")
    if config.compile:
        objective = torch.compile(objective)
    amp_device = device if (config.amp and device.type == "cuda") else None

    def state(iteration: int) -> dict:
        return {"kind": "pretrain", "config": as_dict(config), "model_config": model.config(),
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": _rng_state(), "iteration": iteration, "best": best}

    val_pair = tuple(t.to(device) for t in val_pair)
    yield Progress(start, config.iters, phase="train", message=f"training on {device} ({len(dataset)} subjects)")

    step, t_last, wait_acc, n_acc = start, time.perf_counter(), 0.0, 0
    t_start = time.perf_counter()
    it = iter(loader)
    try:
        status = "done"
        while step < config.iters:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            moving, fixed, moving_input = (batch[k].to(device, non_blocking=True) for k in ("moving", "fixed", "moving_input"))
            wait_acc += time.perf_counter() - t0
            objective.train()
            terms = objective(moving, fixed, moving_input, amp_device=amp_device,
                              deformable=step >= config.affine_warmup)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            step += 1
            n_acc += 1
            log_now = step % config.log_every == 0 or step == config.iters
            if log_now or step % config.ckpt_every == 0:
                values = {k: float(v.detach()) for k, v in terms.items()}  # the only host sync
                # Every rank checks on the same steps and they agree: a rank that stopped alone
                # would leave the others waiting forever in the next all-reduce.
                finite_here = all(math.isfinite(v) for v in values.values())
                if distributed.broadcast_flag(not finite_here, info, device):
                    where = "" if not finite_here else " on another rank"
                    msg = (f"non-finite loss at iteration {step}{where} ({values} here); stopped on every rank, "
                           f"keeping the last good checkpoint {run.last}. Try a lower --lr or check the data.")
                    if info.is_main:
                        run.log({"iteration": step, "event": "error", "message": msg})
                    yield Progress(step, config.iters, phase="error", losses=values, message=msg)
                    return
            opt.step()
            sched.step()
            if log_now:
                now = time.perf_counter()
                sps = (now - t_last) / n_acc
                record = {"iteration": step, **values, "lr": sched.get_last_lr()[0], "sec_per_step": sps,
                          "samples_per_s": config.batch * info.world / sps, "data_wait_s": wait_acc / n_acc}
                eta = sps * (config.iters - step)
                if info.is_main:
                    run.log(record)
                yield Progress(step, config.iters, losses={k: values[k] for k in values}, lr=record["lr"],
                               sec_per_step=sps, samples_per_s=record["samples_per_s"],
                               data_wait_s=record["data_wait_s"], eta_s=eta)
                t_last, wait_acc, n_acc = time.perf_counter(), 0.0, 0
            if step % config.val_every == 0 or step == config.iters:
                val = validate(model, config, val_pair)
                if info.is_main:
                    run.log({"iteration": step, "event": "validate", **{f"val_{k}": v for k, v in val.items()}})
                    key = "mse" if config.variant == "restoration" else "ncc"
                    if val[key] < best:
                        best = val[key]
                        run.save_checkpoint("best", state(step))
                yield Progress(step, config.iters, phase="validate", metrics=val)
            if info.is_main and config.snapshot_every > 0 and step % config.snapshot_every == 0:
                run.save_snapshot(step, {"kind": "pretrain", "config": as_dict(config), "iteration": step,
                                         "model_config": model.config(), "model": model.state_dict()})
            stop_now = distributed.broadcast_flag(stop.is_set(), info, device)
            if info.is_main and (step % config.ckpt_every == 0 or step == config.iters or stop_now):
                run.save_checkpoint("last", state(step))
            if stop_now:
                status = "stopped"
                break
    finally:
        close_loader(it)
    wall = time.perf_counter() - t_start
    checksums = _rank_checksums(model, info, device)
    if info.is_main:
        report = {"rank_param_checksums": checksums,"kind": "pretrain", "status": status, "iteration": step, "iters": config.iters,
                  "variant": config.variant, "best_val": best, "wall_s": wall, "device": str(device),
                  "world_size": info.world, "last": str(run.last),
                  "best": str(run.best) if run.best.is_file() else None}
        run.write_report(report)
    yield Progress(step, config.iters, phase=status, message=f"{status} at iteration {step}; checkpoint {run.last}")


@torch.no_grad()
def _rank_checksums(model: nn.Module, info: distributed.DistInfo, device: torch.device) -> list[float]:
    """Sum of |parameters| on every rank (one per rank): equal values show DDP kept replicas in sync."""
    total = torch.stack([p.detach().double().abs().sum() for p in model.parameters()]).sum().to(device)
    if not info.enabled:
        return [float(total)]
    import torch.distributed as dist

    out = [torch.zeros_like(total) for _ in range(info.world)]
    dist.all_gather(out, total)
    return [float(t) for t in out]


@torch.no_grad()
def validate(model: GVSL, config: PretrainConfig, pair: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """NCC, smoothness and restoration MSE on a fixed, un-augmented pair (model in eval mode)."""
    moving, fixed = pair
    was = model.training
    model.eval()
    out = model(moving, fixed, restore=True)
    res = {"ncc": float(local_ncc(out.warped, fixed)), "smooth": float(smoothness(out.displacement)),
           "mse": float(restoration_mse(out.restored, moving)), "ncc_before": float(local_ncc(moving, fixed))}
    model.train(was)
    return res
