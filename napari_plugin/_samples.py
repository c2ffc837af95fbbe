"""npe2 sample data: the bundled (fixed, moving) pairs with their label maps."""

from __future__ import annotations

import os

from gvsl_app.data.samples import sample_pair

from ._layers import image_layer_data, labels_layer_data

#: Grid of the sample volumes (``GVSL_SAMPLE_SIZE`` overrides the side, e.g. 48 for tests).
SAMPLE_SHAPE = (int(os.environ.get("GVSL_SAMPLE_SIZE", 96)),) * 3


def pair_layer_data(kind: str, shape=None) -> list[tuple]:
    """Fixed and moving image layers plus their Labels layers (named structures, colours)."""
    p = sample_pair(kind, tuple(shape or SAMPLE_SHAPE))
    names, colors = p["label_names"], p["label_colors"]
    return [
        image_layer_data(p["fixed_image"], f"{kind} fixed"),
        image_layer_data(p["moving_image"], f"{kind} moving"),
        labels_layer_data(p["fixed_labels"], f"{kind} fixed labels", names, colors, visible=False),
        labels_layer_data(p["moving_labels"], f"{kind} moving labels", names, colors, visible=False),
    ]


def cardiac_pair() -> list[tuple]:
    return pair_layer_data("cardiac")


def brain_pair() -> list[tuple]:
    return pair_layer_data("brain")
