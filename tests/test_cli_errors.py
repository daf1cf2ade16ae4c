"""What a user can get wrong, through the command line: one sentence on stderr, exit code 2, no traceback."""

import io
import json

import pytest
from datasets import Dataset
from PIL import Image

from mmdpo.cli import main

TRAIN = ["train", "configs/llm/dpo.yaml", "model.path=tiny:llama", "train.batch_size=2", "data.eval_fraction=0"]
IMAGES = ["train", "configs/sd15/dpo_pairs_lora.yaml", "model.path=tiny:sd15", "model.dtype=float32",
          "train.mixed_precision=no", "train.batch_size=2", "data.eval_fraction=0", "data.resolution=16"]  # fmt: skip


def jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def inputs(tmp_path):
    pair = {"prompt": "hi", "chosen": "aeiou", "rejected": "xyz"}
    images = [jpeg((250, 250, 250)), jpeg((10, 10, 10))]
    images[1] = images[1][: len(images[1]) // 2]
    Dataset.from_list([{"caption": "a", "jpg_0": images[0], "jpg_1": images[1], "label_0": 1.0}] * 4).to_parquet(
        tmp_path / "pics.parquet"
    )
    (tmp_path / "empty.jsonl").write_text("")
    return {
        "empty": tmp_path / "empty.jsonl",
        "no_chosen": write(tmp_path / "no_chosen.jsonl", [{"prompt": "a", "answer": "b", "rejected": "c"}]),
        "good": write(tmp_path / "good.jsonl", [pair] * 8),
        "pics": tmp_path / "pics.parquet",
        "out": tmp_path / "out",
    }


CASES = [
    ([*TRAIN, "data.path={empty}"], "data.path='{empty}' is empty: it has no rows; give a file with preference data."),
    ([*TRAIN, "data.path={no_chosen}"], "the closest format is pairs, which lacks 'chosen'; rename the columns"),
    ([*TRAIN, "data.path={good}", "objective.beta=-0.1"], "objective.beta=-0.1 must be positive."),
    ([*TRAIN, "data.path={good}", "train.lr=-1e-5"], "train.lr=-1e-05 must be positive."),
    ([*TRAIN, "data.path={good}", "train.lrr=1"], "Unknown config key train.lrr; did you mean 'lr'?"),
    ([*TRAIN, "data.path={good}", "objective.name=modpo"], "objective.name=modpo needs margin_rewards"),
    ([*IMAGES, "data.path={pics}"], "is not a readable image"),
]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[c[1][:30] for c in CASES])
def test_a_bad_input_is_one_sentence_and_exit_code_2(inputs, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main([*(a.format(**inputs) for a in argv), f"train.output_dir={inputs['out']}"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    last = err.splitlines()[-1]  # progress bars of the data loading may come before it
    assert last.startswith("mmdpo: error: ") and message.format(**inputs) in last
    assert "Traceback" not in err


def test_debug_shows_the_traceback(inputs):
    with pytest.raises(ValueError, match="must be positive"):
        main(["--debug", *TRAIN, f"data.path={inputs['good']}", "objective.beta=-0.1"])


def test_a_missing_config_file_is_one_sentence(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "no/such.yaml"])
    assert stop.value.code == 2 and "Config file 'no/such.yaml' does not exist" in capsys.readouterr().err
