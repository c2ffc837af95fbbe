"""What feeds the network: intensity normalisation and resampling, synthetic cardiac CT and
MNI-derived brain MR subjects, sample data, augmentations, training datasets and loaders.
"""
