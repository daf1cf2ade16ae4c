"""What the causal-LM adapter attaches for token-level objectives, against plain full-vocabulary computations."""

import pytest
import torch

from mmdpo.adapters.llm import LLMAdapter, collate, to_loglik, tokenize_group
from mmdpo.adapters.tiny import tiny_causal_lm

ROWS = [
    {"prompt": "Hello there, how", "candidates": ["are you", "is it going today"], "ranks": [0, 1]},
    {"prompt": "Q", "candidates": ["a", "bbbbbbbbbbbbbbbbbbb"], "ranks": [1, 0]},
]


def encode(adapter, rows=ROWS):
    return [{**adapter.tokenize(row), "ranks": row["ranks"]} for row in rows]


def full_logprobs(model, prompt_ids, completion_ids):
    """``[n, V]`` log-distributions at the positions that predict the completion, from one plain forward."""
    ids = torch.tensor([prompt_ids + completion_ids])
    return model(ids).logits.float().log_softmax(-1)[0, len(prompt_ids) - 1 : -1]


def perturb(params, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g))


def score(adapter, rows, layout="shared"):
    batch = collate(rows, pad_token_id=adapter.tokenizer.pad_token_id, layout=layout)
    inputs = adapter.inputs(batch)
    reference = adapter.reference(batch, inputs)
    policy = adapter.policy_loglik(adapter.scorer, batch, inputs, reference)
    return batch, reference.for_policy, reference.loglik, policy


def copy_adapter(tokenizer, extras, chunk_size=1024):
    torch.manual_seed(0)
    adapter = LLMAdapter(tiny_causal_lm("llama", tokenizer), tokenizer, extras=extras, chunk_size=chunk_size)
    perturb(adapter.scorer.model.parameters())  # the policy moves away from its frozen copy
    return adapter


@pytest.mark.parametrize(("layout", "chunk_size"), [("shared", 3), ("concat", 1024)])
def test_token_kl_and_its_gradient_match_full_distributions(tokenizer, layout, chunk_size):
    adapter = copy_adapter(tokenizer, {"token_kl"}, chunk_size)
    policy_model, reference_model = adapter.scorer.model, adapter.reference_scorer.model
    rows = encode(adapter)
    _, _, _, policy = score(adapter, rows, layout)
    weights = torch.randn(policy.values.shape, generator=torch.Generator().manual_seed(2))
    (policy.extras["token_kl"] * weights).sum().backward()
    ours = [p.grad.clone() for p in policy_model.parameters()]

    policy_model.zero_grad()
    expected_total = 0
    for g, row in enumerate(rows):
        for k, cand in enumerate(row["candidate_ids"]):
            logp = full_logprobs(policy_model, row["prompt_ids"], cand)
            with torch.no_grad():
                ref = full_logprobs(reference_model, row["prompt_ids"], cand)
            kl = (ref.exp() * (ref - logp)).sum(-1)
            torch.testing.assert_close(policy.extras["token_kl"][g, k, : len(cand)], kl, atol=1e-5, rtol=1e-4)
            assert policy.extras["token_kl"][g, k, len(cand) :].abs().sum() == 0
            expected_total = expected_total + (kl * weights[g, k, : len(cand)]).sum()
    expected_total.backward()
    for mine, theirs in zip(ours, (p.grad for p in policy_model.parameters())):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_token_kl_is_exactly_zero_before_training(tokenizer):
    torch.manual_seed(0)
    adapter = LLMAdapter(tiny_causal_lm("llama", tokenizer), tokenizer, extras={"token_kl"})
    _, _, reference, policy = score(adapter, encode(adapter))
    assert policy.extras["token_kl"].abs().max() == 0
    assert torch.equal(policy.values, reference.values)


