"""The training form, built with magicgui from the engine's own settings.

Every field is a :class:`~gvsl_app.jobs.training_job.TrainingSpec` field; the numeric
ones (:data:`~gvsl_app.jobs.training_job.FORM_NUMBERS`) take their values from the engine's
config classes for the chosen task (:func:`~gvsl_app.jobs.training_job.task_defaults`), so
a run started here and the same run from ``gvsl pretrain|finetune`` train alike. Ranges and
labels live in :data:`NUMBER_FIELDS`; the form only shows and collects, the widget acts.
"""

from __future__ import annotations

import time
from pathlib import Path

from magicgui.types import FileDialogMode
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit, SpinBox

from gvsl_app.jobs.training_job import FORM_NUMBERS, TrainingSpec, task_defaults
from gvsl_app.training.config import VARIANTS

TASKS = {"pre-training (GVSL)": "pretrain", "fine-tune: segmentation": "seg", "fine-tune: classification": "cls"}

NUMBER_FIELDS: dict[str, tuple[str, int, int, str]] = {
    "size": ("size", 16, 512, "working cube (pre-training) or patch (fine-tuning) side in voxels"),
    "width": ("width", 1, 64, "base width of the U-Net (paper: 32; each level doubles it)"),
    "iters": ("iterations", 1, 10_000_000, "optimisation steps"),
    "workers": ("loader workers", 0, 32, "DataLoader processes preparing samples off the training loop"),
    "n_synthetic": ("synthetic subjects", 2, 10_000, "subjects the synthetic generator makes"),
}
"""Label, minimum, maximum and tooltip of each numeric field (values: the engine's defaults)."""
assert set(NUMBER_FIELDS) == set(FORM_NUMBERS)


def _blank(path: Path | str | None) -> bool:
    return path is None or str(path).strip() in ("", ".")


class TrainingForm(Container):
    """What to train: task, variant, data, initialisation, sizes, device, run folder."""

    def __init__(self) -> None:
        from models.device import available_devices

        numbers = {
            name: SpinBox(min=lo, max=hi, label=lab, tooltip=tip) for name, (lab, lo, hi, tip) in NUMBER_FIELDS.items()
        }
        default_run = Path.home() / "gvsl-runs" / time.strftime("run-%Y%m%d-%H%M%S")
        folder = FileDialogMode.EXISTING_DIRECTORY
        data = FileEdit(mode=folder, label="data folder", tooltip="folder with images/ (and labels/ to fine-tune)")
        run_dir = FileEdit(mode=folder, value=default_run, label="run folder")
        # Kept in a dict rather than as attributes: a Container's own properties (width...)
        # would shadow fields of the same name.
        self.fields = {
            "task": ComboBox(choices=list(TASKS), label="task"),
            "variant": ComboBox(choices=list(VARIANTS), label="variant"),
            # check boxes carry their text (magicgui shows no form label for buttons; giving
            # both `text` and `label` only prints a warning)
            "synthetic": CheckBox(value=True, text="synthetic cardiac generator"),
            "data": data,
            "init": LineEdit(value="scratch", label="init", tooltip="scratch, or a checkpoint (.pt) to start from"),
            "linear": CheckBox(value=False, text="linear probe (frozen backbone)"),
            "size": numbers["size"],
            "width": numbers["width"],
            "iters": numbers["iters"],
            "device": ComboBox(choices=available_devices(), label="device"),
            "workers": numbers["workers"],
            "n_synthetic": numbers["n_synthetic"],
            "run_dir": run_dir,
        }
        super().__init__(widgets=list(self.fields.values()))
        f = self.fields
        for path_edit in (data, run_dir):
            # magicgui labels the button "Choose directory", wider than the path it serves in a
            # 380 px dock; the dialog keeps that caption, the button says it in its tooltip
            path_edit.choose_btn.text = "…"
            path_edit.choose_btn.tooltip = "Choose directory"
            path_edit.choose_btn.max_width = 32
        f["data"].enabled = False
        f["task"].changed.connect(self._on_task)
        f["synthetic"].changed.connect(self._on_synthetic)
        self._on_task()

    @property
    def task_key(self) -> str:
        return TASKS[self.fields["task"].value]

    def _on_task(self, *_) -> None:
        f = self.fields
        pre = self.task_key == "pretrain"
        for name, value in task_defaults(self.task_key).items():
            f[name].value = value
        f["variant"].enabled = pre
        f["init"].enabled = not pre
        f["linear"].enabled = not pre

    def _on_synthetic(self, on: bool) -> None:
        self.fields["data"].enabled = not on
        self.fields["n_synthetic"].enabled = on

    def spec(self) -> TrainingSpec:
        """The run the form describes."""
        f = self.fields
        folder = "" if _blank(f["data"].value) else str(f["data"].value)
        return TrainingSpec(
            task=self.task_key,
            run="" if _blank(f["run_dir"].value) else str(f["run_dir"].value),
            data="synthetic:cardiac" if f["synthetic"].value else folder,
            variant=f["variant"].value,
            init=str(f["init"].value).strip() or "scratch",
            linear=bool(f["linear"].value),
            size=f["size"].value,
            width=f["width"].value,
            iters=f["iters"].value,
            device=f["device"].value,
            workers=f["workers"].value,
            n_synthetic=f["n_synthetic"].value,
        )
