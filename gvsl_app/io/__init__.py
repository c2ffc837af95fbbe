"""Files in physical space: the :class:`Volume` type, reading and writing images and label
maps (NIfTI, MHA/NRRD, DICOM series, through SimpleITK), data-folder layout, label tables,
strict JSON.
"""
