"""Synth runs on tiny generators and rewards built in memory, on one torch thread (tiny models run fastest so on a
shared CPU); one reference set per session for the tests that only read it."""

import pytest
from synth_sets import PROMPTS, one_torch_thread, tiny_config, write_prompts

from mmdpo.pipelines.synth import Processes, synth


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.txt", PROMPTS)


@pytest.fixture(scope="session")
def reference_set(tmp_path_factory, prompts_file):
    """The tiny config's set of the five prompts, written by one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "set"
    with one_torch_thread():
        synth(tiny_config(out, prompts_file), Processes())
    return out
