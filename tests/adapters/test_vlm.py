"""The vision-language adapter against a plain TRL-like forward that gives every answer its own copy of the images."""

import io
import math

import pytest
import torch
from PIL import Image

from mmdpo.adapters.llm import RowError
from mmdpo.adapters.tiny_vlm import TINY_VLMS, tiny_vlm
from mmdpo.adapters.vlm import VLMAdapter, VLMModelSection, decode_images, load_vlm, vision_parameters
from mmdpo.objectives import get_objective

pytestmark = pytest.mark.usefixtures("one_thread")


def image(colour, size=(56, 56)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


ROWS = [  # images of different sizes give Qwen2-VL different numbers of image tokens
    {"prompt": "What is here?", "candidates": ["A red thing.", "Blue"], "ranks": [0, 1], "images": [image("red")]},
    {
        "prompt": "Colour?",
        "candidates": ["green", "It is a large purple square, I think."],
        "ranks": [1, 0],
        "images": [image("green", (40, 30)), image("blue", (28, 28))],
    },
]


def encode(adapter, rows=ROWS):
    return [{**adapter.tokenize(row), "ranks": row["ranks"], "images": row["images"]} for row in rows]


def duplicated(adapter, row):
    """Per-token log-probs of each answer from the model's own forward, the images processed again for every answer
    (what TRL's collator does by repeating the images for the chosen and the rejected half)."""
    model, out = adapter.scorer.causal_lm, []
    for answer in row["candidate_ids"]:
        inputs = adapter._process([row["prompt_text"]], [decode_images(row)], row["prompt_special"])
        inputs.pop("labels", None)
        prompt_length = inputs.pop("attention_mask").shape[1]
        inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([answer])], 1)
        for name, value in [("mm_token_type_ids", 0), ("token_type_ids", 1)]:  # TRL: answers are text / suffix
            if name in inputs:
                inputs[name] = torch.cat([inputs[name], torch.full((1, len(answer)), value)], 1)
        logp = model(**inputs).logits.float().log_softmax(-1)[0, prompt_length - 1 : -1]
        out.append(logp.gather(-1, torch.tensor(answer)[:, None])[:, 0])
    return out


def scores(adapter, rows):
    batch = adapter.collate(rows)
    return batch, adapter.scorer(**adapter.inputs(batch))["values"]


@pytest.mark.parametrize("layout", ["shared", "concat"])
@pytest.mark.parametrize(("arch", "attention"), [(arch, "sdpa") for arch in TINY_VLMS] + [("paligemma", "eager")])
def test_images_encoded_once_per_group_give_the_duplicated_numbers(arch, attention, layout):
    torch.manual_seed(0)
    adapter = VLMAdapter(*tiny_vlm(arch, attn_implementation=attention), reference="none", layout=layout)
    rows = encode(adapter)
    with torch.no_grad():
        batch, values = scores(adapter, rows)
        for g, row in enumerate(rows):
            for k, expected in enumerate(duplicated(adapter, row)):
                torch.testing.assert_close(values[g, k, : len(expected)], expected, atol=1e-5, rtol=1e-5)
    assert batch.input_ids.shape[0] == (2 if layout == "shared" else 4)  # K = 2 rows per group only with concat


def test_gradients_through_a_trained_vision_tower_match_the_duplicated_forward():
    torch.manual_seed(0)
    adapter = VLMAdapter(*tiny_vlm("qwen2_vl"), reference="none", layout="concat", train_vision=True)
    model, rows = adapter.scorer.causal_lm, encode(adapter)
    weights = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    _, values = scores(adapter, rows)
    (values.sum(-1) * weights).sum().backward()
    ours = [p.grad.clone() for p in vision_parameters(model)]
    model.zero_grad()
    sum(
        weights[g, k] * v.sum() for g, row in enumerate(rows) for k, v in enumerate(duplicated(adapter, row))
    ).backward()
    for mine, theirs in zip(ours, (p.grad for p in vision_parameters(model))):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("train_vision", "images"), [(False, 3), (True, 6)])
def test_the_vision_tower_sees_each_image_once_per_pass(train_vision, images):
    """Two groups with three images in all: a frozen tower encodes them once for reference and policy together,
    a trained one once per pass; TRL's duplicated path would encode each twice per pass (12 in all)."""
    torch.manual_seed(0)
    adapter = VLMAdapter(*tiny_vlm("llava"), reference="copy", train_vision=train_vision)
    seen = []
    for scorer in (adapter.scorer, adapter.reference_scorer):
        tower = scorer.causal_lm.base_model.vision_tower
        tower.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    batch = adapter.collate(encode(adapter))
    inputs = adapter.inputs(batch)
    reference = adapter.reference(batch, inputs)
    reference_values = reference.loglik.values
    policy_values = adapter.policy_loglik(adapter.scorer, batch, inputs, reference).values
    assert sum(seen) == images
    torch.testing.assert_close(policy_values, reference_values)


def test_policy_equal_to_reference_gives_ln2_and_half_accuracy():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model, processor = tiny_vlm("qwen2_vl")
    model = get_peft_model(model, LoraConfig(r=4, target_modules=VLMAdapter.lora_targets(model, VLMModelSection())))
    adapter = VLMAdapter(model, processor, reference="adapter")
    batch = adapter.collate(encode(adapter))
    inputs = adapter.inputs(batch)
    reference = adapter.reference(batch, inputs)
    policy = adapter.policy_loglik(adapter.scorer, batch, inputs, reference)
    out = get_objective("dpo", beta=0.1)(policy, reference.loglik, batch.prefs)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 0.5


