"""Export a run checkpoint as shippable weights: model tensors and configuration only.

Usage: ``python -m gvsl_app.services.export_weights RUN/checkpoints/best.pt OUT.pt [--label-names cardiac|brain]``
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from models.checkpoint import FORMAT, atomic_torch_save, read_checkpoint


def export_weights(src: str | Path, dst: str | Path, label_names: dict[int, str] | None = None) -> Path:
    """Keep ``kind``, ``model_config``, ``model``, the training config and iteration; drop
    optimiser, scheduler and RNG state (a third of the size and nothing a user needs).
    """
    ck = read_checkpoint(src)
    out = {
        "format": FORMAT,
        "kind": ck.get("kind"),
        "model_config": ck["model_config"],
        "model": {k: v.float().contiguous() for k, v in ck["model"].items()},
        "config": ck.get("config", {}),
        "iteration": ck.get("iteration"),
        "preprocess": ck.get("preprocess", {"size": ck.get("config", {}).get("size")}),
    }
    if label_names:
        out["label_names"] = {int(k): v for k, v in label_names.items()}
    path = atomic_torch_save(out, dst)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    print(f"wrote {path} ({Path(path).stat().st_size / 1e6:.2f} MB, sha256 {digest}...)")
    return path


def main() -> None:
    """Command line: ``SRC DST [--label-names cardiac|brain]``."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--label-names", choices=["cardiac", "brain"])
    a = ap.parse_args()
    names: dict[int, str] | None = None
    if a.label_names == "cardiac":
        from gvsl_app.data.synthetic import CARDIAC_LABELS as names
    elif a.label_names == "brain":
        from gvsl_app.data.brain import BRAIN_LABELS as names
    export_weights(a.src, a.dst, names)


if __name__ == "__main__":
    main()
