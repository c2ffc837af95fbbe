"""What the paper-table study runs: its tasks, methods and pre-training variants, the seeds of
the generated data sets, and the budgets (``tiny``, ``small``, ``paper``) that fix every size,
schedule and learning rate, the same for every method.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

TASKS = ("heart_seg", "heart_cls", "brain_seg")
MODES = ("linear", "finetune")
METHODS = ("scratch", "restoration", "matching", "no-affine", "gvsl", "paper-heads")
VARIANTS = ("restoration", "matching", "no-affine", "gvsl", "paper-heads")
# A pre-training variant is the engine's ``variant`` plus the Z-Matching heads; "paper-heads" is
# GVSL with the paper's heads instead of the studio's defaults, so the change of heads is measured.
VARIANT_ENGINE: dict[str, dict[str, str]] = {
    "restoration": {"variant": "restoration"},
    "matching": {"variant": "matching"},
    "no-affine": {"variant": "no-affine"},
    "gvsl": {"variant": "gvsl"},
    "paper-heads": {"variant": "gvsl", "affine_head": "paper", "deformable_head": "paper"},
}
TASK_TITLES = {
    "heart_seg": "Heart structures (Dice)",
    "heart_cls": "Abnormal myocardium (AUC)",
    "brain_seg": "Brain tissues (Dice)",
}
TASK_SHORT = {"heart_seg": "SHC-syn DSC", "heart_cls": "CLS-syn AUC", "brain_seg": "SBM-syn DSC"}
METHOD_TITLES = {
    "scratch": "Scratch",
    "restoration": "w/o Z-Matching (restoration only)",
    "matching": "w/o Fundament (Z-Matching only)",
    "no-affine": "w/o Affine head",
    "gvsl": "GVSL (whole)",
    "paper-heads": "GVSL with the paper's Z-Matching heads",
}

# Seeds of the generated data sets (subject i of a set with seed S uses subject_seed(S, i)).
# Pre-training subjects use the study seed (0, 1, 2, ...), so these never coincide with them;
# ``check_disjoint`` verifies it for the seeds actually used.
DATA_SEEDS = {"heart_seg": 9001, "heart_cls": 9002, "brain_seg": 9003, "embed": 9004}


@dataclass(frozen=True)
class Budget:
    """Everything a budget fixes. The same values apply to every method (no per-method tuning)."""

    name: str
    size: int  # pre-training working cube and generated cardiac/brain volume side
    width: int  # base width of the U-Net (paper 32)
    pre_iters: int  # pre-training iterations per variant
    pre_lr: float
    pre_batch: int
    n_synthetic: int  # pre-training subjects
    ft_iters: int  # iterations per fine-tuning run
    ft_lr: float  # fine-tuning learning rate
    linear_iters: int  # iterations per linear probe: a frozen backbone's head is trained to convergence
    linear_lr: float  # linear-evaluation learning rate (only a head is trained)
    ft_batch: int
    val_every: int
    patch: int  # segmentation training patch / sliding-window side
    cls_size: int  # classification volumes are resized to this cube
    n_heart: int  # subjects of each downstream set (split 50/20/30 train/val/test)
    n_cls: int
    n_brain: int
    n_train: int  # labelled training subjects kept for segmentation (few-label regime)
    n_embed: int  # held-out cardiac subjects for the silhouette
    per_label: int  # voxels per structure for silhouette / t-SNE
    seeds: tuple[int, ...]
    workers: int
    ckpt_every: int = 50
    pre_decay_start: int = 0  # pre-training learning-rate decay from this iteration (0: constant)
    val_fraction: float = 0.2
    test_fraction: float = 0.3
    note: str = ""

    def iters(self, mode: str) -> int:
        """Iterations of one downstream run in ``mode`` ("linear" or "finetune")."""
        return self.linear_iters if mode == "linear" else self.ft_iters

    def validate_every(self, mode: str) -> int:
        """Validation interval of a downstream run: ``val_every``, but at most ~10 validations."""
        iters = self.iters(mode)
        return min(max(self.val_every, iters // 10), iters)


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        "tiny",
        size=16,
        width=4,
        pre_iters=3,
        pre_lr=1e-3,
        pre_batch=1,
        n_synthetic=4,
        ft_iters=2,
        ft_lr=1e-3,
        linear_iters=2,
        linear_lr=1e-2,
        ft_batch=1,
        val_every=2,
        patch=16,
        cls_size=16,
        n_heart=6,
        n_cls=10,
        n_brain=6,
        n_train=2,
        n_embed=1,
        per_label=25,
        seeds=(0,),
        workers=0,
        note="smoke test of the plumbing only: the numbers mean nothing",
    ),
    "small": Budget(
        "small",
        size=32,
        width=8,
        pre_iters=400,
        pre_lr=1e-3,
        pre_batch=1,
        n_synthetic=16,
        ft_iters=150,
        ft_lr=1e-3,
        linear_iters=1000,
        linear_lr=1e-1,
        ft_batch=2,
        val_every=25,
        patch=32,
        cls_size=32,
        n_heart=24,
        n_cls=64,
        n_brain=24,
        n_train=4,
        n_embed=3,
        per_label=300,
        seeds=(0,),
        workers=0,
        note="planned for <= 90 min on the project's 2-core CPU (one seed); "
        "learning rates raised from the paper's 1e-4 because of the 1000x shorter schedule",
    ),
    "paper": Budget(
        "paper",
        size=128,
        width=32,
        pre_iters=200_000,
        pre_lr=1e-4,
        pre_batch=1,
        n_synthetic=302,
        ft_iters=40_000,
        ft_lr=1e-4,
        linear_iters=40_000,
        linear_lr=1e-4,
        ft_batch=2,
        val_every=200,
        patch=96,
        cls_size=128,
        n_heart=40,
        n_cls=200,
        n_brain=40,
        n_train=10,
        n_embed=5,
        per_label=500,
        seeds=(0, 1, 2),
        workers=4,
        ckpt_every=1000,
        note="the paper's widths, cube and schedules (Adam 1e-4, 2e5 pre-training and 4e4 "
        "downstream iterations, validation every 200); for a GPU",
    ),
}


# The small budget's data and downstream runs after 7.5x longer pre-training with the shipped
# weights' recipe: the differences are all there is to read.
BUDGETS["medium"] = replace(
    BUDGETS["small"],
    name="medium",
    pre_iters=3000,
    pre_decay_start=1500,
    seeds=(0, 1, 2),
    note="the small budget's downstream runs after 7.5x longer pre-training with the shipped "
    "weights' recipe (constant rate, then a cosine decay over the second half): the matching "
    "converges (docs/results/matching.md); about 60 min per seed on the project's 2-core CPU",
)


# The medium study at the paper's width on one GPU, three seeds run side by side (``--jobs``):
# sized for about 8 minutes of an H200 with MPS (scripts/gpu_checks.sh). Same data, schedules and rates.
BUDGETS["gpu"] = replace(
    BUDGETS["medium"],
    name="gpu",
    width=32,
    note="the medium budget at the paper's base width 32 (medium: 8) for one GPU, seeds run side by "
    "side in separate processes; everything else as medium",
)


def check_disjoint(budget: Budget, seeds: Iterable[int]) -> None:
    """No downstream/embedding cardiac subject may be a pre-training subject."""
    from gvsl_app.data.synthetic import subject_seed

    pre = {subject_seed(s, i) for s in seeds for i in range(budget.n_synthetic)}
    sizes = {"heart_seg": budget.n_heart, "heart_cls": budget.n_cls, "embed": budget.n_embed}
    for name, n in sizes.items():
        down = {subject_seed(DATA_SEEDS[name], i) for i in range(n)}
        if pre & down:
            raise SystemExit(
                f"the {name} subjects overlap the pre-training subjects (seed {DATA_SEEDS[name]}); "
                f"choose pre-training seeds other than {sorted(DATA_SEEDS.values())}"
            )
