"""The encode cache: prompts encoded once, resumable writing, shards split over processes, keys, reading back."""

import io
from functools import partial

import PIL.Image
import pytest
import torch
from datasets import Dataset

from mmdpo.adapters.latent_diffusion.adapter import collate_media
from mmdpo.adapters.latent_diffusion.cache import CachedBatches
from mmdpo.adapters.latent_diffusion.families.sdxl import SDXL
from mmdpo.adapters.text_to_image import ImageMedia, TextToImageAdapter
from mmdpo.config import load_config
from mmdpo.data.encode_cache import EncodeCache, Encoders, write_cache
from mmdpo.data.images import load_image_groups

PROMPTS = ["a cat", "a dog", "a cat", "a bird", "a dog", "a fox", "a cat"]


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (12, 10), (value, 255 - value, 7)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def groups():
    rows = [{"prompt": p, "chosen": png(10 * i), "rejected": png(10 * i + 5)} for i, p in enumerate(PROMPTS)]
    return load_image_groups(Dataset.from_list(rows))


class Counting(Encoders):
    """Encoders whose outputs are simple functions of their inputs, counting what they encode."""

    def __init__(self, fail_after: int | None = None):
        self.calls = {"prompts": 0, "images": 0}
        self.fail_after = fail_after

        def encode_prompts(prompts):
            self.calls["prompts"] += len(prompts)
            values = [[float(len(p)), float(ord(p[-1]) if p else 0)] for p in prompts]
            return {"encoder_hidden_states": torch.tensor(values)}

        def encode_images(pixels):
            if self.fail_after is not None and self.calls["images"] >= self.fail_after:
                raise KeyboardInterrupt
            self.calls["images"] += len(pixels)
            mean = pixels[:, :, ::4, ::4]
            return mean, mean.abs() + 1

        super().__init__(
            encode_prompts=encode_prompts,
            encode_media=encode_images,
            collate=partial(collate_media, ImageMedia(8, crop="random"), SDXL(), seed=3, epoch=0),
            sample=True,
            dtype=torch.float32,
        )


def read_all(directory, n):
    cache = EncodeCache(directory)
    rows = cache.group_set().dataset.to_list()[:n]
    return CachedBatches(cache, seed=0)(rows)


def test_each_prompt_is_encoded_once_and_rows_read_back(groups, tmp_path):
    encoders = Counting()
    write_cache(groups, tmp_path / "c", {"k": 1}, encoders, batch_size=2, shard_size=3, progress=False)
    assert encoders.calls == {"prompts": 4 + 1, "images": 2 * len(PROMPTS)}  # 4 unique prompts, plus the empty one
    cache = EncodeCache(tmp_path / "c")
    rows = cache.group_set().dataset.to_list()
    assert [r["prompt"] for r in rows] == PROMPTS and [r["row_index"] for r in rows] == list(range(len(PROMPTS)))
    batch = CachedBatches(cache, seed=0)([rows[6], rows[1]])  # rows from two shards, out of order
    pixels, conditions = encoders.collate(
        [{**groups.dataset[6], "row_index": 6}, {**groups.dataset[1], "row_index": 1}]
    )
    mean, std = encoders.encode_media(pixels.flatten(0, 1))
    torch.testing.assert_close(batch.latent_mean, mean.view(2, 2, *mean.shape[1:]))
    torch.testing.assert_close(batch.latent_std, std.view(2, 2, *std.shape[1:]))
    torch.testing.assert_close(batch.extra["time_ids"], conditions["time_ids"])
    torch.testing.assert_close(batch.embeddings["encoder_hidden_states"], torch.tensor([[5.0, 116], [5.0, 103]]))
    assert batch.prefs.ranks.tolist() == [[0, 1], [0, 1]]
    assert cache.empty_prompt()["encoder_hidden_states"].shape == (1, 2)


def test_a_killed_run_resumes_at_the_first_missing_shard(groups, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        write_cache(groups, tmp_path / "c", {}, Counting(fail_after=6), batch_size=1, shard_size=3, progress=False)
    assert not (tmp_path / "c" / "complete").exists()
    with pytest.raises(FileNotFoundError, match="rerun `mmdpo cache`"):
        EncodeCache(tmp_path / "c")
    resumed = Counting()
    write_cache(groups, tmp_path / "c", {}, resumed, batch_size=1, shard_size=3, progress=False)
    assert resumed.calls["images"] == 2 * (len(PROMPTS) - 3)  # the first shard (3 groups) was complete
    write_cache(groups, tmp_path / "whole", {}, Counting(), batch_size=1, shard_size=3, progress=False)
    for a, b in zip(vars(read_all(tmp_path / "c", 7)).values(), vars(read_all(tmp_path / "whole", 7)).values()):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b)


def test_two_processes_write_the_same_cache_as_one(groups, tmp_path):
    for rank in (1, 0):  # rank 0 finishes last and marks the cache complete
        write_cache(groups, tmp_path / "two", {}, Counting(), shard_size=2, rank=rank, world=2, progress=False)
    write_cache(groups, tmp_path / "one", {}, Counting(), shard_size=2, progress=False)
    two, one = read_all(tmp_path / "two", 7), read_all(tmp_path / "one", 7)
    torch.testing.assert_close(two.latent_mean, one.latent_mean)
    torch.testing.assert_close(two.embeddings["encoder_hidden_states"], one.embeddings["encoder_hidden_states"])


def test_the_key_separates_settings_that_change_the_encodings(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("")

    def path(*overrides):
        base = ["model.path=tiny:sd15", f"data.path={data}", f"train.output_dir={tmp_path}"]
        return TextToImageAdapter.cache_path(load_config(None, [*base, *overrides]), (str(data), "train"))

    before = path()
    assert before == path("objective.beta=3000", "model.lora.r=4", "train.lr=1e-2")  # training settings do not
    for changed in ("data.resolution=256", "data.flip=0.5", "model.latents=mean", "data.cache_dtype=float16"):
        assert path(changed) != before, changed
    data.write_text("{}\n")  # the data file changed
    assert path() != before