def test_the_reference_hands_its_states_to_the_policy_as_values_and_leaves_the_inputs_alone(tokenizer):
    torch.manual_seed(0)
    adapter = LLMAdapter(tiny_causal_lm("llama", tokenizer), tokenizer, extras={"token_kl"})
    batch = collate(encode(adapter), pad_token_id=tokenizer.pad_token_id)
    inputs = adapter.inputs(batch)
    before = dict(inputs)
    reference = adapter.reference(batch, inputs)
    assert inputs.keys() == before.keys() and all(inputs[k] is before[k] for k in inputs)
    assert set(reference.for_policy) == {"reference_hidden", "reference_head"}
    without = adapter.policy_loglik(adapter.scorer, batch, inputs, type(reference)(reference.loglik))
    assert "token_kl" not in without.extras  # nothing reached the policy pass but what was handed over


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj", "lm_head"]])
def test_adapter_reference_is_the_base_model_with_its_own_head(tokenizer, targets):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny_causal_lm("llama", tokenizer), LoraConfig(r=4, target_modules=targets))
    perturb([p for n, p in model.named_parameters() if "lora_B" in n], scale=0.1)
    adapter = LLMAdapter(model, tokenizer, reference="adapter", extras={"token_kl"})
    rows = encode(adapter)
    _, _, reference, policy = score(adapter, rows)
    for g, row in enumerate(rows):
        for k, cand in enumerate(row["candidate_ids"]):
            with torch.no_grad():
                logp = full_logprobs(model, row["prompt_ids"], cand)
                with model.disable_adapter():
                    ref = full_logprobs(model, row["prompt_ids"], cand)
            kl = (ref.exp() * (ref - logp)).sum(-1)
            torch.testing.assert_close(policy.extras["token_kl"][g, k, : len(cand)], kl, atol=1e-5, rtol=1e-4)
            picked = ref.gather(-1, torch.tensor(cand)[:, None])[:, 0]
            torch.testing.assert_close(reference.values[g, k, : len(cand)], picked, atol=1e-5, rtol=1e-4)


def test_plain_dpo_asks_for_nothing_and_gets_nothing(tokenizer):
    torch.manual_seed(0)
    adapter = LLMAdapter(tiny_causal_lm("llama", tokenizer), tokenizer)
    _, for_policy, reference, policy = score(adapter, encode(adapter))
    assert for_policy == {}  # the reference pass left nothing for the policy pass
    assert policy.extras == {} and reference.extras == {}
    assert adapter.reference_capture == () and adapter.scorer.mask_net is None


def test_layer_states_are_every_decoder_layer_at_the_scored_positions(tokenizer):
    torch.manual_seed(0)
    adapter = LLMAdapter(tiny_causal_lm("llama", tokenizer), tokenizer, extras={"token_kl", "layer_means"})
    batch = collate(encode(adapter), pad_token_id=tokenizer.pad_token_id)
    decoder = adapter.scorer.model.model
    with torch.no_grad():
        layers = adapter.scorer(**batch.model_inputs(), capture=("layers",))["layers"]
        means = adapter.scorer(**batch.model_inputs(), capture=("layer_means",))["layer_means"]
        inputs = {k: v for k, v in batch.model_inputs().items() if k in ("input_ids", "attention_mask", "position_ids")}
        states = decoder(**inputs, output_hidden_states=True).hidden_states  # embeddings, layer 1, ..., final norm
    pick = lambda h: h.reshape(-1, h.shape[-1])[batch.gather_index]  # noqa: E731
    assert layers.shape == (len(batch.gather_index), 2, 64)
    torch.testing.assert_close(layers[:, 0], pick(states[1]))
    torch.testing.assert_close(decoder.norm(layers[:, 1]), pick(states[2]))
    torch.testing.assert_close(means[batch.target_mask], layers.mean(-1))
    reference = adapter.reference(batch, batch.model_inputs()).loglik
    assert reference.extras["layer_means"].shape == (*batch.target_mask.shape, 2)


@pytest.mark.parametrize(("extras", "names"), [({"mask"}, ["mask"]), ({"mask_u", "mask_d"}, ["mask_d", "mask_u"])])
def test_learned_masks_train_with_the_policy(tokenizer, extras, names):
    adapter = copy_adapter(tokenizer, {"token_kl", *extras})
    batch, for_policy, _, policy = score(adapter, encode(adapter))
    assert for_policy["reference_layers"].shape == (len(batch.gather_index), 2, 64)
    assert sorted(set(policy.extras) - {"token_kl"}) == names
    for name in names:
        mask = policy.extras[name]
        assert mask.shape == batch.target_mask.shape and (mask >= 0).all()
        assert mask[~batch.target_mask].abs().sum() == 0
    sum(policy.extras[name].sum() for name in names).backward()
    net = adapter.scorer.mask_net
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    trained = {id(p) for p in adapter.scorer.parameters()}
    assert all(id(p) in trained for p in net.parameters())  # the trainer optimises the scorer's parameters


