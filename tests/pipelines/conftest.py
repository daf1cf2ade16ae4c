"""Synth runs on tiny generators and rewards built in memory; one reference set per session for the tests that only
read it."""

import pytest
import torch
from synth_sets import PROMPTS, tiny_config, write_prompts

from mmdpo.pipelines.synth import Processes, synth


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; several threads on a shared CPU mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.txt", PROMPTS)


@pytest.fixture(scope="session")
def reference_set(tmp_path_factory, prompts_file):
    """The tiny config's set of the five prompts, written by one uninterrupted run on one thread."""
    out = tmp_path_factory.mktemp("reference") / "set"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        synth(tiny_config(out, prompts_file), Processes())
    finally:
        torch.set_num_threads(threads)
    return out
