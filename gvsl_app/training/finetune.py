"""Downstream fine-tuning and linear evaluation (segmentation and classification)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from gvsl_app.data.loading import close_loader, step_loader
from gvsl_app.services.metrics import auc, dice_per_label, mean_dice, mean_dice_over_cases
from gvsl_app.training.config import FinetuneConfig, as_dict
from gvsl_app.training.progress import Progress, StopFlag
from gvsl_app.training.runs import RunFolder
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
    the authors' release was trained with its own grouping, which its backbone keeps."""
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
    found, norm = checkpoint_architecture(config.init)
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
    with RunFolder(config.run).lock():
        yield from _finetune(config, stop)


def _finetune(config: FinetuneConfig, stop: StopFlag | None = None) -> Iterator[Progress]:
    """The body of :func:`finetune`, run while the run folder is locked."""

    stop = StopFlag() if stop is None else stop  # an unset flag is falsy: never `stop or ...`
    run = RunFolder(config.run)
    changed: dict = {}
    if config.resume:
        # The saved configuration trains on; other data, splits or lr would be refused here.
        config, changed = run.resumed_config(config)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    # Everything is read and checked (every split's labels, the checkpoint to start from)
    # before the run folder is touched, so a typo never costs an earlier run its history.
    train, val, test = _splits(config)
    dataset, n_out, val_data, test_data = _split_data(config, train, val, test)
    # The voxel sizes the network learns at: `gvsl segment` resamples inputs unlike them.
    spacing = training_spacing(config.data, train) if config.task == "seg" else {}
    model, init_msg = build_downstream(config, n_out)
    model.to(device)
    if not config.resume:
        run.start_fresh(config.overwrite)
    run.create().remove_stale_temporaries()
    run.write_config(config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr)
    start, best = 0, -math.inf
    if config.resume:
        ck = run.load_checkpoint("last")
        load_state_into(model, ck["model"], source=run.last)
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
        start, best = int(ck["iteration"]), float(ck["best"])
        run.truncate_metrics(start)
    loss_fn = _loss_function(config.task)
    amp = config.amp and device.type == "cuda"

    def state(it: int) -> dict:
        return {
            "kind": "segmentation" if config.task == "seg" else "classification",
            "config": as_dict(config),
            "model_config": model.config(),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": torch.get_rng_state(),
            "iteration": it,
            "best": best,
            "preprocess": {"size": config.size, **spacing},
        }

    def evaluate(data) -> dict[str, float]:
        return _evaluate(model, data, config, n_out, device)

    key = "mean_dice" if config.task == "seg" else "auc"
    frozen = {k: v.detach().clone() for k, v in model.unet.state_dict().items()} if config.linear else None
    loader = step_loader(
        dataset,
        start=start * config.batch,
        count=(config.iters - start) * config.batch,
        batch=config.batch,
        workers=config.workers,
        prefetch_factor=2,  # DataLoader's default, as fine-tuning always had
    )
    yield Progress(
        start,
        config.iters,
        message=f"{config.task} {'linear' if config.linear else 'fine-tuning'} on "
        f"{device}: {len(train)} train / {len(val)} val / {len(test)} test; {init_msg}"
        + (f"; resumed at iteration {start}" if config.resume else "")
        + "".join(f", {k} {a} -> {b}" for k, (a, b) in changed.items()),
    )
    step, t_last, n_acc, t0 = start, time.perf_counter(), 0, time.perf_counter()
    status = "done"
    it = iter(loader)
    try:
        for batch in it:
            x = batch["image"].to(device)
            y = batch["label"].to(device)
            model.train()
            with autocast(device, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y.unsqueeze(1).long()) if config.task == "seg" else loss_fn(out[:, 0], y.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            value = float(loss.detach())
            if not math.isfinite(value):
                yield Progress(
                    step,
                    config.iters,
                    phase="error",
                    message=f"non-finite loss at iteration {step}; stopped, keeping {run.last}",
                )
                return
            opt.step()
            step += 1
            n_acc += 1
            if step % config.log_every == 0 or step == config.iters:
                sps = (time.perf_counter() - t_last) / n_acc
                lr = float(opt.param_groups[0]["lr"])  # the optimiser's own (restored on resume)
                run.log(
                    {
                        "iteration": step,
                        "loss": value,
                        "lr": lr,
                        "sec_per_step": sps,
                        "samples_per_s": config.batch / sps,
                    }
                )
                yield Progress(
                    step,
                    config.iters,
                    losses={"loss": value},
                    lr=lr,
                    sec_per_step=sps,
                    samples_per_s=config.batch / sps,
                    eta_s=sps * (config.iters - step),
                )
                t_last, n_acc = time.perf_counter(), 0
            if step % config.val_every == 0 or step == config.iters:
                metrics = evaluate(val_data)
                run.log({"iteration": step, "event": "validate", **{f"val_{k}": v for k, v in metrics.items()}})
                if metrics[key] > best or not math.isfinite(best):
                    best = metrics[key] if math.isfinite(metrics[key]) else best
                    run.save_checkpoint("best", state(step))
                yield Progress(step, config.iters, phase="validate", metrics=metrics)
            if stop.is_set() or step % 50 == 0 or step == config.iters:
                run.save_checkpoint("last", state(step))
            if stop.is_set():
                status = "stopped"
                break
    finally:
        close_loader(it)
    _check_frozen(model, frozen)
    report: dict[str, Any] = {
        "kind": config.task,
        "status": status,
        "iteration": step,
        "linear": config.linear,
        "init": config.init,
        "best_val": best,
        "wall_s": time.perf_counter() - t0,
        "splits": {"train": train, "val": val, "test": test},
    }
    if test and run.best.is_file():
        load_state_into(model, run.load_checkpoint("best")["model"], source=run.best)
        report["test"] = evaluate(test_data)
    run.write_report(report)
    yield Progress(
        step,
        config.iters,
        phase=status,
        metrics=report.get("test", {}),
        message=f"{status} at iteration {step}; best validation {key} {best:.4f}; "
        f"test {report.get('test', {}).get(key, float('nan')):.4f}",
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
