"""Training runs: their configuration, pre-training and fine-tuning loops, run folders,
progress reports and multi-GPU setup.
"""
