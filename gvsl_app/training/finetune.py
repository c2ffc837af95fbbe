"""Downstream fine-tuning and linear evaluation (segmentation and classification)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from gvsl_app.data.loading import close_loader, step_loader
from gvsl_app.memory import FINETUNE_BYTES_PER_SAMPLE_VOXEL_WIDTH, check_training_fits
from gvsl_app.services.metrics import auc, dice_per_label, mean_dice, mean_dice_over_cases
from gvsl_app.training.config import FinetuneConfig, as_dict, given_options
from gvsl_app.training.progress import Progress, StopFlag
from gvsl_app.training.runs import RunFolder, non_finite_message, refuse_run_among_data
from gvsl_app.training.spacing import training_spacing
from models import widths_from_base
from models.checkpoint import CheckpointError, load_state_into, model_state, read_checkpoint
from models.device import autocast, resolve_device
from models.downstream import ClassificationNet, SegmentationNet

if TYPE_CHECKING:
    from gvsl_app.io.volume import Volume


def init_backbone(model: nn.Module, init: str) -> str:
    """Load the backbone (``unet.*``) of a checkpoint into a downstream model.

    Accepts our pre-training or downstream checkpoints and the authors' released GVSL
    checkpoint. Returns a one-line description; raises ``CheckpointError`` with the
    expected widths when the checkpoint belongs to another width.
    """
    if init in ("", "scratch", None):
        return "random initialisation (scratch)"
    sd, fmt = model_state(read_checkpoint(init))
    if not any(k.startswith("unet.") for k in sd):
        raise CheckpointError(f"{init}: no backbone (unet.*) parameters in this checkpoint")
    report = load_state_into(model, sd, strict=True, source_format=fmt, prefix_filter="unet.", source=init)
    return f"backbone from {init} ({fmt}, {len(report.loaded)} tensors)"


def checkpoint_widths(init: str) -> tuple[int, ...] | None:
    """Widths recorded in (or implied by) a checkpoint, so ``--width`` need not be repeated."""
    return checkpoint_architecture(init)[0]


def checkpoint_architecture(init: str) -> tuple[tuple[int, ...] | None, str]:
    """The widths and GroupNorm grouping (``models.blocks.NORMS``) of the backbone in ``init``:
    the authors' release was trained with its own grouping, which its backbone keeps.
    """
    if init in ("", "scratch", None):
        return None, "default"
    ck = read_checkpoint(init)
    cfg = ck.get("model_config") or {}
    sd, fmt = model_state(ck)
    norm = "authors" if fmt == "official GVSL" else cfg.get("norm", "default")
    if "widths" in cfg:
        return tuple(cfg["widths"]), norm
    w = sd.get("unet.inc.double_conv.0.weight")
    return (widths_from_base(int(w.shape[0])) if w is not None else None), norm


def build_downstream(config: FinetuneConfig, n_out: int) -> tuple[SegmentationNet | ClassificationNet, str]:
    """The downstream network for the task, with its starting backbone, and a line saying which."""
    found, norm = checkpoint_architecture(config.init)
    if found and "width" in given_options(config) and found[0] != config.width:
        raise ValueError(
            f"--width {config.width} asks for base width {config.width}, but the --init checkpoint {config.init} "
            f"has base width {found[0]} (widths {list(found)}); leave --width out to train at the checkpoint's "
            "width, or start from scratch"
        )
    if found:
        config.width = found[0]  # recorded as trained: config.yaml and the checkpoints say the truth
    widths = found or widths_from_base(config.width)
    model = (
        SegmentationNet(n_out, widths, norm=norm) if config.task == "seg" else ClassificationNet(1, widths, norm=norm)
    )
    msg = init_backbone(model, config.init)
    if config.linear:
        model.freeze_backbone()
    return model, msg


def finetune(config: FinetuneConfig, stop: StopFlag | None = None) -> Iterator[Progress]:
    """Train a downstream head (and backbone unless ``linear``), yielding progress.

    Keeps ``best.pt`` on the validation split (mean Dice or AUC), evaluates it on the test
    split at the end and writes ``report.json``. Holds the run folder's lock meanwhile.
    """
    refuse_run_among_data(config.run, config.data)  # before the lock file is written there
    with RunFolder(config.run).lock():
        yield from _finetune(config, stop)


def _finetune(config: FinetuneConfig, stop: StopFlag | None = None) -> Iterator[Progress]:
    """The body of :func:`finetune`, run while the run folder is locked."""
    stop = StopFlag() if stop is None else stop  # an unset flag is falsy: never `stop or ...`
    changed: dict = {}
    if config.resume:
        # The saved configuration trains on; other data, splits or lr would be refused here.
        config, changed = RunFolder(config.run).resumed_config(config)
    # Everything is read and checked (every split's labels, the checkpoint to start from)
    # before the run folder is touched, so a typo never costs an earlier run its history.
    session = _Session(config)
    session.prepare_folder()
    if config.resume:
        session.restore()
    loader = session.loader()
    yield session.start_report(changed)
    step, t_last, n_acc, t0 = session.start, time.perf_counter(), 0, time.perf_counter()
    status = "done"
    it = iter(loader)
    try:
        for batch in it:
            value = session.backward(batch)
            if not math.isfinite(value):
                msg = non_finite_message(step, {"loss": value}, session.run.last)
                yield Progress(step, config.iters, phase="error", message=msg)
                return
            session.opt.step()
            step += 1
            n_acc += 1
            if step % config.log_every == 0 or step == config.iters:
                yield session.step_report(step, value, (time.perf_counter() - t_last) / n_acc)
                t_last, n_acc = time.perf_counter(), 0
            if step % config.val_every == 0 or step == config.iters:
                yield session.validate(step)
            if stop.is_set() or step % 50 == 0 or step == config.iters:
                session.run.save_checkpoint("last", session.state(step))
            if stop.is_set():
                status = "stopped"
                break
    finally:
        close_loader(it)
    yield session.finish(step, status, time.perf_counter() - t0)


class _Session:
    """The state one fine-tuning run carries from step to step, and what it does with it.

    Built from the configuration alone: the splits, their data (every label checked) and
    the model with its starting backbone are read before the run folder is touched.
    """

    def __init__(self, config: FinetuneConfig):
        self.config = config
        self.run = RunFolder(config.run)
        self.device = resolve_device(config.device)
        check_training_fits(config.batch, config.size, config.width, self.device, FINETUNE_BYTES_PER_SAMPLE_VOXEL_WIDTH)
        torch.manual_seed(config.seed)
        self.train, self.val, self.test = _splits(config)
        self.dataset, self.n_out, self.val_data, self.test_data = _split_data(config, self.train, self.val, self.test)
        # The voxel sizes the network learns at: `gvsl segment` resamples inputs unlike them.
        self.spacing = training_spacing(config.data, self.train) if config.task == "seg" else {}
        self.model, self.init_msg = build_downstream(config, self.n_out)
        self.model.to(self.device)
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=config.lr)
        self.loss_fn = _loss_function(config.task)
        self.amp = config.amp and self.device.type == "cuda"
        self.key = "mean_dice" if config.task == "seg" else "auc"  # what picks best.pt
        self.start, self.best = 0, -math.inf
        self.frozen: dict[str, torch.Tensor] | None = None

    def prepare_folder(self) -> None:
        """Archive or refuse an earlier run (fresh starts), then write the configuration."""
        if not self.config.resume:
            self.run.start_fresh(self.config.overwrite)
        self.run.create().remove_stale_temporaries()
        self.run.write_config(self.config)

    def restore(self) -> None:
        """Continue from ``last.pt`` (model, optimiser, RNG, iteration, best validation score)."""
        ck = self.run.load_checkpoint("last")
        load_state_into(self.model, ck["model"], source=self.run.last)
        self.opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
        self.start, self.best = int(ck["iteration"]), float(ck["best"])
        self.run.truncate_metrics(self.start)

    def loader(self) -> Iterable[dict[str, torch.Tensor]]:
        """The training batches from the current iteration on (the backbone noted for a linear probe)."""
        config = self.config
        if config.linear:
            self.frozen = {k: v.detach().clone() for k, v in self.model.unet.state_dict().items()}
        return step_loader(
            self.dataset,
            start=self.start * config.batch,
            count=(config.iters - self.start) * config.batch,
            batch=config.batch,
            workers=config.workers,
            prefetch_factor=2,  # DataLoader's default, as fine-tuning always had
        )

    def start_report(self, changed: dict) -> Progress:
        """The opening line: task, device, split sizes, starting weights, what a resume changed."""
        config = self.config
        return Progress(
            self.start,
            config.iters,
            message=f"{config.task} {'linear' if config.linear else 'fine-tuning'} on "
            f"{self.device}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test; {self.init_msg}"
            + (f"; resumed at iteration {self.start}" if config.resume else "")
            + "".join(f", {k} {a} -> {b}" for k, (a, b) in changed.items()),
        )

    def state(self, iteration: int) -> dict:
        """The checkpoint of this run at ``iteration``."""
        config = self.config
        return {
            "kind": "segmentation" if config.task == "seg" else "classification",
            "config": as_dict(config),
            "model_config": self.model.config(),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "rng": torch.get_rng_state(),
            "iteration": iteration,
            "best": self.best,
            "preprocess": {"size": config.size, **self.spacing},
        }

    def backward(self, batch: dict[str, torch.Tensor]) -> float:
        """One batch's loss, back-propagated (the optimiser not stepped yet); its value."""
        x = batch["image"].to(self.device)
        y = batch["label"].to(self.device)
        self.model.train()
        with autocast(self.device, enabled=self.amp):
            out = self.model(x)
        out = out.float()
        if self.config.task == "seg":
            loss = self.loss_fn(out, y.unsqueeze(1).long())
        else:
            loss = self.loss_fn(out[:, 0], y.float())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        return float(loss.detach())

    def step_report(self, step: int, value: float, sps: float) -> Progress:
        """Log one step's loss and speed and report them."""
        config = self.config
        lr = float(self.opt.param_groups[0]["lr"])  # the optimiser's own (restored on resume)
        self.run.log(
            {"iteration": step, "loss": value, "lr": lr, "sec_per_step": sps, "samples_per_s": config.batch / sps}
        )
        return Progress(
            step,
            config.iters,
            losses={"loss": value},
            lr=lr,
            sec_per_step=sps,
            samples_per_s=config.batch / sps,
            eta_s=sps * (config.iters - step),
        )

    def evaluate(self, data) -> dict[str, float]:
        return _evaluate(self.model, data, self.config, self.n_out, self.device)

    def validate(self, step: int) -> Progress:
        """Score the validation split, log it and keep ``best.pt``."""
        metrics = self.evaluate(self.val_data)
        self.run.log({"iteration": step, "event": "validate", **{f"val_{k}": v for k, v in metrics.items()}})
        if metrics[self.key] > self.best or not math.isfinite(self.best):
            self.best = metrics[self.key] if math.isfinite(metrics[self.key]) else self.best
            self.run.save_checkpoint("best", self.state(step))
        return Progress(step, self.config.iters, phase="validate", metrics=metrics)

    def finish(self, step: int, status: str, wall_s: float) -> Progress:
        """Check a linear probe's backbone, score ``best.pt`` on the test split, write ``report.json``."""
        config = self.config
        _check_frozen(self.model, self.frozen)
        report: dict[str, Any] = {
            "kind": config.task,
            "status": status,
            "iteration": step,
            "linear": config.linear,
            "init": config.init,
            "best_val": self.best,
            "wall_s": wall_s,
            "splits": {"train": self.train, "val": self.val, "test": self.test},
        }
        if self.test and self.run.best.is_file():
            load_state_into(self.model, self.run.load_checkpoint("best")["model"], source=self.run.best)
            report["test"] = self.evaluate(self.test_data)
        self.run.write_report(report)
        return Progress(
            step,
            config.iters,
            phase=status,
            metrics=report.get("test", {}),
            message=f"{status} at iteration {step}; best validation {self.key} {self.best:.4f}; "
            f"test {report.get('test', {}).get(self.key, float('nan')):.4f}",
        )


