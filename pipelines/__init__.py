"""Preference-data pipelines: generate candidates, score them with rewards, rank, write datasets.

from mmdpo.pipelines.config import load_score_config, load_synth_config
from mmdpo.pipelines.score import score
from mmdpo.pipelines.synth import synth

synth(load_synth_config("configs/synth/tiny.yaml", ["prompts=prompts.txt", "out=outputs/set"]))  # `mmdpo synth`
score(load_score_config("outputs/set", ["rewards=[colourfulness]"]))                              # `mmdpo score`
"""
