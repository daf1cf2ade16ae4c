"""Images and prompts shared by the reward tests; tiny rewards are built once per module that asks for them."""

import numpy as np
import PIL.Image
import pytest
import torch
from reward_images import solid


@pytest.fixture(scope="session")
def images() -> list[PIL.Image.Image]:
    """Three images of different sizes: red, random noise and a green-blue gradient."""
    rng = np.random.default_rng(0)
    noise = PIL.Image.fromarray(rng.integers(0, 256, (40, 28, 3), dtype=np.uint8))
    ramp = np.zeros((20, 36, 3), dtype=np.uint8)
    ramp[..., 1] = np.linspace(0, 255, 36, dtype=np.uint8)
    ramp[..., 2] = 200
    return [solid((255, 0, 0)), noise, PIL.Image.fromarray(ramp)]


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    """Prompts of different lengths, so batches need padding."""
    return ["a red square", "static noise on an old television screen at night", "sky"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; several threads on a shared CPU mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
