"""Rewards on open_clip models: CLIPScore, HPSv2 / HPSv2.1 and the LAION aesthetic predictor.

OpenAI's CLIP weights use QuickGELU, so their open_clip names end in ``-quickgelu`` (``ViT-L-14-quickgelu`` with
``pretrained="openai"``); the plain ``ViT-L-14`` name with those weights only warns and computes wrong embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import open_clip
import PIL.Image
import torch
from huggingface_hub import hf_hub_download
from torch import Tensor, nn
from torch.nn import functional as F

from mmdpo.rewards.base import Reward
from mmdpo.rewards.tiny import register_tiny_open_clip

Preprocess = Callable[[PIL.Image.Image], Tensor]


def load_open_clip(name: str, pretrained: str | None = None) -> tuple[nn.Module, Preprocess, Callable]:
    """An open_clip model in eval mode, its evaluation preprocessing and its tokenizer.

    ``name`` is an architecture (``pretrained`` then a tag such as ``openai`` or a checkpoint file; None leaves the
    weights random), ``hf-hub:org/repo``, or a folder in open_clip's hub layout (``open_clip_config.json`` plus
    weights).
    """
    if Path(name).is_dir():
        name = f"local-dir:{name}"
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def tiny_open_clip(seed: int = 0) -> tuple[nn.Module, Preprocess, Callable]:
    """The random tiny open_clip model (:data:`~mmdpo.rewards.tiny.TINY_OPEN_CLIP`), its preprocessing and tokenizer."""
    torch.manual_seed(seed)
    return load_open_clip(register_tiny_open_clip())


def checkpoint_file(path_or_id: str, filename: str) -> str:
    """A local checkpoint: ``path_or_id`` itself when it is a file, else ``filename`` in that folder or hub repo
    (downloaded once, and only when the network allows)."""
    path = Path(path_or_id).expanduser()
    if path.is_file():
        return str(path)
    if path.is_dir():
        if not (path / filename).is_file():
            raise FileNotFoundError(f"{path} holds no {filename}; give the checkpoint file itself or its folder.")
        return str(path / filename)
    if path.is_absolute() or path_or_id.startswith((".", "~")):
        raise FileNotFoundError(f"{path_or_id} does not exist; give a checkpoint file, its folder or a hub repo id.")
    return hf_hub_download(path_or_id, filename)


def _pixels(preprocess: Preprocess, items: list[PIL.Image.Image]) -> Tensor:
    """The preprocessed images, [n, 3, S, S]."""
    return torch.stack([preprocess(image) for image in items])


class OpenClipSimilarity(Reward):
    """The cosine of an open_clip model's L2-normalised image and text embeddings; subclasses map it to a score."""

    def __init__(self, model: nn.Module, preprocess: Preprocess, tokenizer: Callable, batch_size: int = 16):
        super().__init__(batch_size)
        self.model, self.preprocess, self.tokenizer = model.eval(), preprocess, tokenizer

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs) -> OpenClipSimilarity:
        return cls(*tiny_open_clip(seed), **kwargs)

    def cosine(self, prompts: list[str], items: list[PIL.Image.Image]) -> Tensor:
        pixels = _pixels(self.preprocess, items).to(self.device, self.dtype)
        images = self.model.encode_image(pixels, normalize=True)
        texts = self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True)
        return (images * texts).sum(-1)


class CLIPScore(OpenClipSimilarity):
    """CLIPScore (Hessel et al. 2021, arXiv 2104.08718, eq. 1): ``w * max(cos(E_image, E_text), 0)``.

    Args:
        weight: ``w``; 2.5 in the paper (it stretches the scores to about [0, 1]). torchmetrics' ``CLIPScore`` uses
            ``weight=100`` (and a transformers ``openai/clip-vit-large-patch14`` by default).
    """

    name = "clipscore"

    def __init__(
        self, model: nn.Module, preprocess: Preprocess, tokenizer: Callable, weight: float = 2.5, batch_size: int = 16
    ):
        super().__init__(model, preprocess, tokenizer, batch_size)
        self.weight = weight

    def score_batch(self, prompts: list[str], items: list[PIL.Image.Image]) -> Tensor:
        return self.weight * self.cosine(prompts, items).clamp(min=0)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str = "ViT-B-32-quickgelu",
        pretrained: str | None = "openai",
        *,
        weight: float = 2.5,
        batch_size: int = 16,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CLIPScore:
        """An open_clip model (see :func:`load_open_clip`); by default the paper's OpenAI ViT-B/32."""
        model, preprocess, tokenizer = load_open_clip(path_or_id, pretrained)
        return cls(model, preprocess, tokenizer, weight, batch_size).to(device, dtype)


