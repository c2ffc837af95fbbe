"""Figures of the paper-table study: the t-SNE scatter of the local features of each method and
the side-by-side panel in the manner of the paper's Fig. 7.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .plan import METHOD_TITLES


def draw_figures(points: dict[str, dict], sil: dict[str, float], fig_dir: Path, smoke: bool) -> list[Path]:
    """One t-SNE scatter per method and the side-by-side Fig. 7 panel, as PNG files in ``fig_dir`` (returned)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gvsl_app.data.synthetic import CARDIAC_COLORS, CARDIAC_LABELS

    fig_dir.mkdir(parents=True, exist_ok=True)
    files = []

    def scatter(ax, pts, title):
        for value, name in CARDIAC_LABELS.items():
            m = pts["labels"] == value
            if m.any():
                ax.scatter(
                    pts["xy"][m, 0],
                    pts["xy"][m, 1],
                    s=3,
                    alpha=0.7,
                    color=np.asarray(CARDIAC_COLORS[value]) / 255.0,
                    label=name,
                    rasterized=True,
                )
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    tag = " [SMOKE]" if smoke else ""
    for method, pts in points.items():
        fig, ax = plt.subplots(figsize=(4.2, 4.2))
        scatter(ax, pts, f"{METHOD_TITLES[method]}{tag}\nsilhouette (features) {sil[method]:.3f}")
        ax.legend(fontsize=6, markerscale=3, loc="best")
        fig.tight_layout()
        path = fig_dir / f"tsne_{method}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    fig, axes = plt.subplots(1, len(points), figsize=(3.2 * len(points), 3.5))
    axes = np.atleast_1d(axes)
    for ax, (method, pts) in zip(axes, points.items()):
        scatter(ax, pts, f"{method}{tag}\nsil. {sil[method]:.3f}")
    axes[0].legend(fontsize=6, markerscale=3, loc="lower left")
    fig.suptitle("t-SNE of local features f^l of the seven cardiac structures (cf. paper Fig. 7)", fontsize=10)
    fig.tight_layout()
    path = fig_dir / "fig7_tsne.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)
    return files
