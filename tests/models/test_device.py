"""CPU thread choice for the matching service: no more threads than the load leaves cores."""

import os

import torch

from models.device import cpu_threads, threads_for_load


def test_threads_follow_the_cores_the_load_leaves_free():
    cores = os.cpu_count() or 1
    assert threads_for_load(available=cores, load=0.0) == cores
    assert threads_for_load(available=cores, load=cores + 3.0) == 1  # never fewer than one
    assert threads_for_load(available=1, load=0.0) == 1  # never more than torch's setting
    if cores >= 2:
        assert threads_for_load(available=cores, load=1.2) == cores - 1


def test_cpu_threads_restores_the_setting_it_found():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    try:
        with cpu_threads(1):
            raise RuntimeError("a failing job")
    except RuntimeError:
        pass
    assert torch.get_num_threads() == before
