"""What a user runs on trained weights: Z-Matching of two volumes, segmentation, feature
embedding; weight loading and export, sliding-window inference, label metrics.
"""