HPS_FILES = {"2.0": "HPS_v2_compressed.pt", "2.1": "HPS_v2.1_compressed.pt"}


class HPSv2(OpenClipSimilarity):
    """Human Preference Score v2 / v2.1 (Wu et al. 2023, arXiv 2306.09341): ``cos(E_image, E_text)`` of an open_clip
    ViT-H-14 fine-tuned on HPDv2, with no logit scale (values are about 0.2-0.35), as ``hpsv2/img_score.py``."""

    name = "hpsv2"

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str = "xswu/HPSv2",
        version: str = "2.1",
        *,
        arch: str = "ViT-H-14",
        batch_size: int = 16,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> HPSv2:
        """The HPS checkpoint (a file, or ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` in a folder or hub
        repo) loaded into a randomly initialised ``arch``; the LAION base weights are never fetched."""
        if version not in HPS_FILES:
            raise ValueError(f"HPS version {version!r} is unknown; use one of {', '.join(HPS_FILES)}.")
        model, preprocess, tokenizer = load_open_clip(arch)
        checkpoint = torch.load(checkpoint_file(path_or_id, HPS_FILES[version]), map_location="cpu")
        model.load_state_dict(checkpoint["state_dict"])
        return cls(model, preprocess, tokenizer, batch_size).to(device, dtype)

    def score_batch(self, prompts: list[str], items: list[PIL.Image.Image]) -> Tensor:
        return self.cosine(prompts, items)


AESTHETIC_HEAD = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = f"https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/{AESTHETIC_HEAD}"


class AestheticMLP(nn.Module):
    """The improved aesthetic predictor's MLP, layer for layer (dropouts, no activations), so the ``layers.*`` keys
    of its checkpoints load unchanged."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.layers(embeddings)


class Aesthetic(Reward):
    """LAION's improved aesthetic predictor v2 (christophschuhmann/improved-aesthetic-predictor,
    ``simple_inference.py``): an MLP on the L2-normalised CLIP ViT-L/14 image embedding, about 1-10. Text is ignored.

    Args:
        visual: the image tower of an open_clip model (``model.visual``), returning projected embeddings.
        preprocess: its evaluation preprocessing.
        head: the MLP (:class:`AestheticMLP`).
    """

    name = "aesthetic"

    def __init__(self, visual: nn.Module, preprocess: Preprocess, head: nn.Module, batch_size: int = 16):
        super().__init__(batch_size)
        self.visual, self.preprocess, self.head = visual.eval(), preprocess, head.eval()

    def score_batch(self, prompts: list[str], items: list[PIL.Image.Image]) -> Tensor:
        embeddings = F.normalize(self.visual(_pixels(self.preprocess, items).to(self.device, self.dtype)), dim=-1)
        return self.head(embeddings).squeeze(-1)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str = AESTHETIC_URL,
        *,
        clip: str = "ViT-L-14-quickgelu",
        clip_pretrained: str | None = "openai",
        batch_size: int = 16,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Aesthetic:
        """The MLP's state dict (a URL, a file, or ``sac+logos+ava1-l14-linearMSE.pth`` in a folder or hub repo) on
        the image tower of ``clip`` (see :func:`load_open_clip`); by default OpenAI's ViT-L/14, as the original."""
        model, preprocess, _ = load_open_clip(clip, clip_pretrained)
        if path_or_id.startswith(("https://", "http://")):
            state = torch.hub.load_state_dict_from_url(path_or_id, map_location="cpu", weights_only=True)
        else:
            state = torch.load(checkpoint_file(path_or_id, AESTHETIC_HEAD), map_location="cpu")
        head = AestheticMLP(model.visual.output_dim)
        head.load_state_dict(state)
        return cls(model.visual, preprocess, head, batch_size).to(device, dtype)

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs) -> Aesthetic:
        model, preprocess, _ = tiny_open_clip(seed)
        return cls(model.visual, preprocess, AestheticMLP(model.visual.output_dim), **kwargs)
