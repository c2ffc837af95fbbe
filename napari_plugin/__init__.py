"""GVSL Studio's napari plugin: the widgets listed in ``napari.yaml`` and the desktop app (``app``)."""
