import pytest

from mmdpo.config import ConfigError, load_config, resolved_reference


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "model:\n  path: tiny:qwen2\nobjective:\n  name: simpo\n  beta: 2.5\ntrain:\n  lr: 1.0e-6\n")
    config = load_config(path, ["objective.gamma_beta_ratio=0.55", "train.batch_size=4", "model.lora.r=8"])
    assert config.model.path == "tiny:qwen2"
    assert config.objective.name == "simpo"
    assert config.objective.hparams == {"beta": 2.5, "gamma_beta_ratio": 0.55}
    assert config.train.lr == 1e-6 and config.train.batch_size == 4
    assert config.model.lora.r == 8 and config.model.lora.alpha == 32
    assert resolved_reference(config) == "none"  # SimPO is reference-free


def test_reference_defaults_follow_lora():
    assert resolved_reference(load_config(None, [])) == "copy"
    assert resolved_reference(load_config(None, ["model.lora=true"])) == "adapter"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "train.lrr; did you mean 'lr'"),
        ("modle.path=x", "Unknown config key modle; did you mean 'model'"),
        ("objective.betta=0.1", "did you mean 'beta'"),
        ("objective.name=dpoo", "did you mean 'dpo'"),
        ("train.mixed_precision=fp8", "not one of"),
        ("train.batch_size=abc", "train.batch_size='abc' has the wrong type"),
        ("train.batch_size", "key=value"),
    ],
)
def test_bad_keys_and_values_name_the_fix(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("overrides", "both"),
    [
        (["model.reference=adapter"], ("model.reference=adapter", "model.lora")),
        (["model.reference=none"], ("model.reference=none", "objective.name=dpo")),
        (
            ["model.layout=shared", "model.attn_implementation=flash_attention_2"],
            ("model.layout", "attn_implementation"),
        ),
        (["objective.name=kto", "model.reference=precomputed"], ("precomputed", "kto")),
        (["objective.name=tdpo", "model.reference=precomputed"], ("model.reference=precomputed", "tdpo")),
        (["objective.name=sparsepo", "model.reference=none"], ("model.reference=none", "sparsepo")),
        (["objective.name=tgdpo"], ("objective.name=tgdpo", "model.guidance_path")),
        (["model.guidance_path=tiny:llama"], ("model.guidance_path", "objective.name=dpo")),
        (["objective.name=tdpo", "model.path=tiny:sd15"], ("objective.name=tdpo", "tiny:sd15")),
        (
            ["objective.name=sparsepo", "objective.mask=reference", "objective.independent=true"],
            ("objective.independent", "objective.mask"),
        ),
    ],
)
def test_incompatible_options_fail_naming_both(overrides, both):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    for name in both:
        assert name in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_pipelines_and_rewards_install_inside_the_package():
    import mmdpo.pipelines
    import mmdpo.rewards

    assert mmdpo.pipelines.__name__ == "mmdpo.pipelines" and mmdpo.rewards.__name__ == "mmdpo.rewards"


def test_yaml_booleans_read_as_the_words_they_were():
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.path=tiny:sdxl", "model.max_length=7"], "model.max_length applies to causal LMs and vision-language"),
        (["model.path=tiny:sd15", "model.layout=concat"], "model.layout applies to causal LMs and vision-language"),
        (["model.path=tiny:sd15", "model.attn_implementation=eager"], r"use sdpa \(the default\) or xformers"),
        (["model.path=tiny:sd15", "model.vae_batch_size=0"], "model.vae_batch_size=0 must be at least 1"),
        (["model.path=tiny:llama", "model.channels_last=true"], "model.channels_last applies to text-to-image"),
        (["model.path=tiny:llama", "train.samples.every=5"], "train.samples writes grids of generated samples"),
    ],
)
def test_fields_of_another_model_kind_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
