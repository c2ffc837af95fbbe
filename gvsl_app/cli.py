"""The ``gvsl`` command line: the same engine functions the GUI calls."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from .progress import StopFlag


def _add_common_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with options (command-line options override it)")
    p.add_argument("--iters", type=int, help="optimisation steps")
    p.add_argument("--size", type=int, help="working cube side / patch side in voxels")
    p.add_argument("--width", type=int, help="base width (paper: 32; each level doubles it)")
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--resume", action="store_true", default=None, help="continue from RUN/checkpoints/last.pt")


def _install_stop_handlers(stop: StopFlag) -> None:
    def handler(signum, _frame):
        if stop.is_set():  # second Ctrl-C: leave now
            raise KeyboardInterrupt
        stop.set(f"signal {signal.Signals(signum).name}")
        print(f"\n{signal.Signals(signum).name}: stopping at the next step boundary and saving last.pt "
              "(press again to abort)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _drive(progress_iter, quiet: bool = False) -> int:
    """Consume a training generator with a tqdm bar showing ETA and the loss terms."""
    from tqdm import tqdm

    bar = None
    rc = 0
    for p in progress_iter:
        if bar is None:
            bar = tqdm(total=p.total, initial=p.iteration, unit="it", dynamic_ncols=True, disable=quiet,
                       file=sys.stderr)
        if p.phase == "train" and p.losses:
            bar.update(p.iteration - bar.n)
            bar.set_postfix({k: f"{v:.4f}" for k, v in p.losses.items()}, refresh=False)
        elif p.phase == "validate":
            bar.write(f"[{p.iteration}] validation: " + ", ".join(f"{k}={v:.4f}" for k, v in p.metrics.items()))
        elif p.phase in ("done", "stopped"):
            bar.update(p.iteration - bar.n)
            bar.close()
            print(p.message)
        elif p.phase == "error":
            bar.close()
            print(f"error: {p.message}", file=sys.stderr)
            rc = 3
        elif p.message:
            bar.write(p.message)
    return rc


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import PretrainConfig, load_config
    from .pretrain import pretrain

    cfg = load_config(PretrainConfig, args.config, data=args.data, run=args.run, variant=args.variant,
                      iters=args.iters, size=args.size, width=args.width, batch=args.batch, lr=args.lr,
                      device=args.device, seed=args.seed, workers=args.workers, resume=args.resume,
                      compile=args.compile, n_synthetic=args.n_synthetic)
    stop = StopFlag()
    _install_stop_handlers(stop)
    return _drive(pretrain(cfg, stop), quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gvsl", description="GVSL Studio: self-supervised pre-training and "
                                 "Z-Matching of 3D medical volumes.")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="GVSL pre-training (or an ablation variant)")
    p.add_argument("--data", help="folder of volumes (images/ or the folder itself) or synthetic:cardiac")
    p.add_argument("--run", help="run folder to write")
    p.add_argument("--variant", choices=["gvsl", "restoration", "matching", "no-affine"])
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    p.add_argument("--n-synthetic", type=int, help="subjects generated for synthetic:cardiac")
    p.add_argument("--quiet", action="store_true")
    _add_common_training(p)
    p.set_defaults(func=cmd_pretrain)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        if args.verbose:
            raise
        print(f"gvsl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