def test_prompts_are_never_cut_inside_image_tokens():
    adapter = VLMAdapter(*tiny_vlm("llava"), reference="none", max_length=64)
    row = {**ROWS[0], "candidates": ["a" * 80, "b"]}
    full = adapter.tokenize(row)
    prompt_length = len(full["prompt_ids"])
    assert full["prompt_ids"].count(adapter.image_token_id) == 4
    assert [len(ids) for ids in full["candidate_ids"]] == [64 - prompt_length, 3]  # "b" + <|im_end|> + "\n"
    adapter.max_length = prompt_length - 1
    with pytest.raises(RowError, match=r"model.max_length=\d+.*4 image tokens are never cut"):
        adapter.tokenize(row)


def test_conversations_place_their_images_and_plain_prompts_get_them_first():
    adapter = VLMAdapter(*tiny_vlm("llava"), reference="none")
    parts = [
        {"type": "text", "text": "Compare "},
        {"type": "image"},
        {"type": "text", "text": " and "},
        {"type": "image"},
    ]
    answers = [[{"role": "assistant", "content": "Same."}], [{"role": "assistant", "content": "No."}]]
    row = {"prompt": [{"role": "user", "content": parts}], "candidates": answers, "images": ROWS[1]["images"]}
    text = adapter.tokenizer.decode(adapter.tokenize(row)["prompt_ids"])
    assert text == f"<|im_start|>user\nCompare {'<image>' * 4} and {'<image>' * 4}<|im_end|>\n<|im_start|>assistant\n"
    trl = {**row, "prompt": [{"role": "user", "content": "Colour?"}]}  # TRL puts the images before the text
    assert adapter.tokenize(trl)["prompt_ids"] == adapter.tokenize(ROWS[1])["prompt_ids"]
    plain = adapter.tokenize(ROWS[1])
    assert adapter.tokenizer.decode(plain["prompt_ids"]).startswith(f"<|im_start|>user\n{'<image>' * 8}Colour?")
    assert adapter.tokenizer.decode(plain["candidate_ids"][0]) == "green<|im_end|>\n"


def test_a_corrupt_image_is_a_bad_row():
    adapter = VLMAdapter(*tiny_vlm("llava"), reference="none")
    with pytest.raises(RowError, match="not a readable image") as err:
        adapter.tokenize({**ROWS[0], "images": [{"bytes": b"not a png", "path": None}]})
    assert err.value.reason == "bad_image"


def test_lora_adapts_the_language_model_unless_the_vision_tower_trains():
    from peft import LoraConfig, get_peft_model

    for train_vision in (False, True):
        model, _ = tiny_vlm("llava")
        targets = VLMAdapter.lora_targets(model, VLMModelSection(train_vision=train_vision))
        names = [n for n, p in get_peft_model(model, LoraConfig(r=4, target_modules=targets)).named_parameters()]
        lora = [n for n in names if "lora_" in n]
        assert lora and all("language_model" in n for n in lora) != train_vision
        assert not any("lm_head" in n for n in lora)
    model, processor = tiny_vlm("llava")
    adapter = VLMAdapter(model, processor, reference="none")
    assert not any(p.requires_grad for p in vision_parameters(model)) and adapter.shares_features
    assert all(p.requires_grad for p in model.get_decoder().parameters())


def test_loads_a_saved_checkpoint_and_saves_what_peft_and_transformers_load(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmdpo.config import LoraSection

    torch.manual_seed(0)
    base, processor = tiny_vlm("qwen2_vl")
    base.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    loaded, loaded_processor = load_vlm(str(tmp_path / "base"))
    inputs = processor(text=["<|image_pad|>hi"], images=[decode_images(ROWS[0])], return_tensors="pt")
    assert (
        loaded_processor(text=["<|image_pad|>hi"], images=[decode_images(ROWS[0])])["input_ids"]
        == inputs["input_ids"].tolist()
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, base(**inputs).logits)

    section = VLMModelSection(path=str(tmp_path / "base"), lora=LoraSection(r=4, alpha=8))
    adapter = VLMAdapter.from_section(section, "adapter")
    with torch.no_grad():
        for name, param in adapter.scorer.model.named_parameters():
            if "lora_B" in name:
                param.normal_()
        _, trained = scores(adapter, encode(adapter))
    adapter.save(adapter.scorer, tmp_path / "lora")
    tuned = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tmp_path / "base"), tmp_path / "lora")
    reloaded = VLMAdapter(tuned, AutoProcessor.from_pretrained(tmp_path / "lora"), reference="none")
    with torch.no_grad():
        torch.testing.assert_close(scores(reloaded, encode(reloaded))[1], trained)

    full = VLMAdapter(*tiny_vlm("llava"), reference="none")
    full.save(full.scorer, tmp_path / "full")
    assert type(AutoModelForImageTextToText.from_pretrained(tmp_path / "full")) is type(full.scorer.model)
    assert AutoProcessor.from_pretrained(tmp_path / "full").image_token == "<image>"
    with pytest.raises(FileNotFoundError, match="model.path"):
        load_vlm(str(tmp_path / "missing"))


def test_precomputed_values_are_keyed_by_image_content(tmp_path):
    from datasets import Dataset

    adapter = VLMAdapter(*tiny_vlm("llava"), reference="none")
    path = tmp_path / "a.png"
    path.write_bytes(image("red")["bytes"])
    dataset = Dataset.from_dict({"images": [[{"bytes": None, "path": str(path)}]]})
    key = adapter.cache_key(dataset)
    path.write_bytes(image("blue")["bytes"])
    assert adapter.cache_key(dataset)["images"] != key["images"]
    assert adapter.cache_key(dataset).keys() == {"max_length", "processor", "images"}
