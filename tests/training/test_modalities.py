"""The modality table is open: a modality defined in this test module trains end to end through ``mmdpo.train``
without a line of mmdpo changed, with its own config field, and the table resolves kinds offline."""

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from mmdpo.adapters.base import Adapter, AdapterData, ReferencePass
from mmdpo.adapters.reference import frozen_copy
from mmdpo.config import ConfigError, DataSection, ModelSection, load_config
from mmdpo.data.loaders import load_groups, train_eval_split
from mmdpo.data.schema import preferences
from mmdpo.data.toy import toy_groups
from mmdpo.modalities import MODALITIES, Modality, register_modality, resolve_modality
from mmdpo.objectives import LogLik, Preferences
from mmdpo.training.trainer import train


@dataclass
class CharModelSection(ModelSection):
    """A bag-of-characters scorer: ``init_scale`` is the spread of its random initial weights."""

    init_scale: float = 0.0


class CharScorer(nn.Module):
    """log p(candidate) = the sum of a learned weight per character."""

    def __init__(self, init_scale: float):
        super().__init__()
        self.weight = nn.Parameter(init_scale * torch.randn(128, generator=torch.Generator().manual_seed(0)))

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return counts @ self.weight


@dataclass
class CharBatch:
    prefs: Preferences
    counts: torch.Tensor

    def to(self, device):
        return CharBatch(self.prefs, self.counts.to(device))


class CharAdapter:
    """The whole contract of :class:`mmdpo.adapters.base.Adapter` in forty lines."""

    model_section = CharModelSection
    data_section = DataSection
    references = frozenset({"copy", "none"})
    provides = frozenset()
    saved = []

    def __init__(self, scale: float, reference: str):
        self.scorer = CharScorer(scale)
        self.reference_kind = reference
        self.reference_scorer = frozen_copy(self.scorer) if reference == "copy" else None

    @classmethod
    def check_config(cls, config, objective):
        if config.model.init_scale < 0:
            raise ConfigError(f"model.init_scale={config.model.init_scale} must not be negative.")

    @classmethod
    def from_config(cls, config, context):
        return cls(config.model.init_scale, context.reference)

    @property
    def frozen_modules(self):
        return [m for m in (self.reference_scorer,) if m is not None]

    def data(self, config, accelerator):
        groups = load_groups(toy_groups(256, config.train.seed))
        train_set, eval_set = train_eval_split(groups, config.data.eval_fraction, seed=config.train.seed)
        return AdapterData(train_set.dataset, eval_set.dataset, {}, lambda rows, epoch: self.collate(rows))

    def collate(self, rows):
        counts = torch.zeros(len(rows), len(rows[0]["candidates"]), 128)
        for b, row in enumerate(rows):
            for k, text in enumerate(row["candidates"]):
                for char in text:
                    counts[b, k, ord(char) % 128] += 1
        return CharBatch(preferences(rows), counts)

    def inputs(self, batch):
        return {"counts": batch.counts}

    def reference(self, batch, inputs):
        if self.reference_scorer is None:
            return ReferencePass(None)
        with torch.no_grad():
            return ReferencePass(LogLik(values=self.reference_scorer(**inputs)))

    def policy_loglik(self, scorer, batch, inputs, reference):
        return LogLik(values=scorer(**inputs))

    def save(self, scorer, directory):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "weights.json").write_text(json.dumps(scorer.weight.tolist()))


@pytest.fixture
def chars():
    row = register_modality(Modality("chars", CharAdapter, "a character model", "character models"))
    yield row
    del MODALITIES["chars"]


FAST = ["model.modality=chars", "model.path=none", "data.num_workers=0", "train.tensorboard=false",
        "train.progress=false", "train.plots=false"]  # fmt: skip


def test_a_modality_registered_here_trains_end_to_end(tmp_path, chars):
    assert isinstance(CharAdapter(0.0, "copy"), Adapter)
    config = load_config(None, [*FAST, f"train.output_dir={tmp_path}", "objective.beta=0.5", "train.lr=0.05",
                                "train.epochs=3", "train.batch_size=16", "model.init_scale=0.01"])  # fmt: skip
    assert config.model.modality == "chars" and config.model.init_scale == 0.01
    result = train(config)
    assert result.eval_before["eval/rewards/accuracies"] == pytest.approx(0.5, abs=0.1)
    assert result.eval_after["eval/rewards/accuracies"] >= 0.9  # vowels win in the toy task
    weights = json.loads((result.final_dir / "weights.json").read_text())
    assert sum(weights[ord(v)] for v in "aeiou") > sum(weights[ord(c)] for c in "bcdfg")


def test_its_fields_and_checks_are_its_own(chars):
    with pytest.raises(ConfigError, match="model.init_scale=-1.0 must not be negative"):
        load_config(None, [*FAST, "model.init_scale=-1"])
    with pytest.raises(ConfigError, match="model.init_scale applies to character models only, but .* a causal LM"):
        load_config(None, ["model.path=tiny:llama", "model.init_scale=1"])
    with pytest.raises(ConfigError, match="model.reference=adapter is not available for character models"):
        load_config(None, [*FAST, "model.reference=adapter", "model.lora.r=4"])
    with pytest.raises(ConfigError, match="objective.name=tdpo needs token_kl, which character models do not"):
        load_config(None, [*FAST, "objective.name=tdpo"])


def test_kinds_resolve_offline_from_tiny_names_and_saved_directories(tmp_path):
    assert resolve_modality("tiny:sdxl").name == "text_to_image"
    assert resolve_modality("tiny:qwen2").name == "llm"
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert resolve_modality(str(tmp_path / "pipe")).name == "text_to_image"
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "WürstchenPipeline"}))
    with pytest.raises(ValueError, match="WürstchenPipeline pipeline, which no modality loads; set model.modality"):
        resolve_modality(str(tmp_path / "pipe"))
    with pytest.raises(ValueError, match="not in the local hub cache, so its kind cannot be read offline"):
        resolve_modality("someone/some-model")
    with pytest.raises(ValueError, match="names no tiny model; known: tiny:llama"):
        resolve_modality("tiny:gpt5")