def test_guidance_log_probs_come_from_the_guidance_model(tokenizer):
    torch.manual_seed(0)
    policy_model, guidance = tiny_causal_lm("llama", tokenizer), tiny_causal_lm("llama", tokenizer)
    adapter = LLMAdapter(policy_model, tokenizer, extras={"guidance"}, guidance=guidance)
    rows = encode(adapter)
    _, _, reference, _ = score(adapter, rows)
    assert adapter.guidance_scorer in adapter.frozen_modules
    assert not any(p.requires_grad for p in guidance.parameters())
    for g, row in enumerate(rows):
        for k, cand in enumerate(row["candidate_ids"]):
            with torch.no_grad():
                expected = full_logprobs(guidance, row["prompt_ids"], cand).gather(-1, torch.tensor(cand)[:, None])
            torch.testing.assert_close(reference.extras["guidance"][g, k, : len(cand)], expected[:, 0])


@pytest.mark.parametrize("reference", ["precomputed", "none"])
def test_reference_strategies_without_distributions_are_refused(tokenizer, reference):
    with pytest.raises(ValueError, match=f"model.reference={reference} cannot give .* token_kl"):
        LLMAdapter(tiny_causal_lm("llama", tokenizer), tokenizer, reference=reference, extras={"token_kl"})


# --- step data --------------------------------------------------------------------------------------

STEP_ROW = {
    "prompt": "Q: 2+3*4?",
    "prefix": " 3*4=12.",
    "candidates": [" 2+12=14. So 14.", " 2+12=15. So 15."],
    "steps": [[" 2+12=14.", " So 14."], [" 2+12=15.", " So 15."]],
    "ranks": [0, 1],
}


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_steps_continue_the_prompt_after_the_shared_prefix_without_eos(tokenizer):
    row = tokenize_group(STEP_ROW, tokenizer, 64)
    assert row["prompt_ids"] == tokenizer("Q: 2+3*4?")["input_ids"] + ids(tokenizer, " 3*4=12.")
    first, second = ids(tokenizer, " 2+12=14."), ids(tokenizer, " So 14.")
    assert row["candidate_ids"][0] == first + second  # no EOS: a step need not end the response
    assert row["step_ids"][0] == [0] * len(first) + [1] * len(second)
    cut = tokenize_group(STEP_ROW, tokenizer, len(row["prompt_ids"]) + 3)
    assert cut["step_ids"] == [[0, 0, 0], [0, 0, 0]] and all(len(c) == 3 for c in cut["candidate_ids"])
    assert tokenize_group({**STEP_ROW, "steps": None}, tokenizer, 64)["step_ids"] is None


def test_steps_continue_the_assistant_turn_of_a_conversation(tokenizer):
    row = tokenize_group({**STEP_ROW, "prompt": [{"role": "user", "content": "2+3*4?"}]}, tokenizer, 64)
    assert tokenizer.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n 3*4=12.")
    assert tokenizer.eos_token_id not in row["candidate_ids"][0]


def test_step_index_travels_with_the_batch(tokenizer):
    rows = [{**tokenize_group(STEP_ROW, tokenizer, 64), "ranks": [0, 1]}] * 2
    batch = collate(rows, pad_token_id=tokenizer.pad_token_id)
    first = len(ids(tokenizer, " 2+12=14."))
    assert batch.step_index[0, 0, :first].eq(0).all() and batch.step_index[0, 0, first:].eq(1).all()
    loglik = to_loglik({"values": torch.zeros(batch.target_mask.shape)}, batch)
    assert torch.equal(loglik.extras["step_index"], batch.step_index)
    kto = collate(rows, pad_token_id=tokenizer.pad_token_id, mismatched=True)
    assert kto.step_index.shape[1] == 3 and torch.equal(kto.step_index[1, 2], kto.step_index[0, 0])


def test_a_guidance_model_with_another_vocabulary_is_refused(tokenizer, tmp_path):
    from mmdpo.adapters.llm import TokenModelSection
    from mmdpo.adapters.tiny import tiny_tokenizer

    other = tiny_tokenizer()
    other.add_tokens(["<step>"])
    tiny_causal_lm("llama", other).save_pretrained(tmp_path)
    other.save_pretrained(tmp_path)
    section = TokenModelSection(path="tiny:llama", guidance_path=str(tmp_path))
    with pytest.raises(ValueError, match="has another vocabulary than model.path='tiny:llama'"):
        LLMAdapter.from_section(section, "copy", extras=frozenset({"guidance"}))
    assert LLMAdapter.from_section(TokenModelSection(guidance_path="tiny:llama"), "copy", frozenset({"guidance"}))
