"""Files that ship with mmdpo: the toy text-to-image model of the demo and the learning tests.

``TOY_T2I`` is a diffusers ``StableDiffusionPipeline`` directory (about 5 MB, float16 weights): 32 x 32 scenes of one
coloured shape on a plain background (:mod:`mmdpo.data.shapes`), trained by ``assets/train_toy_t2i.py``.
"""

from pathlib import Path

TOY_T2I = Path(__file__).parent / "toy-t2i"
