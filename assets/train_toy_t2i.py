"""Train the toy text-to-image model shipped in ``assets/toy-t2i`` (a Stable-Diffusion-style pipeline, ~2 M params).

    python assets/train_toy_t2i.py --out assets/toy-t2i            # 80 minutes on 2 busy CPU cores

The domain is :mod:`mmdpo.data.shapes`: 32 x 32 scenes of a coloured shape on a plain background, captioned by
shape and colour only. Three parts, all diffusers/transformers classes, so the result loads with
``StableDiffusionPipeline.from_pretrained``:

1. a CLIP text encoder with random weights (frozen, as a pretrained one would be) over a byte-level tokenizer;
2. an ``AutoencoderKL`` (32 px -> 4 x 8 x 8 latents) trained to reconstruct scenes, its ``scaling_factor`` set
   to 1 / std of the latents;
3. a ``UNet2DConditionModel`` trained as an epsilon-prediction DDPM on the latents of a fixed set of encoded scenes
   (posterior samples drawn per step) with 10% empty captions (for classifier-free guidance), with an EMA of its
   weights.

Weights are saved in float16 to keep the folder small. Seeds are fixed, so a rerun reproduces the model up to
floating-point nondeterminism.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from torchvision.transforms.v2 import functional as TF
from transformers import CLIPTextConfig, CLIPTextModel

from mmdpo.adapters.tiny import tiny_clip_tokenizer
from mmdpo.data.shapes import scene

MAX_TOKENS = 24


def scenes(rng: random.Random, n: int) -> tuple[list[str], torch.Tensor]:
    captions, images = zip(*(scene(rng) for _ in range(n)))
    pixels = torch.stack([TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True) for image in images])
    return list(captions), pixels * 2 - 1


def train_vae(steps: int, batch: int, rng: random.Random) -> AutoencoderKL:
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=32,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for step in range(steps):
        _, pixels = scenes(rng, batch)
        posterior = vae.encode(pixels).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, pixels) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"vae step {step}: reconstruction mse {F.mse_loss(recon, pixels).item():.5f}", flush=True)
    with torch.no_grad():
        latents = vae.encode(scenes(rng, 512)[1]).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_scenes(vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer, n: int, rng: random.Random):
    """A fixed training set: posterior means and stds of n scenes' latents (scaled) and their caption states."""
    means, stds, captions = [], [], []
    for start in range(0, n, 256):
        names, pixels = scenes(rng, min(256, n - start))
        posterior = vae.encode(pixels).latent_dist
        means.append(posterior.mean * vae.config.scaling_factor)
        stds.append(posterior.std * vae.config.scaling_factor)
        captions += names
    unique = sorted(set(captions)) + [""]
    ids = tokenizer(unique, padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    states = text_encoder(ids)[0]
    index = torch.tensor([unique.index(caption) for caption in captions])
    return torch.cat(means), torch.cat(stds), states, index


def train_unet(vae, text_encoder, tokenizer, steps: int, batch: int, rng: random.Random) -> UNet2DConditionModel:
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_encoder.config.hidden_size, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    means, stds, states, caption_index = encode_scenes(vae, text_encoder, tokenizer, 40_000, rng)
    empty = len(states) - 1
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    ema = EMAModel(unet.parameters(), decay=0.999)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=5e-4, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=5e-4, total_steps=steps, pct_start=0.05)
    start = time.time()
    for step in range(steps):
        rows = torch.randint(0, len(means), (batch,))
        latents = means[rows] + stds[rows] * torch.randn_like(means[rows])
        dropped = torch.rand(batch) < 0.1
        conditions = states[torch.where(dropped, empty, caption_index[rows])]
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,))
        prediction = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=conditions).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.step(unet.parameters())
        if step % 250 == 0 or step == steps - 1:
            print(f"unet step {step}: loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
    ema.copy_to(unet.parameters())
    return unet.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="assets/toy-t2i")
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=48)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = random.Random(0)

    tokenizer = tiny_clip_tokenizer(model_max_length=MAX_TOKENS)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=2,
            num_hidden_layers=2, max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
    ).eval()  # fmt: skip
    vae = train_vae(args.vae_steps, args.batch, rng)
    unet = train_unet(vae, text_encoder, tokenizer, args.unet_steps, args.batch, rng)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.to(torch.float16).save_pretrained(Path(args.out))
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
