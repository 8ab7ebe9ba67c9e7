"""logivote.training.packing: a step's rows in one token stream give the losses and gradients of the padded batch."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from logivote.data.prompt import labelled_batch  # noqa: E402
from logivote.training.packing import pack, row_losses, use_packed_attention  # noqa: E402

PAD = 0


def examples(lengths: list[int], seed: int = 0) -> list[dict[str, list[int]]]:
    """Rows of the given lengths whose last two tokens are labelled (an answer letter and the end of turn)."""
    rng = random.Random(seed)
    rows = []
    for n in lengths:
        ids = [rng.randrange(1, 64) for _ in range(n)]
        rows.append({"input_ids": ids, "attention_mask": [1] * n, "labels": [-100] * (n - 2) + ids[-2:]})
    return rows


@pytest.fixture(scope="module")
def model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
                         attn_implementation="sdpa")
    model = Qwen2ForCausalLM(config).to(torch.float64).train()
    use_packed_attention(model)  # the padded reference switches back to sdpa for its own forward
    return model


def test_pack_lays_rows_end_to_end_with_their_own_positions() -> None:
    rows = examples([5, 3, 4])
    batch = pack(rows, PAD, "cpu", bucket=8)
    assert batch.lengths == (5, 3, 4) and batch.real_tokens == 12 and batch.total_tokens == 16
    assert batch.input_ids[0, :12].tolist() == sum((r["input_ids"] for r in rows), [])
    assert batch.input_ids[0, 12:].tolist() == [PAD] * 4
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3]
    assert batch.token_adapter.tolist() == [0] * 5 + [1] * 3 + [2] * 4 + [-1] * 4  # adapters default to the rows
    assert pack(rows, PAD, "cpu", 8, adapters=[4, 0, 2]).token_adapter.tolist() == [4] * 5 + [0] * 3 + [2] * 4 + [-1] * 4
    assert batch.cu_seq_lens.tolist() == [0, 5, 8, 12, 16] and batch.seq_lengths == (5, 3, 4, 4)
    assert batch.label_at.tolist() == [2, 3, 5, 6, 9, 10]  # the token before each labelled one
    assert batch.label_row.tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.targets.tolist() == sum((r["input_ids"][-2:] for r in rows), [])
    assert pack(rows, PAD, "cpu").total_tokens == 12
    with pytest.raises(ValueError, match="first token"):
        pack([{"input_ids": [1, 2], "labels": [1, 2]}], PAD, "cpu")


def padded_losses(model: Qwen2ForCausalLM, rows: list[dict[str, list[int]]]) -> torch.Tensor:
    """The reference: today's right-padded batch with an attention mask (train.train_adapters' loss)."""
    ids, mask, row, col, targets = labelled_batch(rows, PAD, "cpu")
    model.set_attn_implementation("sdpa")
    try:
        hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    finally:
        model.set_attn_implementation("packed")
    token_loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[row, col]).float(), targets, reduction="none")
    counts = torch.bincount(row, minlength=len(rows)).clamp(min=1)
    return torch.zeros(len(rows), dtype=token_loss.dtype).index_add(0, row, token_loss) / counts


def packed_losses(model: Qwen2ForCausalLM, rows: list[dict[str, list[int]]], bucket: int) -> torch.Tensor:
    batch = pack(rows, PAD, "cpu", bucket)
    hidden = model.model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                         **batch.attention_kwargs()).last_hidden_state
    return row_losses(model.lm_head(hidden[0, batch.label_at]).double(), batch)


def gradients(model: Qwen2ForCausalLM, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bucket", [1, 32])
def test_packed_and_padded_give_the_same_losses_and_gradients(model: Qwen2ForCausalLM, bucket: int) -> None:
    rows = examples([17, 5, 30, 9], seed=bucket)
    reference = padded_losses(model, rows)
    packed = packed_losses(model, rows, bucket)
    assert torch.allclose(packed, reference, rtol=0, atol=1e-9), (packed, reference)
    want = gradients(model, padded_losses(model, rows).sum())
    got = gradients(model, packed_losses(model, rows, bucket).sum())
    assert want.keys() == got.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=0, atol=1e-9), name


def test_rows_do_not_see_each_other(model: Qwen2ForCausalLM) -> None:
    """Changing one row's tokens changes no other row's loss: attention stays within a row."""
    rows = examples([12, 8, 10])
    other = [dict(r) for r in rows]
    other[1] = {**rows[1], "input_ids": [(t % 63) + 1 for t in reversed(rows[1]["input_ids"])]}
    with torch.no_grad():
        a, b = packed_losses(model, rows, 16), packed_losses(model, other, 16)
    assert torch.equal(a[[0, 2]], b[[0, 2]]) and not torch.equal(a[1], b[1])


def test_a_plain_forward_is_one_causal_sequence_per_batch_row(model: Qwen2ForCausalLM) -> None:
    """Without packing arguments the packed attention is ordinary causal attention (checks after training)."""
    ids = torch.tensor([examples([9])[0]["input_ids"], examples([9], seed=1)[0]["input_ids"]])
    with torch.no_grad():
        packed = model(input_ids=ids).logits
        model.set_attn_implementation("sdpa")
        try:
            reference = model(input_ids=ids).logits
        finally:
            model.set_attn_implementation("packed")
    assert torch.allclose(packed, reference, rtol=0, atol=1e-12)