def _check_frozen(model: SegmentationNet | ClassificationNet, frozen: dict[str, torch.Tensor] | None) -> None:
    """A linear probe must leave the backbone bit-identical; raise if it did not."""
    if frozen is None:
        return
    changed = [k for k, v in model.unet.state_dict().items() if not torch.equal(v, frozen[k])]
    if changed:
        raise RuntimeError(f"linear evaluation changed backbone parameters: {changed[:3]}")


def _splits(config: FinetuneConfig) -> tuple[list[str], list[str], list[str]]:
    """Train/validation/test case names (every case's files checked), ``n_train`` applied."""
    from gvsl_app.data import datasets as ds

    names = ds.list_cases(config.data, need_labels=config.task == "seg")
    train, val, test = ds.split_names(names, config.val_fraction, config.test_fraction, config.seed)
    if config.n_train:
        train = train[: config.n_train]
    if not train or not val:
        raise ValueError(f"{config.data}: {len(names)} cases are too few for train/validation/test splits")
    return train, val, test


def _split_data(config: FinetuneConfig, train: list[str], val: list[str], test: list[str]):
    """(training dataset, output channels, validation data, test data or None) for the task."""
    from gvsl_app.data import datasets as ds

    dataset: ds.LabelledDataset | ds.ClassificationDataset
    val_data: list[tuple[np.ndarray, np.ndarray, Volume]] | ds.ClassificationDataset
    if config.task == "seg":
        dataset = ds.LabelledDataset(config.data, train, patch=config.size, seed=config.seed)
        n_out = dataset.n_classes
        val_data = ds.load_labelled_volumes(config.data, val)
    else:
        dataset = ds.ClassificationDataset(config.data, config.size, names=train)
        n_out = 1
        val_data = ds.ClassificationDataset(config.data, config.size, names=val)
    test_data = None
    if test:
        test_data = (
            ds.load_labelled_volumes(config.data, test)
            if config.task == "seg"
            else ds.ClassificationDataset(config.data, config.size, names=test)
        )
    return dataset, n_out, val_data, test_data


