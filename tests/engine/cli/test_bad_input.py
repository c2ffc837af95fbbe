"""The bad-input corpus: every command refuses nonsense with exit 2, one line naming the culprit,
no traceback, and nothing left behind.

Each row runs the real ``gvsl`` entry point (``gvsl_app.cli.main``, in-process to keep the
suite fast) on files a careless or hostile user could hand it. ``{x}`` in an argument is a
path from the ``corpus`` fixture; ``OUT`` is a fresh path that must still not exist after
the refusal.
"""

from __future__ import annotations

import gzip
import signal

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

import models
from gvsl_app.cli import main
from gvsl_app.data.synthetic import cardiac_dataset
from gvsl_app.training.config import PretrainConfig, as_dict
from models.checkpoint import atomic_torch_save
from models.downstream import SegmentationNet


def _write(arr, path, spacing=(1.0, 1.0, 1.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    data = cardiac_dataset(root / "data", 3, seed=2, shape=(24, 24, 24))
    cls = cardiac_dataset(root / "cls", 4, seed=3, shape=(24, 24, 24), classification=True)
    f = {
        "img": data / "images" / "case_000.nii.gz",
        "img2": data / "images" / "case_001.nii.gz",
        "lab": data / "labels" / "case_000.nii.gz",
        "lab2": data / "labels" / "case_001.nii.gz",
        "data": data,
        "cls": cls,
    }
    f["noise_pt"] = root / "noise.pt"
    f["noise_pt"].write_bytes(bytes(range(256)) * 16)
    f["text_nii"] = root / "text.nii.gz"
    f["text_nii"].write_text("not an image")
    f["empty_file"] = root / "empty.nii.gz"
    f["empty_file"].write_bytes(b"")
    f["img2d"] = _write(np.zeros((16, 16), np.float32), root / "flat2d.nii.gz")
    f["tiny"] = _write(np.zeros((2, 2, 2), np.float32), root / "tiny.nii.gz")
    f["all_nan"] = _write(np.full((24, 24, 24), np.nan, np.float32), root / "allnan.nii.gz")
    f["lab_grid"] = _write(np.zeros((20, 24, 24), np.uint8), root / "othergrid_labels.nii.gz")
    f["lab_neg"] = _write(np.full((24, 24, 24), -1, np.int16), root / "negative_labels.nii.gz")
    f["lab_frac"] = _write(np.full((24, 24, 24), 0.5, np.float32), root / "fraction_labels.nii.gz")
    f["lab_nan"] = _write(np.full((24, 24, 24), np.nan, np.float32), root / "nan_labels.nii.gz")
    far = sitk.ReadImage(str(f["img2"]))
    far.SetOrigin((5000.0, 5000.0, 5000.0))
    f["far"] = root / "far_away.nii.gz"
    sitk.WriteImage(far, str(f["far"]))
    seg = SegmentationNet(8, models.DEMO_WIDTHS)
    f["seg_pt"] = root / "seg.pt"
    torch.save(
        {
            "format": "gvsl-studio",
            "kind": "segmentation",
            "model_config": seg.config(),
            "model": seg.state_dict(),
            "preprocess": {"size": 24},
        },
        f["seg_pt"],
    )
    gv = models.GVSL(widths=models.DEMO_WIDTHS)
    f["gvsl_pt"] = root / "gvsl.pt"
    torch.save(
        {"format": "gvsl-studio", "kind": "pretrain", "model_config": gv.config(), "model": gv.state_dict()},
        f["gvsl_pt"],
    )
    f["corrupt_pt"] = atomic_torch_save(
        {"format": "gvsl-studio", "kind": "pretrain", "model_config": gv.config(), "model": gv.state_dict()},
        root / "corrupt.pt",
    )
    corrupt_tensor_bytes(f["corrupt_pt"])
    nan_state = gv.state_dict()
    nan_state["unet.inc.double_conv.0.weight"] = torch.full_like(nan_state["unet.inc.double_conv.0.weight"], np.nan)
    f["nan_pt"] = root / "nan_weights.pt"
    torch.save(
        {"format": "gvsl-studio", "kind": "pretrain", "model_config": gv.config(), "model": nan_state}, f["nan_pt"]
    )
    gv4 = models.GVSL(widths=models.widths_from_base(4))
    f["gvsl4_pt"] = root / "width4.pt"
    torch.save(
        {"format": "gvsl-studio", "kind": "pretrain", "model_config": gv4.config(), "model": gv4.state_dict()},
        f["gvsl4_pt"],
    )
    # a 2 KB NIfTI whose header declares 1100^3 voxels (5.0 GiB as float32)
    header = nib.Nifti1Header()
    header.set_data_shape((1100, 1100, 1100))
    header.set_data_dtype(np.uint8)
    f["huge_nii"] = root / "huge.nii.gz"
    f["huge_nii"].write_bytes(gzip.compress(header.binaryblock + bytes(4 + 4096)))
    # a "label map" with a label per voxel: Dice per structure would need a 13824-channel one-hot
    for key, image in (("many_labels", "img"), ("many_labels2", "img2")):
        many = sitk.GetImageFromArray(np.arange(1, 24**3 + 1, dtype=np.int32).reshape(24, 24, 24))
        many.CopyInformation(sitk.ReadImage(str(f[image])))
        f[key] = root / f"{key}.nii.gz"
        sitk.WriteImage(many, str(f[key]))
    f["lab_link"] = root / "labels_link"
    f["lab_link"].symlink_to(data / "labels", target_is_directory=True)
    _resumable_runs(root, f, gv4)
    f["foreign_pt"] = root / "foreign.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, f["foreign_pt"])
    f["bad_yaml"] = root / "bad.yaml"
    f["bad_yaml"].write_text("iters: [1, 2\n")
    f["unknown_yaml"] = root / "unknown.yaml"
    f["unknown_yaml"].write_text("iterations: 10\n")
    f["typed_yaml"] = root / "typed.yaml"
    f["typed_yaml"].write_text("amp: 'false'\n")
    f["list_yaml"] = root / "list.yaml"
    f["list_yaml"].write_text("- 1\n- 2\n")
    f["empty_dir"] = root / "empty_dir"
    f["empty_dir"].mkdir()
    f["a_file"] = root / "a_file.txt"
    f["a_file"].write_text("x")
    f["pre_run"] = root / "pre_run"
    (f["pre_run"]).mkdir()
    (f["pre_run"] / "config.yaml").write_text("variant: gvsl\niters: 1\n")
    (f["pre_run"] / "checkpoints").mkdir()
    (f["pre_run"] / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")  # a run with weights to keep
    f["busy_out"] = root / "busy_out"
    f["busy_out"].mkdir()
    (f["busy_out"] / "report.json").write_text("{}")
    f["old_seg"] = root / "old_seg.nii.gz"
    f["old_seg"].write_text("an earlier result")
    for name, rows in {
        "csv_abc": "case_000,1\ncase_001,abc\n",
        "csv_frac": "case_000,2.5\ncase_001,1\n",
        "csv_neg": "case_000,-1\ncase_001,1\n",
        "csv_blank": "case_000,1\ncase_001,\n",
        "csv_one": "case_000,1\ncase_001,1\ncase_002,1\n",
    }.items():
        folder = root / name
        (folder / "images").mkdir(parents=True)
        for k in range(3):
            (folder / "images" / f"case_{k:03d}.nii.gz").write_bytes(
                (data / "images" / f"case_{k:03d}.nii.gz").read_bytes()
            )
        (folder / "labels.csv").write_text("name,label\n" + rows)
        f[name] = folder
    return f


def corrupt_tensor_bytes(path):
    """Flip bytes inside the largest tensor's stored data: the archive stays readable."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    at = info.header_offset
    start = (
        at + 30 + int.from_bytes(raw[at + 26 : at + 28], "little") + int.from_bytes(raw[at + 28 : at + 30], "little")
    )
    start += info.file_size // 2
    raw[start : start + 8] = bytes(b ^ 0x5A for b in raw[start : start + 8])
    path.write_bytes(bytes(raw))


RUN_CONFIG = PretrainConfig(
    data="synthetic:cardiac", n_synthetic=2, iters=1, size=24, width=4, workers=0, device="cpu", amp=False
)


def _resumable_runs(root, f, model):
    """Run folders with a last.pt and a config.yaml emptied, trimmed, with an unknown key, or edited."""
    import yaml

    saved = as_dict(RUN_CONFIG)
    variants = {
        "run_empty_cfg": "",
        "run_trimmed_cfg": yaml.safe_dump({k: v for k, v in saved.items() if k not in ("size", "width")}),
        "run_unknown_cfg": yaml.safe_dump({**saved, "iterations": 10}),
        "run_edited_cfg": yaml.safe_dump({**saved, "lr": 0.5}),
    }
    for name, text in variants.items():
        folder = root / name
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "config.yaml").write_text(text)
        torch.save(
            {
                "format": "gvsl-studio",
                "kind": "pretrain",
                "config": saved,
                "model_config": model.config(),
                "model": model.state_dict(),
                "iteration": 0,
            },
            folder / "checkpoints" / "last.pt",
        )
        f[name] = folder


M = [
    "match",
    "{img}",
    "{img2}",
    "--out",
    "OUT",
    "--weights",
    "{gvsl_pt}",
    "--size",
    "24",
    "--device",
    "cpu",
    "--no-refine",
]
P = [
    "pretrain",
    "--data",
    "synthetic:cardiac",
    "--n-synthetic",
    "2",
    "--run",
    "OUT",
    "--iters",
    "1",
    "--size",
    "24",
    "--width",
    "4",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--quiet",
]
F = [
    "finetune",
    "--data",
    "{data}",
    "--run",
    "OUT",
    "--iters",
    "1",
    "--size",
    "16",
    "--width",
    "4",
    "--device",
    "cpu",
    "--quiet",
]
S = ["segment", "{img}", "--weights", "{seg_pt}", "--out", "OUT", "--device", "cpu"]
E = [
    "embed",
    "{img}",
    "{lab}",
    "--out",
    "OUT",
    "--weights",
    "{gvsl_pt}",
    "--size",
    "24",
    "--per-label",
    "5",
    "--device",
    "cpu",
]


def _with(base, **repl):
    """``base`` with the value after each ``--option`` (or a positional placeholder) replaced."""
    out = list(base)
    for key, value in repl.items():
        flag = "--" + key.replace("_", "-")
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out[out.index("{" + key + "}")] = value
    return out


CASES = [
    # match: inputs
    ("match-missing-moving", _with(M, img2="{img}.missing"), "{img}.missing: no such file", None),
    ("match-text-as-nifti", _with(M, img2="{text_nii}"), "text.nii.gz", None),
    ("match-empty-file", _with(M, img2="{empty_file}"), "empty.nii.gz", None),
    ("match-2d-image", _with(M, img2="{img2d}"), "flat2d.nii.gz", None),
    ("match-tiny-volume", _with(M, img2="{tiny}"), "tiny.nii.gz", None),
    ("match-all-nan", _with(M, img2="{all_nan}"), "allnan.nii.gz", None),
    # in the files' own frames (--init none) a pair that does not overlap is refused; the default
    # initial alignment matches it (tests/engine/services/test_matching_real_pairs.py)
    ("match-no-overlap", _with(M, img2="{far}") + ["--init", "none"], "do not overlap", None),
    ("match-labels-other-grid", M + ["--moving-labels", "{lab_grid}"], "othergrid_labels.nii.gz", None),
    ("match-labels-negative", M + ["--moving-labels", "{lab_neg}"], "negative_labels.nii.gz", None),
    ("match-labels-fraction", M + ["--fixed-labels", "{lab_frac}"], "fraction_labels.nii.gz", None),
    ("match-labels-nan", M + ["--fixed-labels", "{lab_nan}"], "nan_labels.nii.gz", None),
    ("match-labels-missing", M + ["--fixed-labels", "{lab}.missing"], "{lab}.missing: no such file", None),
    # memory estimated from the header / the labels before anything large is allocated (the
    # corpus runs as on a machine with 1 GiB free, so the refusals do not depend on the runner)
    ("match-header-1100-cubed", _with(M, img2="{huge_nii}"), "{huge_nii} declares 1100 x 1100 x 1100 voxels", None),
    ("match-fixed-1100-cubed", _with(M, img="{huge_nii}"), "matching onto it needs about", None),
    (
        "match-labels-too-many",
        M + ["--fixed-labels", "{many_labels}", "--moving-labels", "{many_labels2}"],
        "13824 distinct labels",
        None,
    ),
    (
        "match-weights-damaged",
        _with(M, weights="{corrupt_pt}"),
        "corrupt.pt: checksum mismatch, the file is damaged",
        None,
    ),
    (
        "match-weights-nan",
        _with(M, weights="{nan_pt}") + ["--no-fallback"],
        "nan_weights.pt: the checkpoint holds non-finite",
        None,
    ),
    # an --out that holds an input is refused, --overwrite or not, through links too
    ("match-out-images-folder", _with(M, out="{data}/images") + ["--overwrite"], "holds the fixed image", None),
    ("embed-out-labels-link", _with(E, out="{lab_link}") + ["--overwrite"], "holds the label map", None),
    (
        "segment-out-data-folder",
        ["segment", "{data}", "--out", "{data}", "--weights", "{seg_pt}", "--device", "cpu", "--overwrite"],
        "holds the images folder",
        None,
    ),
    # match: options and weights
    ("match-size-zero", _with(M, size="0"), "--size must be >= 16 (the network pools four times), got 0", None),
    ("match-size-small", _with(M, size="8"), "--size must be >= 16 (the network pools four times), got 8", None),
    ("match-passes-huge", M + ["--passes", "99999999999"], "--passes must be <= 10", None),
    ("match-weights-noise", _with(M, weights="{noise_pt}"), "noise.pt: not a PyTorch checkpoint", None),
    ("match-weights-missing", _with(M, weights="{gvsl_pt}.missing"), "no such checkpoint", None),
    ("match-weights-segmentation", _with(M, weights="{seg_pt}"), "seg.pt: this is a segmentation checkpoint", None),
    ("match-weights-foreign", _with(M, weights="{foreign_pt}"), "foreign.pt", None),
    ("match-weights-text", _with(M, weights="{a_file}"), "a_file.txt: not a PyTorch checkpoint", None),
    ("match-out-busy", _with(M, out="{busy_out}"), "is not empty", "busy_out"),
    ("match-out-is-file", _with(M, out="{a_file}"), "a_file.txt is a file", "a_file"),
    ("match-out-under-file", _with(M, out="{a_file}/sub"), "is a file, not a folder", "a_file"),
    # segment
    ("segment-missing-image", _with(S, img="{img}.missing"), "{img}.missing: no such file", None),
    ("segment-text-image", _with(S, img="{text_nii}"), "text.nii.gz", None),
    ("segment-gvsl-weights", _with(S, weights="{gvsl_pt}"), "gvsl.pt: a GVSL pre-training checkpoint", None),
    ("segment-noise-weights", _with(S, weights="{noise_pt}"), "noise.pt: not a PyTorch checkpoint", None),
    ("segment-reference-other-grid", S + ["--reference", "{lab_grid}"], "othergrid_labels.nii.gz", None),
    ("segment-reference-negative", S + ["--reference", "{lab_neg}"], "negative_labels.nii.gz", None),
    ("segment-out-exists", _with(S, out="{old_seg}"), "old_seg.nii.gz already exists", "old_seg"),
    ("segment-out-is-folder", _with(S, out="{empty_dir}"), "already exists", "empty_dir"),
    ("segment-header-1100-cubed", _with(S, img="{huge_nii}"), "segmenting it needs about", None),
    ("segment-reference-too-many-labels", S + ["--reference", "{many_labels}"], "13824 distinct labels", None),
    # embed
    ("embed-labels-other-grid", _with(E, lab="{lab_grid}"), "othergrid_labels.nii.gz", None),
    ("embed-labels-negative", _with(E, lab="{lab_neg}"), "negative_labels.nii.gz", None),
    ("embed-weights-noise", _with(E, weights="{noise_pt}"), "noise.pt: not a PyTorch checkpoint", None),
    ("embed-out-busy", _with(E, out="{busy_out}"), "is not empty", "busy_out"),
    # pretrain
    ("pretrain-missing-data", _with(P, data="{data}/typo"), "typo", None),
    ("pretrain-empty-data", _with(P, data="{empty_dir}"), "no volumes found", None),
    ("pretrain-unknown-synthetic", _with(P, data="synthetic:liver"), "synthetic:liver", None),
    ("pretrain-one-subject", _with(P, n_synthetic="1"), "n_synthetic must be >= 2", None),
    ("pretrain-iters-zero", _with(P, iters="0"), "iters must be > 0", None),
    ("pretrain-size-small", _with(P, size="8"), "size must be >= 16", None),
    ("pretrain-lr-zero", P + ["--lr", "0"], "lr must be > 0", None),
    ("pretrain-batch-zero", P + ["--batch", "0"], "batch must be > 0", None),
    ("pretrain-batch-memory", P + ["--batch", "1024"], "--batch 1024 at --size 24 and --width 4 needs about", None),
    ("pretrain-workers-negative", _with(P, workers="-1"), "workers must be >= 0", None),
    ("pretrain-bad-yaml", P + ["--config", "{bad_yaml}"], "bad.yaml: not valid YAML", None),
    ("pretrain-unknown-yaml", P + ["--config", "{unknown_yaml}"], "unknown option(s) iterations", None),
    ("pretrain-typed-yaml", P + ["--config", "{typed_yaml}"], "option amp: expected true or false", None),
    ("pretrain-list-yaml", P + ["--config", "{list_yaml}"], "expected a mapping", None),
    ("pretrain-resume-nothing", P + ["--resume"], "no checkpoint to resume from", None),
    ("pretrain-resume-and-overwrite", P + ["--resume", "--overwrite"], "exclude each other", None),
    ("pretrain-over-a-run", _with(P, run="{pre_run}"), "holds a run", "pre_run"),
    # --resume trusts only a complete config.yaml that agrees with last.pt
    ("pretrain-resume-empty-config", _with(P, run="{run_empty_cfg}") + ["--resume"], "config.yaml: incomplete", "run_"),
    (
        "pretrain-resume-trimmed-config",
        _with(P, run="{run_trimmed_cfg}") + ["--resume"],
        "missing (size, width)",
        "run_",
    ),
    (
        "pretrain-resume-unknown-key",
        _with(P, run="{run_unknown_cfg}") + ["--resume"],
        "config.yaml: unknown option(s) iterations",
        "run_",
    ),
    (
        "pretrain-resume-edited-config",
        _with(P, run="{run_edited_cfg}") + ["--resume"],
        "(lr 0.0001 -> 0.5: checkpoint -> file)",
        "run_",
    ),
    # finetune / evaluate
    ("finetune-missing-data", _with(F, data="{data}/typo"), "typo", None),
    ("finetune-iters-zero", _with(F, iters="0"), "iters must be > 0", None),
    ("finetune-batch-memory", _with(F, size="256") + ["--batch", "64"], "--batch 64 at --size 256 and", None),
    ("finetune-run-is-data", _with(F, run="{data}"), "is the data folder of --data", "data"),
    ("finetune-run-in-images", _with(F, run="{data}/images/run"), "the run's files would be mixed with the data", None),
    ("pretrain-run-in-labels", _with(P, data="{data}", run="{data}/labels/run"), "inside", None),
    ("finetune-iters-negative", _with(F, iters="-2"), "iters must be > 0", None),
    ("finetune-n-train-negative", F + ["--n-train", "-1"], "n_train must be >= 0", None),
    ("finetune-init-noise", F + ["--init", "{noise_pt}"], "noise.pt: not a PyTorch checkpoint", None),
    ("finetune-init-foreign", F + ["--init", "{foreign_pt}"], "foreign.pt", None),
    (
        "finetune-width-vs-init",
        _with(F, width="8") + ["--init", "{gvsl4_pt}"],
        "--width 8 asks for base width 8, but the --init checkpoint {gvsl4_pt} has base width 4",
        None,
    ),
    ("finetune-init-damaged", F + ["--init", "{corrupt_pt}"], "checksum mismatch", None),
    ("finetune-cls-abc", _with(F, data="{csv_abc}") + ["--task", "cls"], "mix numbers and names", None),
    ("finetune-cls-fraction", _with(F, data="{csv_frac}") + ["--task", "cls"], "must be 0 or 1", None),
    ("finetune-cls-negative", _with(F, data="{csv_neg}") + ["--task", "cls"], "must be 0 or 1", None),
    ("finetune-cls-blank", _with(F, data="{csv_blank}") + ["--task", "cls"], "no label for case", None),
    ("finetune-cls-one-class", _with(F, data="{csv_one}") + ["--task", "cls"], "exactly two", None),
    ("evaluate-pretrain-run", ["evaluate", "--run", "{pre_run}", "--data", "{data}"], "is a pre-training run", None),
    ("evaluate-not-a-run", ["evaluate", "--run", "{empty_dir}", "--data", "{data}"], "not a run folder", None),
]


@pytest.fixture()
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("name, argv, culprit, keep", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly(
    corpus, tmp_path, capsys, monkeypatch, restore_signals, name, argv, culprit, keep
):
    monkeypatch.setattr("gvsl_app.memory.available_bytes", lambda: 2**30)
    out = tmp_path / "OUT"
    files = {k: str(v) for k, v in corpus.items()}
    args = [a.replace("OUT", str(out)).format(**files) for a in argv]

    def content(p):  # RUN/.lock may appear: it is the folder's lock file, not output
        return p.read_bytes() if p.is_file() else sorted(x.name for x in p.iterdir() if x.name != ".lock")

    before = {p: content(p) for p in corpus.values() if p.exists() and keep and p.name.startswith(keep)}
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") <= 2, err
    assert culprit.format(**files) in err, err
    assert not out.exists()  # nothing left behind
    for p, was in before.items():  # an existing output or run is untouched
        assert content(p) == was


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 50
