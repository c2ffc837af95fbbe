"""Whether a match is to be trusted: a verdict a user can read in the report, the CLI and the widget.

The network and the refinement always return a map, and their own similarity values cannot
tell a match from a failure (the local NCC after a failed 60 mm match stays 0.25-0.34, as high
as after a good one). The verdict here uses what does: how much of the fixed scan's content
the moving scan covers once placed, and the normalised mutual information of the pair, on the
same coarse grid and by the same measure as the initial alignment, in the files' frames,
after the initial alignment and after the whole match.
"""

from __future__ import annotations

import logging

import numpy as np

from gvsl_app.io.volume import Volume
from gvsl_app.services.match_init import InitialAlignment, PairScore
from gvsl_app.services.match_result import Quality

log = logging.getLogger(__name__)

FAILED_COVERAGE = 0.2
"""When the moving scan covers less than this share of the fixed scan's content and less
than this share of its own content lands on the fixed scan, the two barely meet: failed."""

DOUBTFUL_COVERAGE = 0.5
"""The same under this share: doubtful. (A moving scan covering part of the fixed one, a
slab, with all its own content on the fixed scan, is a partial field of view, not a doubt.)"""

FAILED_NMI = 0.05
"""Below this mutual information score after the match, the two scans were not brought
together: a pair of unrelated anatomy or a failed alignment (calibrated in
``benchmarks/capture_range.py``'s ``quality`` table)."""

FOLDING_PERCENT = 0.5
"""Above this share of folded voxels, the map is doubtful."""


def judge(pair: PairScore, init: InitialAlignment, fixed: Volume, disp_mm: np.ndarray, jac: np.ndarray) -> Quality:
    """The verdict on a finished match (its map ``disp_mm`` on the fixed grid, its Jacobian)."""
    identity = init.candidates["none"]  # every mode scores the files' own frames
    after = pair.of_field(fixed, disp_mm, near=init.matrix)
    folding = float((jac <= 0).mean() * 100.0)
    failed, doubtful = [], []
    overlap = max(init.coverage, init.moving_coverage)
    barely = (
        f"the scans barely meet: the moving scan covers {100 * init.coverage:.0f} % of the fixed scan's "
        f"content and {100 * init.moving_coverage:.0f} % of its own lands on it"
    )
    if overlap < FAILED_COVERAGE:
        failed.append(barely)
    elif overlap < DOUBTFUL_COVERAGE:
        doubtful.append(barely)
    if after < FAILED_NMI:
        failed.append(
            f"the scans share little once matched (mutual information score {after:.3f} < {FAILED_NMI}): "
            "different anatomy, or an alignment that was not found"
        )
    elif after < init.score - 0.01:
        doubtful.append(
            f"the match left the scans less alike than the initial alignment ({init.score:.3f} -> {after:.3f})"
        )
    if folding > FOLDING_PERCENT:
        doubtful.append(f"{folding:.2f} % of the map folds (> {FOLDING_PERCENT} %)")
    status = "failed" if failed else ("doubtful" if doubtful else "ok")
    quality = Quality(status, failed + doubtful, init.coverage, identity, init.score, after)
    if status != "ok":
        log.warning("gvsl match: %s", quality_message(quality))
    return quality


def quality_message(quality: Quality) -> str | None:
    """What to tell the user about a match that is not ``ok`` (None for one that is)."""
    if quality.status == "ok":
        return None
    return f"the match {'FAILED' if quality.status == 'failed' else 'is DOUBTFUL'}: " + "; ".join(quality.reasons)
