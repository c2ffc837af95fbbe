"""The C-allocator tuning of processes GVSL Studio owns (gvsl_app.allocator).

Each check runs in a fresh interpreter: the tuning is process-wide and must not leak into
the test session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT as REPO_ROOT

ROOT = str(REPO_ROOT)

# Page faults of the last of a few identical steps that each allocate and free 56 MiB
# activations, as every forward pass of a network does.
PROBE = """
import json, resource
import torch
import torch.nn.functional as F
from gvsl_app.allocator import tune_cpu_allocator
tuned = tune_cpu_allocator()
torch.manual_seed(0)
x = torch.rand(1, 4, 96, 96, 96)
w = torch.rand(16, 4, 1, 1, 1)
def step():
    return float(F.leaky_relu(F.conv3d(x, w), 0.2).mean())
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
value = step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"tuned": tuned, "again": tune_cpu_allocator(), "faults": faults, "value": value}))
"""


def _probe(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GVSL_TUNE_MALLOC"}
    if env_value is not None:
        env["GVSL_TUNE_MALLOC"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tuned_process_reuses_freed_tensor_memory_without_page_faults():
    tuned, plain = _probe(None), _probe("0")
    assert tuned["tuned"] and tuned["again"]
    assert not plain["tuned"]
    pages = 16 * 96**3 * 4 // 4096  # one activation
    assert plain["faults"] > pages  # glibc unmapped the freed activations: their pages fault again
    assert tuned["faults"] < pages // 10  # reused from the heap
    assert tuned["value"] == plain["value"]
