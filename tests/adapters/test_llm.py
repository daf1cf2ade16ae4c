import pytest
import torch

from mmdpo.adapters.llm import CausalLMScorer, RowError, collate, load_causal_lm, to_loglik, tokenize_group
from mmdpo.adapters.logprobs import selected_logprobs
from mmdpo.adapters.tiny import tiny_causal_lm

ROWS = [
    {"prompt": "Hello there, how", "candidates": ["are you", "is it going today"], "ranks": [0, 1]},
    {"prompt": "Q", "candidates": ["a", "bbbbbbbbbbbbbbbbbbb"], "ranks": [1, 0]},
]


def brute_force(model, prompt_ids, completion_ids):
    """Per-token log-probs of a completion from one plain full-vocabulary forward."""
    ids = torch.tensor([prompt_ids + completion_ids])
    logp = model(ids).logits.float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
    return logp[len(prompt_ids) - 1 :]


def encode(rows, tokenizer, max_length=64):
    return [{**tokenize_group(r, tokenizer, max_length), "ranks": r["ranks"]} for r in rows]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("layout", ["shared", "concat"])
def test_per_token_logprobs_match_a_plain_forward(tokenizer, arch, attention, layout):
    torch.manual_seed(0)
    model = tiny_causal_lm(arch, tokenizer, attn_implementation=attention)
    rows = encode(ROWS, tokenizer)
    batch = collate(rows, pad_token_id=tokenizer.pad_token_id, layout=layout, attention=attention)
    values = CausalLMScorer(model, chunk_size=5)(**batch.model_inputs())["values"]
    for g, row in enumerate(rows):
        for k, cand in enumerate(row["candidate_ids"]):
            expected = brute_force(model, row["prompt_ids"], cand)
            torch.testing.assert_close(values[g, k, : len(cand)], expected, atol=1e-5, rtol=1e-5)
            assert batch.target_mask[g, k].sum() == len(cand)
            assert values[g, k, len(cand) :].abs().sum() == 0


def test_shared_layout_processes_the_prompt_once(tokenizer):
    rows = encode(ROWS, tokenizer)
    shared = collate(rows, pad_token_id=tokenizer.pad_token_id, layout="shared")
    concat = collate(rows, pad_token_id=tokenizer.pad_token_id, layout="concat")
    prompts = sum(len(r["prompt_ids"]) for r in rows)
    assert concat.num_tokens - shared.num_tokens == prompts  # K = 2: one prompt copy saved per group


def test_gradients_do_not_depend_on_layout_or_chunk_size(tokenizer):
    torch.manual_seed(0)
    model = tiny_causal_lm("llama", tokenizer)
    rows = encode(ROWS, tokenizer)
    grads = []
    for layout, chunk in [("shared", 3), ("concat", 1024)]:
        model.zero_grad()
        batch = collate(rows, pad_token_id=tokenizer.pad_token_id, layout=layout)
        values = CausalLMScorer(model, chunk_size=chunk)(**batch.model_inputs())["values"]
        (values.sum(-1) * torch.tensor([[1.0, -2.0], [0.5, 3.0]])).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_padding_from_other_groups_does_not_change_values(tokenizer):
    torch.manual_seed(0)
    model = tiny_causal_lm("llama", tokenizer)
    scorer = CausalLMScorer(model)
    rows = encode(ROWS, tokenizer)
    for layout in ("shared", "concat"):
        alone = scorer(**collate(rows[1:], pad_token_id=tokenizer.pad_token_id, layout=layout).model_inputs())["values"]
        padded = scorer(**collate(rows, pad_token_id=tokenizer.pad_token_id, layout=layout).model_inputs())["values"]
        width = alone.shape[-1]
        torch.testing.assert_close(padded[1, :, :width], alone[0], atol=1e-5, rtol=1e-5)


def test_selected_logprobs_equal_log_softmax_and_wpo_alignment():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden, targets = torch.randn(7, 8), torch.randint(0, 11, (7,))
    out = selected_logprobs(hidden, targets, head, chunk_size=3, aligned=True)
    logp, aligned = out["values"], out["wpo_logp"]
    full = head(hidden).log_softmax(-1)
    torch.testing.assert_close(logp, full.gather(-1, targets[:, None])[:, 0])
    log_sum_sq = torch.logsumexp(2 * full, dim=-1)
    torch.testing.assert_close(aligned, full.gather(-1, targets[:, None])[:, 0] - log_sum_sq)


def test_plain_text_gets_one_bos_and_one_eos(tokenizer):
    tok = tokenizer
    row = tokenize_group({"prompt": "hi", "candidates": ["yo" + tok.eos_token, "hey"]}, tok, 64)
    assert row["prompt_ids"] == tok("hi")["input_ids"]
    assert row["candidate_ids"][0].count(tok.eos_token_id) == 1  # an existing EOS is not doubled
    assert row["candidate_ids"][1][-1] == tok.eos_token_id
    assert tok.bos_token_id not in row["candidate_ids"][1]


def test_conversational_completion_is_the_assistant_turn(tokenizer):
    prompt = [{"role": "user", "content": "hi"}]
    row = tokenize_group({"prompt": prompt, "candidates": [[{"role": "assistant", "content": "hello"}]]}, tokenizer, 64)
    text = tokenizer.decode(row["candidate_ids"][0])
    assert text == "hello<|im_end|>\n"
    assert tokenizer.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")


def test_truncation_cuts_completions_and_refuses_overlong_prompts(tokenizer):
    row = tokenize_group({"prompt": "abcd", "candidates": ["efghijkl", "x"]}, tokenizer, 6)
    assert len(row["prompt_ids"]) + len(row["candidate_ids"][0]) == 6
    assert row["candidate_ids"][1] == tokenizer("x", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with pytest.raises(RowError, match="model.max_length=4"):
        tokenize_group({"prompt": "abcd", "candidates": ["e", "f"]}, tokenizer, 4)
    with pytest.raises(RowError, match="empty"):
        tokenize_group({"prompt": [{"role": "user", "content": "a"}], "candidates": [[]]}, tokenizer, 64)


def test_mismatched_candidate_is_the_previous_groups_first(tokenizer):
    torch.manual_seed(0)
    model = tiny_causal_lm("llama", tokenizer)
    rows = encode(ROWS, tokenizer)
    batch = collate(rows, pad_token_id=tokenizer.pad_token_id, mismatched=True)
    loglik = to_loglik(CausalLMScorer(model)(**batch.model_inputs()), batch)
    assert loglik.values.shape[1] == 2
    expected = brute_force(model, rows[0]["prompt_ids"], rows[1]["candidate_ids"][0]).sum()
    torch.testing.assert_close(loglik.extras["mismatched"][0, 0], expected, atol=1e-5, rtol=1e-5)


def test_loads_a_saved_checkpoint_from_a_local_directory(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = tiny_causal_lm("qwen2", tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_causal_lm(str(tmp_path))
    ids = torch.tensor([tokenizer("hello")["input_ids"]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert loaded_tok("hello")["input_ids"] == tokenizer("hello")["input_ids"]
    with pytest.raises(FileNotFoundError, match="model.path"):
        load_causal_lm(str(tmp_path / "missing"))
