"""GVSL pre-training as a generator of progress reports (CLI, GUI and torchrun share it)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from gvsl_app.data.loading import close_loader, step_loader
from gvsl_app.memory import check_training_fits
from gvsl_app.training import distributed
from gvsl_app.training.config import PretrainConfig, as_dict
from gvsl_app.training.objective import PretrainObjective
from gvsl_app.training.progress import Progress, StopFlag
from gvsl_app.training.runs import RunFolder, non_finite_message, refuse_run_among_data
from models import GVSL, local_ncc, restoration_mse, smoothness, widths_from_base
from models.checkpoint import load_state_into


def build_model(config: PretrainConfig) -> GVSL:
    """The GVSL network a pre-training configuration describes (variant, width, heads)."""
    return GVSL(
        widths=widths_from_base(config.width),
        use_affine=config.variant != "no-affine",
        affine_head=config.affine_head,
        deformable_head=config.deformable_head,
    )


DECAY_FLOOR = 0.02


def lr_factor(config: PretrainConfig, step: int) -> float:
    """The learning-rate multiplier at ``step`` (0-based): the linear warm-up, then a constant
    rate, then (``decay_start`` > 0) a half cosine from 1 to ``DECAY_FLOOR`` at the last step.
    """
    factor = min(1.0, (step + 1) / config.warmup) if config.warmup > 0 else 1.0
    if 0 < config.decay_start <= step:
        progress = min(1.0, (step - config.decay_start) / max(1, config.iters - 1 - config.decay_start))
        factor *= DECAY_FLOOR + (1 - DECAY_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _lr_lambda(config: PretrainConfig):
    return lambda step: lr_factor(config, step)


def _rng_state() -> dict:
    # numpy's stub types get_state() (legacy=True, the default: a tuple) as returning a dict
    np_state = np.random.get_state()[1].tolist()  # type: ignore[index]
    state = {"torch": torch.get_rng_state(), "numpy": np_state, "python": random.getstate()[1]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _make_data(config: PretrainConfig, info: distributed.DistInfo, start_step: int, device: torch.device):
    from gvsl_app.data.datasets import PairDataset, validation_pair

    dataset = PairDataset(
        config.data, config.size, seed=config.seed, n_synthetic=config.n_synthetic, relative_pose=config.relative_pose
    )
    loader = step_loader(
        dataset,
        start=start_step * config.batch,
        count=(config.iters - start_step) * config.batch,
        batch=config.batch,
        workers=config.workers,
        rank=info.rank,
        world=info.world,
        pin_memory=device.type == "cuda",
    )
    return dataset, loader, validation_pair(dataset)


def pretrain(config: PretrainConfig, stop: StopFlag | None = None) -> Iterator[Progress]:
    """Run (or resume) a pre-training run, yielding a ``Progress`` per logged step.

    Writes the run folder on rank 0: ``config.yaml``, ``metrics.jsonl``, ``last.pt`` every
    ``ckpt_every`` steps and when stopped, ``best.pt`` when the NCC (or MSE for the
    restoration variant) on a fixed validation pair improves, and ``report.json``. A
    non-finite loss stops the run with ``phase="error"`` without overwriting checkpoints.
    """
    stop = StopFlag() if stop is None else stop  # an unset flag is falsy: never `stop or ...`
    changed: dict = {}
    if config.resume:
        # The run's saved configuration, before the device it names is set up (every rank
        # reads it; config.yaml is replaced atomically, so a reader never sees half of it).
        config, changed = RunFolder(config.run).resumed_config(config)
    refuse_run_among_data(config.run, config.data)  # before the lock file is written there
    info, device = distributed.setup(config.device)
    try:
        with contextlib.ExitStack() as held:
            with distributed.together(info, device):
                if info.is_main:  # only rank 0 writes the run folder, so only rank 0 holds it
                    held.enter_context(RunFolder(config.run).lock())
            yield from _pretrain(config, stop, info, device, changed)
    finally:
        distributed.teardown()


class _Session:
    """The state one pre-training run carries from step to step, and what it does with it."""

    def __init__(self, config: PretrainConfig, info: distributed.DistInfo, device: torch.device):
        self.config, self.info, self.device = config, info, device
        self.run = RunFolder(config.run)
        torch.manual_seed(config.seed + info.rank)
        self.model = build_model(config).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(config))
        self.start, self.best = 0, math.inf
        if config.init != "scratch" and not config.resume:
            self.load_init(config.init)

    def load_init(self, path: str) -> None:
        """Start from a GVSL checkpoint's model weights (ours, exported or a run's); the
        architecture must be the one configured, so a mismatch is refused by name.
        """
        from models.checkpoint import model_state, read_checkpoint

        state, _ = model_state(read_checkpoint(path))
        load_state_into(self.model, state, source=path)

    def restore(self) -> None:
        """Continue from ``last.pt`` (model, optimiser, scheduler, RNG, iteration, best)."""
        self.run.require_resumable()
        ck = self.run.load_checkpoint("last")
        load_state_into(self.model, ck["model"], source=self.run.last)
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        self.start, self.best = int(ck["iteration"]), float(ck.get("best", math.inf))

    def prepare_folder(self) -> None:
        """Archive or refuse an earlier run (fresh starts), then write the configuration."""
        if not self.info.is_main:
            return
        if not self.config.resume:
            self.run.start_fresh(self.config.overwrite)
        self.run.create()
        self.run.write_config(self.config)
        if self.start:
            self.run.truncate_metrics(self.start)

    def objective(self) -> nn.Module:
        """The loss module, wrapped for DDP and ``torch.compile`` as configured."""
        objective: nn.Module = PretrainObjective(self.model, self.config)
        if self.info.enabled:
            objective = nn.parallel.DistributedDataParallel(
                objective,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.config.variant != "gvsl",
            )
        if self.config.compile:
            # torch.compile of a Module returns an OptimizedModule (a Module); its stub says Callable
            objective = torch.compile(objective)  # type: ignore[assignment]
        return objective

    def state(self, iteration: int) -> dict:
        return {
            "kind": "pretrain",
            "config": as_dict(self.config),
            "model_config": self.model.config(),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": _rng_state(),
            "iteration": iteration,
            "best": self.best,
        }

    def non_finite_error(self, step: int, values: dict[str, float]) -> Progress | None:
        """An error report when any rank's loss is not finite (all ranks agree), else None.

        Every rank checks on the same steps and they agree: a rank that stopped alone would
        leave the others waiting forever in the next all-reduce.
        """
        finite_here = all(math.isfinite(v) for v in values.values())
        if not distributed.broadcast_flag(not finite_here, self.info, self.device):
            return None
        where = "" if not finite_here else f" on another rank (here: {values})"
        msg = non_finite_message(step, values, self.run.last, where)
        if self.info.is_main:
            self.run.log({"iteration": step, "event": "error", "message": msg})
        return Progress(step, self.config.iters, phase="error", losses=values, message=msg)

    def step_report(self, step: int, values: dict[str, float], sps: float, wait: float) -> Progress:
        """Log one step's losses and speed (rank 0) and report them."""
        config = self.config
        record = {
            "iteration": step,
            **values,
            # the rate this step used (the scheduler has already moved on to the next one's)
            "lr": config.lr * lr_factor(config, step - 1),
            "sec_per_step": sps,
            "samples_per_s": config.batch * self.info.world / sps,
            "data_wait_s": wait,
        }
        if self.info.is_main:
            self.run.log(record)
        return Progress(
            step,
            config.iters,
            losses=dict(values),
            lr=record["lr"],
            sec_per_step=sps,
            samples_per_s=record["samples_per_s"],
            data_wait_s=wait,
            eta_s=sps * (config.iters - step),
        )

    def validate(self, step: int, val_pair: tuple[torch.Tensor, torch.Tensor]) -> Progress:
        """Score the validation pair; rank 0 logs it and keeps ``best.pt``."""
        val = validate(self.model, self.config, val_pair)
        if self.info.is_main:
            self.run.log({"iteration": step, "event": "validate", **{f"val_{k}": v for k, v in val.items()}})
            key = "mse" if self.config.variant == "restoration" else "ncc"
            if val[key] < self.best:
                self.best = val[key]
                self.run.save_checkpoint("best", self.state(step))
        return Progress(step, self.config.iters, phase="validate", metrics=val)

    def save(self, step: int, stop_now: bool) -> None:
        """Snapshots and ``last.pt`` on the steps the configuration asks for (rank 0)."""
        config = self.config
        if not self.info.is_main:
            return
        if config.snapshot_every > 0 and step % config.snapshot_every == 0:
            snapshot = {"kind": "pretrain", "config": as_dict(config), "iteration": step}
            self.run.save_snapshot(
                step, {**snapshot, "model_config": self.model.config(), "model": self.model.state_dict()}
            )
        if step % config.ckpt_every == 0 or step == config.iters or stop_now:
            self.run.save_checkpoint("last", self.state(step))

    def next_batch(self, it: Iterator[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, ...] | None:
        """The next ``(moving, fixed, moving_input)`` on this rank's device; ``None`` when the loader is done."""
        try:
            batch = next(it)
        except StopIteration:
            return None
        return tuple(batch[k].to(self.device, non_blocking=True) for k in ("moving", "fixed", "moving_input"))

    def backward(
        self, objective: nn.Module, batch: tuple[torch.Tensor, ...], amp_device: torch.device | None, deformable: bool
    ) -> dict[str, torch.Tensor]:
        """One batch's loss terms, back-propagated (the optimiser not stepped yet)."""
        objective.train()
        moving, fixed, moving_input = batch
        terms = objective(moving, fixed, moving_input, amp_device=amp_device, deformable=deformable)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        return terms

    def finish(self, step: int, status: str, wall: float) -> Progress:
        """Write ``report.json`` (rank 0) and the final report."""
        checksums = _rank_checksums(self.model, self.info, self.device)
        run, config = self.run, self.config
        if self.info.is_main:
            report = {
                "kind": "pretrain",
                "status": status,
                "iteration": step,
                "iters": config.iters,
                "variant": config.variant,
                "best_val": self.best,
                "wall_s": wall,
                "device": str(self.device),
                "world_size": self.info.world,
                # sum of |parameters| per rank: equal when DDP kept the replicas identical
                "replica_checksums": checksums,
                "replicas_in_sync": max(checksums) - min(checksums) <= 1e-9 * max(abs(c) for c in checksums),
                "last": str(run.last),
                "best": str(run.best) if run.best.is_file() else None,
            }
            run.write_report(report)
        message = f"{status} at iteration {step}; checkpoint {run.last}"
        return Progress(step, config.iters, phase=status, message=message)


def _pretrain(
    config: PretrainConfig, stop: StopFlag, info: distributed.DistInfo, device: torch.device, changed: dict
) -> Iterator[Progress]:
    check_training_fits(config.batch, config.size, config.width, device)
    session = _Session(config, info, device)
    if info.is_main:
        session.run.remove_stale_temporaries()
    if config.resume:
        session.restore()
    start = session.start
    if start >= config.iters:
        yield Progress(start, config.iters, phase="done", message="run already complete")
        return
    # The data is read (and refused, if bad) before the run folder is touched.
    dataset, loader, val_pair = _make_data(config, info, start, device)
    with distributed.together(info, device):
        session.prepare_folder()  # rank 0 alone: it may refuse a folder that holds a run
    objective = session.objective()
    amp_device = device if (config.amp and device.type == "cuda") else None
    val_pair = (val_pair[0].to(device), val_pair[1].to(device))
    opening = f"training on {device} ({len(dataset)} subjects){_resume_note(config, changed, start)}"
    yield Progress(start, config.iters, phase="train", message=opening)
    step, t_last, wait_acc, n_acc = start, time.perf_counter(), 0.0, 0
    t_start = time.perf_counter()
    it = iter(loader)
    try:
        status = "done"
        while step < config.iters:
            t0 = time.perf_counter()
            batch = session.next_batch(it)
            if batch is None:
                break
            wait_acc += time.perf_counter() - t0
            terms = session.backward(objective, batch, amp_device, deformable=step >= config.affine_warmup)
            step += 1
            n_acc += 1
            log_now = step % config.log_every == 0 or step == config.iters
            snapshot_now = config.snapshot_every > 0 and step % config.snapshot_every == 0
            # every step that writes weights checks the loss first (a NaN from an unchecked step
            # has reached the weights by then, and must not reach a file)
            if log_now or step % config.ckpt_every == 0 or snapshot_now:
                values = {k: float(v.detach()) for k, v in terms.items()}  # the only host sync
                error = session.non_finite_error(step, values)
                if error is not None:
                    yield error
                    return
            session.opt.step()
            session.sched.step()
            if log_now:
                yield session.step_report(step, values, (time.perf_counter() - t_last) / n_acc, wait_acc / n_acc)
                t_last, wait_acc, n_acc = time.perf_counter(), 0.0, 0
            if step % config.val_every == 0 or step == config.iters:
                yield session.validate(step, val_pair)
            stop_now = distributed.broadcast_flag(stop.is_set(), info, device)
            session.save(step, stop_now)
            if stop_now:
                status = "stopped"
                break
    finally:
        close_loader(it)
    yield session.finish(step, status, time.perf_counter() - t_start)


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


VAL_CORRUPTION_SEED = 20230601
"""Seed of the one appearance corruption the validation restores (the same at every validation)."""


def _resume_note(config: PretrainConfig, changed: dict, start: int) -> str:
    """What the opening line adds for a resumed run: where, what changed, how the decay moved."""
    note = f"; resumed at iteration {start}" if config.resume else ""
    if changed:
        note += " with " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
    if "iters" in changed and 0 < config.decay_start < config.iters:
        # the half cosine ends at the last iteration: a new length moves the rest of the decay
        before = dataclasses.replace(config, iters=int(changed["iters"][0]))
        note += (
            f"; the learning rate now decays from iteration {config.decay_start} to {config.iters} "
            f"(at {start}: x{lr_factor(config, start):.3f}, was x{lr_factor(before, start):.3f})"
        )
    return note


@torch.no_grad()
def validate(model: GVSL, config: PretrainConfig, pair: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """NCC and smoothness of the matching and the restoration MSE on a fixed pair (eval mode).

    The pair is un-augmented; the restoration is scored as it is trained, from the moving scan
    corrupted by the appearance transform (one fixed draw, :data:`VAL_CORRUPTION_SEED`) back to
    the clean scan. (Until 2026-12-01 it restored the clean scan itself, which only measured
    how well the network passes a scan through.)
    """
    from gvsl_app.data.appearance import AppearanceTransform

    moving, fixed = pair
    was = model.training
    model.eval()
    out = model(moving, fixed, restore=False)
    corrupted = AppearanceTransform()(moving.detach().cpu(), generator=VAL_CORRUPTION_SEED).to(moving.device)
    _, local = model.features(corrupted)
    res = {
        "ncc": float(local_ncc(out.warped, fixed)),
        "smooth": float(smoothness(out.displacement)),
        "mse": float(restoration_mse(model.restoration_head(local), moving)),
        "ncc_before": float(local_ncc(moving, fixed)),
    }
    model.train(was)
    return res