def _loss_function(task: str) -> nn.Module:
    """Dice + cross-entropy (MONAI) for segmentation, binary cross-entropy for classification."""
    if task == "seg":
        from monai.losses import DiceCELoss

        return DiceCELoss(to_onehot_y=True, softmax=True)
    return nn.BCEWithLogitsLoss()


def _evaluate(model: nn.Module, data, config: FinetuneConfig, n_out: int, device: torch.device) -> dict[str, float]:
    """Mean and per-label Dice of whole volumes (segmentation) or the AUC (classification)."""
    if config.task == "seg":
        dices = [
            dice_per_label(pred, lab, list(range(1, n_out)))
            for pred, lab in ((_segment(model, img, config.size, device), lab) for img, lab, _ in data)
        ]
        per = mean_dice_over_cases(dices, range(1, n_out))  # a case lacking a structure in both maps: left out
        return {"mean_dice": mean_dice(per), **{f"dice_{l}": v for l, v in per.items()}}
    scores, ys = _classify(model, data, device)
    return {"auc": auc(ys, scores)}


def _segment(model: nn.Module, image: np.ndarray, roi: int, device: torch.device) -> np.ndarray:
    from gvsl_app.services.inference import segment_array

    return segment_array(model, image, roi, device)


@torch.no_grad()
def _classify(model: nn.Module, data, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    scores, ys = [], []
    for i in range(len(data)):
        item = data[i]
        scores.append(float(torch.sigmoid(model(item["image"][None].to(device))).flatten()[0]))
        ys.append(int(item["label"]))
    return np.asarray(scores), np.asarray(ys)


def evaluate_run(run_path: str | Path, data: str, device: str = "auto") -> dict:
    """Evaluate a run's best checkpoint on every case of ``data``; updates ``report.json``."""
    from gvsl_app.data import datasets as ds

    run = RunFolder(run_path)
    saved = run.read_config()
    if "variant" in saved:
        raise ValueError(
            f"{run.path} is a pre-training run; `gvsl evaluate` scores fine-tuning runs. Fine-tune "
            f"from it first: gvsl finetune --init {run.last} --data DIR --run NEW_RUN"
        )
    cfg = FinetuneConfig(**{**saved, "resume": False})
    which = "best" if run.best.is_file() else "last"
    ck = run.load_checkpoint(which)
    mc = ck["model_config"]
    dev = resolve_device(device)
    model: SegmentationNet | ClassificationNet
    if cfg.task == "seg":
        model = SegmentationNet(mc["n_classes"], mc["widths"], norm=mc.get("norm", "default"))
    else:
        model = ClassificationNet(mc["n_outputs"], mc["widths"], norm=mc.get("norm", "default"))
    load_state_into(model, ck["model"], source=run.best if which == "best" else run.last)
    model.to(dev)
    names = ds.list_cases(data, need_labels=cfg.task == "seg")
    if cfg.task == "seg":
        per_case = {}
        for name, (img, lab, _) in zip(names, ds.load_labelled_volumes(data, names)):
            per_case[name] = dice_per_label(_segment(model, img, cfg.size, dev), lab, list(range(1, mc["n_classes"])))
        labels = list(range(1, mc["n_classes"]))
        per = mean_dice_over_cases(per_case.values(), labels)
        result = {
            "data": str(data),
            "n": len(names),
            "dice": per,
            "mean_dice": mean_dice(per),
            "per_case": {n: {str(k): v for k, v in d.items()} for n, d in per_case.items()},
        }
    else:
        scores, ys = _classify(model, ds.ClassificationDataset(data, cfg.size, names=names), dev)
        result = {"data": str(data), "n": len(names), "auc": auc(ys, scores)}
    report = run.read_report() or {}
    report["evaluation"] = result
    run.write_report(report)
    return result
