"""Model rewards on tiny random models: each score recomputed another way, batching and input-form invariance."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from mmdpo.rewards import Aesthetic, Audio, CLAPScore, CLIPScore, HPSv2, PickScore, VLMJudge

IMAGE_REWARDS = {cls.name: cls for cls in (PickScore, CLIPScore, HPSv2, Aesthetic, VLMJudge)}


@pytest.fixture(scope="module", params=list(IMAGE_REWARDS))
def image_reward(request):
    return IMAGE_REWARDS[request.param].tiny()


def test_scores_do_not_depend_on_the_batch_size(image_reward, prompts, images):
    image_reward.batch_size = 1
    one_by_one = image_reward(prompts, images)
    image_reward.batch_size = len(images)
    together = image_reward(prompts, images)
    assert one_by_one.dtype == torch.float32 and one_by_one.device.type == "cpu" and one_by_one.shape == (3,)
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)


def test_pil_and_tensor_images_score_the_same(image_reward, prompts, images):
    uint8 = [TF.pil_to_tensor(image) for image in images]
    expected = image_reward(prompts, images)
    assert torch.equal(image_reward(prompts, uint8), expected)
    assert torch.equal(image_reward(prompts, [t / 255 for t in uint8]), expected)
    batch = torch.stack([uint8[0]] * 2)  # [N, 3, H, W]
    torch.testing.assert_close(image_reward(prompts[:1] * 2, batch), expected[:1].repeat(2), atol=1e-5, rtol=1e-5)


def test_pickscore_is_clips_own_image_text_logit(prompts, images):
    reward = PickScore.tiny()
    inputs = reward.processor(text=prompts, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = reward.model(**inputs).logits_per_image  # logit_scale.exp() * cos, by CLIPModel.forward
    torch.testing.assert_close(reward(prompts, images), logits.diagonal())


@pytest.mark.parametrize("name", [*IMAGE_REWARDS, "clap"])
def test_rewards_run_in_bfloat16(name, prompts, images):
    reward = (IMAGE_REWARDS | {"clap": CLAPScore})[name].tiny()
    media = Audio([np.sin(np.arange(n) / 9) for n in (4000, 6000, 5000)], 16000) if name == "clap" else images
    full = reward(prompts, media)
    half = reward.to(dtype=torch.bfloat16)(prompts, media)
    assert reward.dtype == torch.bfloat16 and half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.15 * full.abs().max().item(), rtol=0)  # bfloat16: 3 digits


def _open_clip_cosines(reward, prompts, images):
    """Cosines from open_clip's own forward, which returns normalised image and text features."""
    pixels = torch.stack([reward.preprocess(image) for image in images])
    with torch.no_grad():
        image_features, text_features, _ = reward.model(pixels, reward.tokenizer(prompts))
    return (image_features @ text_features.T).diagonal()


@pytest.mark.parametrize("sign", [1, -1])
def test_clipscore_is_w_times_the_clamped_cosine(prompts, images, sign):
    reward = CLIPScore.tiny()
    with torch.no_grad():
        reward.model.text_projection.mul_(sign)  # flips every cosine: both sides of the clamp take part
    cosines = _open_clip_cosines(reward, prompts, images)
    torch.testing.assert_close(reward(prompts, images), 2.5 * cosines.clamp(min=0))
    torchmetrics_scale = CLIPScore(reward.model, reward.preprocess, reward.tokenizer, weight=100)
    torch.testing.assert_close(torchmetrics_scale(prompts, images), 100 * cosines.clamp(min=0))


def test_hpsv2_is_the_plain_cosine(prompts, images):
    reward = HPSv2.tiny()
    torch.testing.assert_close(reward(prompts, images), _open_clip_cosines(reward, prompts, images))


def test_aesthetic_is_the_linear_mlp_of_the_normalised_image_embedding(images):
    reward = Aesthetic.tiny()
    pixels = torch.stack([reward.preprocess(image) for image in images])
    with torch.no_grad():
        x = F.normalize(reward.visual(pixels), dim=-1)
        for layer in reward.head.layers:  # Linear layers only: dropout is off, there are no activations
            if isinstance(layer, torch.nn.Linear):
                x = x @ layer.weight.T + layer.bias
    scores = reward("ignored", images)
    torch.testing.assert_close(scores, x.squeeze(-1))
    assert torch.equal(reward(["other", "text", "entirely"], images), scores)


def test_vlm_judge_is_the_yes_share_of_yes_and_no_for_each_item_alone(prompts, images):
    reward = VLMJudge.tiny()
    yes, no = reward.answer_ids
    expected = []
    for prompt, image in zip(prompts, images):
        question = f'Does this figure show "{prompt}"? Please answer yes or no.'
        turn = [{"type": "image"}, {"type": "text", "text": question}]
        text = reward.processor.apply_chat_template([{"role": "user", "content": turn}], add_generation_prompt=True)
        inputs = reward.processor(images=[image], text=[text], return_tensors="pt")
        with torch.no_grad():
            logits = reward.model(**inputs).logits[0, -1]
        expected.append(torch.sigmoid(logits[yes] - logits[no]))
    torch.testing.assert_close(reward(prompts, images), torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_vlm_judge_checks_its_question_and_answers():
    model, processor = VLMJudge.tiny().model, VLMJudge.tiny().processor
    with pytest.raises(ValueError, match="must hold '{prompt}'"):
        VLMJudge(model, processor, question="Is this good?")
    with pytest.raises(ValueError, match="different first tokens"):
        VLMJudge(model, processor, answers=("Yes", "Yeah"))


@pytest.fixture(scope="module")
def clap():
    return CLAPScore.tiny(batch_size=1)


@pytest.fixture(scope="module")
def tones():
    """A 440 Hz tone, a chirp and noise at 48 kHz, of different lengths under the 1 s window."""
    t = np.arange(36000) / 48000
    rng = np.random.default_rng(0)
    return [np.sin(2 * np.pi * 440 * t[:30000]), np.sin(2 * np.pi * (200 + 800 * t) * t), rng.normal(0, 0.3, 24000)]


def test_clap_is_the_cosine_behind_clips_audio_logits(clap, tones):
    prompts = ["a pure tone", "a rising chirp that sweeps up", "hiss"]
    inputs = clap.processor(text=prompts, audio=tones, sampling_rate=48000, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = clap.model(**inputs)
    expected = out.logits_per_audio.diagonal() / clap.model.logit_scale_a.exp()
    scores = clap(prompts, Audio(tones, 48000))
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    clap.batch_size = 3
    torch.testing.assert_close(clap(prompts, Audio(tones, 48000)), scores, atol=1e-5, rtol=1e-5)
    clap.batch_size = 1


def test_clap_resamples_16_khz_audio_to_48_khz(clap):
    t16, t48 = np.arange(16000) / 16000, np.arange(48000) / 48000
    at_16k, at_48k = np.sin(2 * np.pi * 440 * t16), np.sin(2 * np.pi * 440 * t48)
    reference = clap("a tone", Audio([at_48k], 48000))
    torch.testing.assert_close(clap("a tone", Audio([at_16k], 16000)), reference, atol=1e-3, rtol=0)
    misread = clap("a tone", Audio([at_16k], 48000))  # a third as long and three times as high
    assert (misread - reference).abs().item() > 1e-2
