"""`mmdpo score` on hand-made sets whose new ranks are known, and on a synth set."""

import io
import os
import re
import shutil
import subprocess
import sys

import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import Features, Image, List, Value
from synth_sets import borda_by_hand, dense_ranks_by_hand, read_set

from mmdpo.config import ConfigError
from mmdpo.pipelines.config import load_score_config
from mmdpo.pipelines.score import score


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def hand_made(tmp_path):
    """Two prompts of three solid images; the second row's red image is a file next to the table (a relative path).

    Brightness (BT.601 luma) of white, black, red: 1, 0, 0.299. With ``reward_fake`` 0, 1, 2 the Borda fractions of
    (fake, brightness) are (0 + 2, 1 + 0, 2 + 1) / 4 = 0.5, 0.25, 0.75: ranks 1, 2, 0.
    """
    folder = tmp_path / "set"
    folder.mkdir()
    PIL.Image.new("RGB", (4, 4), "red").save(folder / "red.png")
    white, black, red = ({"bytes": png(c), "path": None} for c in ("white", "black", "red"))
    rows = [
        {"prompt": prompt, "images": images, "reward_fake": [0.0, 1.0, 2.0], "ranks": [0, 0, 0], "extra": "kept"}
        for prompt, images in (("p0", [white, black, red]), ("p1", [white, black, {"bytes": None, "path": "red.png"}]))
    ]
    features = Features(
        {"prompt": Value("string"), "images": List(Image()), "reward_fake": List(Value("float64")),
         "ranks": List(Value("int64")), "extra": Value("string")}
    )  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=features.arrow_schema), folder / "train-00000.parquet")
    return folder / "train-00000.parquet"


def run(source, *overrides):
    return score(load_score_config(str(source), ["progress=false", "device=cpu", *overrides]))


def test_a_new_reward_is_scored_and_the_ranks_aggregate_every_reward(hand_made):
    result = run(hand_made.parent, "rewards=[brightness]")
    table = pq.read_table(hand_made).to_pylist()
    assert (result.files, result.rows, result.rewards, result.aggregation) == (1, 2, ["fake", "brightness"], "borda")
    for row in table:
        assert row["reward_brightness"] == pytest.approx([1.0, 0.0, 0.299], abs=1e-6)
        assert row["reward_fake"] == [0.0, 1.0, 2.0] and row["extra"] == "kept"
        assert row["scores"] == [0.5, 0.25, 0.75]
        assert row["ranks"] == [1, 2, 0]
    assert list(pq.read_schema(hand_made).names) == [
        "prompt",
        "images",
        "reward_fake",
        "extra",
        "reward_brightness",
        "scores",
        "ranks",
    ]
    assert not [p for p in hand_made.parent.iterdir() if p.name.startswith(".")]


def test_listed_ranks_by_the_listed_rewards_alone_and_out_leaves_the_source(hand_made, tmp_path):
    before = hand_made.read_bytes()
    run(hand_made.parent, "rewards=[brightness]", "aggregate=listed", "aggregation=mean", f"out={tmp_path / 'new'}")
    assert hand_made.read_bytes() == before
    rows = pq.read_table(tmp_path / "new" / hand_made.name).to_pylist()
    assert [row["ranks"] for row in rows] == [[0, 2, 1]] * 2
    assert rows[0]["scores"] == pytest.approx([1.0, 0.0, 0.299], abs=1e-6)
    assert rows[1]["images"][2] == {"bytes": None, "path": str(hand_made.parent / "red.png")}  # still resolves


def test_re_ranking_alone_uses_the_stored_raw_scores(hand_made):
    run(hand_made, "aggregation=zscore")  # a file as the source; its one reward is fake: 0, 1, 2
    rows = pq.read_table(hand_made).to_pylist()
    assert rows[0]["scores"] == pytest.approx([-1.224744871, 0.0, 1.224744871])
    assert rows[0]["ranks"] == [2, 1, 0]


def test_a_synth_set_is_rescored_with_its_weights_and_card_updated(reference_set, tmp_path):
    out = shutil.copytree(reference_set, tmp_path / "set")
    run(out, "rewards=[{name: colourfulness, weight: 2.0}]")
    meta = yaml.safe_load((out / "synth.yaml").read_text())
    assert meta["ranking"]["rewards"] == [
        {"name": "pickscore", "path": "tiny", "weight": 1.0},
        {"name": "brightness", "path": None, "weight": 1.0},
        {"name": "colourfulness", "path": None, "weight": 2.0},
    ]
    assert "`reward_colourfulness`" in (out / "README.md").read_text()
    old = {row["prompt"]: row for table in read_set(reference_set).values() for row in table.to_pylist()}
    for table in read_set(out).values():
        for row in table.to_pylist():
            assert row["images"] == old[row["prompt"]]["images"]
            assert row["reward_pickscore"] == old[row["prompt"]]["reward_pickscore"]
            columns = [row["reward_pickscore"], row["reward_brightness"], row["reward_colourfulness"]]
            expected = borda_by_hand(columns, weights=[1, 1, 2])
            assert row["scores"] == pytest.approx(expected, abs=1e-12)
            assert row["ranks"] == dense_ranks_by_hand(expected)


def test_an_unfinished_synth_set_or_a_set_without_rewards_is_refused(reference_set, hand_made, tmp_path):
    unfinished = shutil.copytree(reference_set, tmp_path / "unfinished")
    meta = yaml.safe_load((unfinished / "synth.yaml").read_text())
    (unfinished / "synth.yaml").write_text(yaml.safe_dump({**meta, "complete": False}))
    with pytest.raises(ConfigError, match="unfinished mmdpo synth run"):
        run(unfinished, "rewards=[brightness]")
    table = pq.read_table(hand_made).drop_columns(["reward_fake"])
    pq.write_table(table, hand_made)
    with pytest.raises(ConfigError, match="no reward_<name> columns"):
        run(hand_made, "aggregation=borda")
    pq.write_table(table.drop_columns(["prompt"]), hand_made)
    with pytest.raises(ConfigError, match="needs 'prompt'"):
        run(hand_made, "rewards=[brightness]")


def test_a_relative_source_is_scored_into_another_folder(hand_made, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run("set", "rewards=[brightness]", "out=scored")
    assert pq.read_table(tmp_path / "scored" / hand_made.name).to_pylist()[0]["ranks"] == [1, 2, 0]


@pytest.mark.slow
def test_two_processes_rescore_the_set_as_one(reference_set, tmp_path):
    """Two torchrun processes (gloo on the CPU) split the three shards; rank 0 writes the card when both are done."""
    one, two = (shutil.copytree(reference_set, tmp_path / name) for name in ("one", "two"))
    settings = ["rewards=[colourfulness]", "progress=false", "device=cpu"]
    score(load_score_config(str(one), settings))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [*launcher, "-m", "mmdpo", "score", str(two), *settings]
    printed = subprocess.run(command, check=True, env=env, capture_output=True).stdout.decode()
    assert sorted(re.findall(r"score: \d+ rows in (\d) files here", printed)) == ["1", "2"]  # the files were split
    rescored, expected = read_set(two), read_set(one)
    assert list(rescored) == list(expected) and len(expected) == 3
    for name, table in expected.items():
        assert "reward_colourfulness" in table.column_names and rescored[name].equals(table), name
    assert (two / "README.md").read_text() == (one / "README.md").read_text().replace(str(one), str(two))
