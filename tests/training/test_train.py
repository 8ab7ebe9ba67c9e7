from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from logivote.base.tiny_model import TinyShape, build_from_questions  # noqa: E402
from logivote.data.bagging import write_subset  # noqa: E402
from logivote.data.flatten import Source, flatten, read_questions  # noqa: E402
from logivote.data.prompt import encode_example  # noqa: E402
from logivote.training.loop import train_adapter, train_adapters  # noqa: E402
from logivote.training.settings import TrainSettings, init_seeds  # noqa: E402

from ..conftest import REPO  # noqa: E402

SETTINGS = TrainSettings(lora_r=4, lora_alpha=8, lora_dropout=0.1, learning_rate=1e-3, epochs=2, save_steps=10, logging_steps=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    data = REPO / "resources" / "data"
    for name, n in (("sample_train", 40), ("sample_test", 12)):  # the first puzzles: 120 and 36 questions
        lines = (data / f"{name}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (root / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
    flatten([Source("t", str(root / "sample_train.jsonl"), "train"), Source("s", str(root / "sample_test.jsonl"), "test")],
            root / "train.jsonl", root / "test.jsonl")
    build_from_questions([root / "train.jsonl", root / "test.jsonl"], root / "base", TinyShape())
    write_subset(train_path=root / "train.jsonl", k=0, base_seed=7, fraction=0.25, subset_out=root / "subset.jsonl",
                 oob_out=root / "subset.oob.txt")  # 30 questions
    return {"root": root, "base": root / "base", "subset": root / "subset.jsonl"}


def test_tiny_model_is_deterministic(tiny: dict[str, Path], tmp_path: Path) -> None:
    build_from_questions([tiny["root"] / "train.jsonl", tiny["root"] / "test.jsonl"], tmp_path / "again", TinyShape())
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny["base"] / name).read_bytes()
    config = (tiny["base"] / "config.json").read_text()
    assert '"head_dim": 64' in config or '"hidden_size": 128' in config


def test_loss_covers_only_the_answer_tokens(tiny: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    question = read_questions(tiny["subset"])[0]
    example = encode_example(tokenizer, question, 1800)
    assert example is not None
    answer_ids = [t for t in example["labels"] if t != -100]
    assert tokenizer.decode(answer_ids) == question["answer"] + "<|im_end|>"
    assert example["labels"][-len(answer_ids):] == example["input_ids"][-len(answer_ids):]
    assert encode_example(tokenizer, question, 20) is None


def test_adapter_reloads_with_peft_and_gives_the_same_logits(tiny: dict[str, Path], tmp_path: Path) -> None:
    lora = train_adapter(tiny["base"], tiny["subset"], tmp_path / "adapter", tmp_path / "ckpt", SETTINGS)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    assert not (tmp_path / "ckpt").exists()
    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    example = encode_example(tokenizer, read_questions(tiny["subset"])[0], 1800)
    ids = torch.tensor([example["input_ids"]])
    lora.model.eval()
    with torch.no_grad(), lora.adapter(0):
        before = lora.model(input_ids=ids).logits
    with torch.no_grad():
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny["base"]), tmp_path / "adapter").eval()
        after = reloaded(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny["base"]).eval()(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert not torch.allclose(base, before, atol=1e-3)  # the adapter really changes the model


# Dropout masks are the one thing that depends on who shares a step: equivalence is checked without them.
# In float64: float32 rounding differs with the batch's shape (padding width changes GEMM blocking, about
# 1e-6 in a gradient; test_rows_of_a_batch_get_their_own_gradients), and AdamW turns that into larger steps
# for the few weights whose gradient is itself rounding noise (measured: 1 of 14 336 weights off by 5.5e-5
# after 60 steps in float32). In float64 the same training agrees to far below 1e-5.
EXACT = replace(SETTINGS, lora_dropout=0.0, dtype="float64")


def subsets(tiny: dict[str, Path], fractions: dict[int, float]) -> dict[int, Path]:
    out = {}
    for k, fraction in fractions.items():
        out[k] = tiny["root"] / f"bag{k}-{fraction}.jsonl"
        write_subset(train_path=tiny["root"] / "train.jsonl", k=k, base_seed=100 + k, fraction=fraction, subset_out=out[k],
                     oob_out=tiny["root"] / f"bag{k}-{fraction}.oob.txt")
    return out


def assert_same_adapters(a: Path, b: Path, atol: float) -> None:
    ref, got = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert ref.keys() == got.keys() and len(ref) == 2 * 2 * 7
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=atol, msg=name)
    assert any(float(t.abs().sum()) > 0 for n, t in ref.items() if "lora_B" in n)  # trained, not the zero init


@pytest.mark.parametrize("lora_init", ["shared", "per_adapter"])
def test_three_adapters_in_one_job_match_three_jobs_of_one(tiny: dict[str, Path], tmp_path: Path, lora_init: str) -> None:
    settings = replace(EXACT, lora_init=lora_init)
    bags = subsets(tiny, {0: 0.25, 1: 0.25, 2: 0.25})
    train_adapters(tiny["base"], bags, {k: tmp_path / "k3" / str(k) for k in bags}, tmp_path / "ckpt3", settings)
    for k, bag in bags.items():
        train_adapters(tiny["base"], {k: bag}, {k: tmp_path / "k1" / str(k)}, tmp_path / f"ckpt1-{k}", settings)
        assert_same_adapters(tmp_path / "k1" / str(k), tmp_path / "k3" / str(k), atol=1e-9)
    # and the adapters differ from each other: each row met only its own adapter
    a, b = (load_file(tmp_path / "k3" / k / "adapter_model.safetensors") for k in "01")
    assert any(not torch.allclose(a[n], b[n]) for n in a if "lora_B" in n)


def test_unequal_streams_drop_out_when_they_end(tiny: dict[str, Path], tmp_path: Path) -> None:
    bags = subsets(tiny, {3: 0.25, 4: 0.1})  # 30 and 12 questions: adapter 4 sits out the last 36 of 60 steps
    seen: list[set[int]] = []
    train_adapters(tiny["base"], bags, {k: tmp_path / "k2" / str(k) for k in bags}, tmp_path / "ckpt2", EXACT,
                   on_step=lambda stats: seen.append(set(stats.losses)))
    assert len(seen) == 60 and seen[:24] == [{3, 4}] * 24 and seen[24:] == [{3}] * 36
    for k, bag in bags.items():
        meta = json.loads((tmp_path / "k2" / str(k) / "logivote_train.json").read_text())
        assert meta["steps"] == {3: 60, 4: 24}[k]
        train_adapters(tiny["base"], {k: bag}, {k: tmp_path / "k1" / str(k)}, tmp_path / f"ckpt1-{k}", EXACT)
        assert_same_adapters(tmp_path / "k1" / str(k), tmp_path / "k2" / str(k), atol=1e-9)


def test_grad_accumulation_and_clipping_stay_per_adapter(tiny: dict[str, Path], tmp_path: Path) -> None:
    """grad_accum 5 with streams of 60 and 24 steps (adapter 4 steps at 24, mid-way through adapter 3's window), and clipping at
    a norm every step exceeds: each adapter in the shared job still ends as it would alone."""
    bags = subsets(tiny, {3: 0.25, 4: 0.1})
    settings = replace(EXACT, grad_accum=5, max_grad_norm=0.05, learning_rate=3e-3)
    train_adapters(tiny["base"], bags, {k: tmp_path / "k2" / str(k) for k in bags}, tmp_path / "ckpt2", settings)
    for k, bag in bags.items():
        train_adapters(tiny["base"], {k: bag}, {k: tmp_path / "k1" / str(k)}, tmp_path / f"ckpt1-{k}", settings)
        assert_same_adapters(tmp_path / "k1" / str(k), tmp_path / "k2" / str(k), atol=1e-9)


def test_float32_training_in_one_job_stays_close_to_training_alone(tiny: dict[str, Path], tmp_path: Path) -> None:
    bags = subsets(tiny, {0: 0.25, 1: 0.25})
    settings = replace(EXACT, dtype="float32")
    train_adapters(tiny["base"], bags, {k: tmp_path / "k2" / str(k) for k in bags}, tmp_path / "ckpt2", settings)
    for k, bag in bags.items():
        train_adapters(tiny["base"], {k: bag}, {k: tmp_path / "k1" / str(k)}, tmp_path / f"ckpt1-{k}", settings)
        # measured: 1.0e-5 at most (AMD EPYC, AVX-512), 5.5e-5 on another machine: 1e-4 leaves twice the larger
        assert_same_adapters(tmp_path / "k1" / str(k), tmp_path / "k2" / str(k), atol=1e-4)  # see EXACT


def test_rows_of_a_stream_get_their_own_gradients(tiny: dict[str, Path]) -> None:
    """float32, one step: each adapter's gradient from a packed stream of 3 rows is its example's gradient alone."""
    from logivote.training.loop import encode_subset, load_base
    from logivote.training.packing import pack, row_losses, use_packed_attention
    from logivote.training.stacked_lora import LoraShape, StackedLora

    tokenizer, model = load_base(tiny["base"], torch.float32, on_gpu=False)
    model.requires_grad_(False)
    use_packed_attention(model)
    lora = StackedLora(model, 3, LoraShape(4, 8, 0.0), seeds=[1, 2, 3], dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero B, so that A has gradients too
        for layer in lora.layers.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.02)
    examples = encode_subset(tokenizer, tiny["subset"], 1800)[:3]
    assert len({len(e["input_ids"]) for e in examples}) > 1  # rows of different lengths

    def gradients(rows: list[int]) -> list[list[torch.Tensor]]:
        for p in lora.parameters():
            p.grad = None
        batch = pack([examples[i] for i in rows], tokenizer.pad_token_id, "cpu", bucket=64, adapters=rows)
        with lora.tokens(batch.token_adapter):
            hidden = model.base_model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                                      **batch.attention_kwargs()).last_hidden_state
            row_losses(model.get_output_embeddings()(hidden[0, batch.label_at]), batch).sum().backward()
        return [[p.grad[i].clone() for p in lora.parameters()] for i in range(3)]

    together = gradients([0, 1, 2])
    for i in range(3):
        alone = gradients([i])
        assert all(float(g.abs().sum()) == 0 for j in range(3) if j != i for g in alone[j])  # others untouched
        for got, want in zip(together[i], alone[i]):
            assert float(want.abs().max()) > 0
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


TRAIN_SCRIPT = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO)
    from logivote.training.loop import train_adapters
    from logivote.training.settings import TrainSettings
    settings = TrainSettings(lora_r=4, lora_alpha=8, lora_dropout=0.1, learning_rate=1e-3, epochs=2, save_steps=10, logging_steps=5)
    bags = dict(enumerate(sys.argv[3:]))
    train_adapters(sys.argv[1], bags, {k: f"{sys.argv[2]}/{k}" for k in bags}, sys.argv[2] + ".ckpt", settings)
""")


def run_training(tiny: dict[str, Path], out: Path, bags: list[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(tiny["base"]), str(out), *map(str, bags)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("k", [1, 3])
def test_killed_training_resumes_to_the_same_adapters(tiny: dict[str, Path], tmp_path: Path, k: int) -> None:
    bags = list(subsets(tiny, {i: 0.25 for i in range(k)}).values())
    reference = run_training(tiny, tmp_path / "reference", bags)
    assert reference.wait(timeout=300) == 0

    victim = run_training(tiny, tmp_path / "resumed", bags)
    ckpt = tmp_path / "resumed.ckpt"
    deadline = time.monotonic() + 300
    while not (ckpt / "step-30" / "state.pt").exists():
        assert victim.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (tmp_path / "resumed" / "0").exists()  # nothing that looks done

    resumed = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(tiny["base"]), str(tmp_path / "resumed"), *map(str, bags)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"resuming from \S+step-(30|40|50) \(step", resumed.stderr), resumed.stderr[-2000:]
    for i in range(k):
        assert_same_adapters(tmp_path / "reference" / str(i), tmp_path / "resumed" / str(i), atol=0)


def test_gradient_checkpointing_gives_the_same_adapters(tiny: dict[str, Path], tmp_path: Path) -> None:
    bags = subsets(tiny, {5: 0.1, 6: 0.1})
    runs = (("plain", EXACT), ("ckpt", replace(EXACT, gradient_checkpointing=True)),
            ("selective", replace(EXACT, gradient_checkpointing="selective")),
            ("selective_gate", replace(EXACT, gradient_checkpointing="selective_gate")))
    for name, settings in runs:
        train_adapters(tiny["base"], bags, {k: tmp_path / name / str(k) for k in bags}, tmp_path / f"c-{name}", settings)
    for k in bags:
        for name in ("ckpt", "selective", "selective_gate"):
            assert_same_adapters(tmp_path / "plain" / str(k), tmp_path / name / str(k), atol=1e-9)


def test_grouped_adapters_run_before_the_base_so_the_recompute_skips_the_last_linear(
        tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The grouped-GEMM path (Hopper GPUs; forced here, float32 with dropout) under full checkpointing: the same
    adapters as without checkpointing, and the backward's recompute runs every base linear again but down_proj."""
    from logivote.training import stacked_lora

    if stacked_lora._grouped_mm() is None:
        pytest.skip("this torch has no grouped_mm")
    monkeypatch.setattr(stacked_lora, "LORA_GEMM", "grouped")
    calls: dict[str, int] = {}
    frozen_forward = stacked_lora.frozen_forward

    def counted(module: torch.nn.Module, x: torch.Tensor, keep_weight: bool = False, **kwargs: Any) -> torch.Tensor:
        name = "down" if module.in_features == TinyShape().intermediate_size else "other"  # only down_proj's input is that wide
        calls[name] = calls.get(name, 0) + 1
        return frozen_forward(module, x, keep_weight, **kwargs)

    monkeypatch.setattr(stacked_lora, "frozen_forward", counted)
    bags = subsets(tiny, {5: 0.1, 6: 0.1})
    counts = {}
    for name, settings in (("plain", SETTINGS), ("ckpt", replace(SETTINGS, gradient_checkpointing=True))):
        calls.clear()
        train_adapters(tiny["base"], bags, {k: tmp_path / name / str(k) for k in bags}, tmp_path / f"c-{name}", settings)
        counts[name] = dict(calls)
    for k in bags:
        assert_same_adapters(tmp_path / "plain" / str(k), tmp_path / "ckpt" / str(k), atol=1e-6)
    assert counts["ckpt"]["down"] == counts["plain"]["down"], counts  # not run again in backward
    assert counts["ckpt"]["other"] == 2 * counts["plain"]["other"], counts


def test_a_diverging_adapter_fails_the_job_by_name_and_writes_nothing(tiny: dict[str, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen on the H100 (config/gpu-small.yaml at lr 2e-3, bf16): 11 of 21 adapters went to NaN loss and the job
    still wrote them, so the server failed their requests much later. A non-finite loss now stops training at once."""
    bags = subsets(tiny, {0: 0.25, 1: 0.25})
    cross_entropy, calls = torch.nn.functional.cross_entropy, []

    def diverging_at_step_5(logits, targets, **kw):  # adapter 1's rows turn NaN from the 5th step on
        loss = cross_entropy(logits, targets, **kw)
        calls.append(1)
        return loss.index_fill(0, torch.arange(len(loss) // 2, len(loss)), float("nan")) if len(calls) >= 5 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", diverging_at_step_5)
    with pytest.raises(FloatingPointError, match=r"adapter 1: training loss is nan at step 5 of 60 .*train\.learning_rate"):
        train_adapters(tiny["base"], bags, {k: tmp_path / "out" / str(k) for k in bags}, tmp_path / "ckpt", SETTINGS)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_loss_curve_rows_are_the_logged_window_means_with_the_scheduled_rate() -> None:
    from logivote.training.loop import loss_curve

    linear = [1.0, 0.75, 0.5, 0.25, 0.0]  # 4 optimizer steps, linear decay to 0
    rows = loss_curve(7, [4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.1], logging_steps=4, grad_accum=2, base_lr=1e-3, lr_factors=linear)
    assert [(a, s) for a, s, _, _ in rows] == [(7, 4), (7, 8), (7, 9)]  # every 4 steps and the last
    assert [loss for _, _, loss, _ in rows] == [2.0, 0.375, 0.1]
    assert [lr for _, _, _, lr in rows] == pytest.approx([1e-3 * 3 / 4, 1e-3 * 1 / 4, 0.0])  # after 1, 3 and 4 optimizer steps


def test_lr_factors_are_transformers_schedules() -> None:
    from logivote.training.settings import lr_factors

    assert lr_factors("linear", 2, 6) == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0])
    assert lr_factors("constant", 0, 3) == pytest.approx([1.0] * 4)
    cosine = lr_factors("cosine", 0, 4)
    assert cosine[0] == pytest.approx(1.0) and cosine[2] == pytest.approx(0.5) and cosine[4] == pytest.approx(0.0)


def test_every_adapter_folder_has_its_loss_curve(tiny: dict[str, Path], tmp_path: Path) -> None:
    from logivote.data.contracts import read_loss_curve

    bags = subsets(tiny, {0: 0.25, 1: 0.1})  # 30 and 12 questions: 60 and 24 steps
    train_adapters(tiny["base"], bags, {k: tmp_path / str(k) for k in bags}, tmp_path / "ckpt", SETTINGS)
    for k, steps in ((0, 60), (1, 24)):
        rows = read_loss_curve(tmp_path / str(k) / "loss_curve.tsv")
        expected = sorted(set(range(5, steps + 1, 5)) | {steps})  # every logging_steps (5) and the adapter's last step
        assert [r["step"] for r in rows] == expected
        assert {r["adapter"] for r in rows} == {k}
        assert rows[0]["learning_rate"] > rows[-1]["learning_rate"] >= 0  # linear schedule
        assert rows[-1]["loss"] < rows[0]["loss"]


def test_per_adapter_init_gives_each_subset_its_own_start_whichever_job_trains_it() -> None:
    shared, own = replace(SETTINGS, lora_init="shared"), replace(SETTINGS, lora_init="per_adapter")
    assert init_seeds(shared, [3, 4]) == [SETTINGS.seed] * 2
    seeds = init_seeds(own, [3, 4, 5])
    assert len(set(seeds)) == 3 and init_seeds(own, [5]) == seeds[2:]  # subset 5 starts alike in a job of 3 or of 1
    assert init_seeds(replace(own, seed=SETTINGS.seed + 1), [3]) != seeds[:1]
    with pytest.raises(ValueError, match="train.lora_init: shared or per_adapter, not 'random'"):
        replace(SETTINGS, lora_init="random")


def test_gradient_checkpointing_is_true_false_or_selective() -> None:
    assert replace(SETTINGS, gradient_checkpointing="selective").gradient_checkpointing == "selective"
    assert replace(SETTINGS, gradient_checkpointing="selective_gate").gradient_checkpointing == "selective_gate"
    with pytest.raises(ValueError, match="true, false, selective or selective_gate, not 'full'"):
        replace(SETTINGS, gradient_checkpointing="full")


def boundaries_from_the_device(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                               scaling: float | None = None, dropout: float = 0.0, cu_seq_lens_q: Any = None,
                               max_length_q: int | None = None, **kwargs: Any) -> tuple[Any, None]:
    """Packed attention the way variable-length FlashAttention does it, on CPU: the sequences' boundaries read
    from ``cu_seq_lens_q`` (a tensor a graph replays), not from lengths known on the host; ``max_length_q`` a
    bound on every sequence."""
    seq = torch.searchsorted(cu_seq_lens_q[1:].long(), torch.arange(query.shape[2]), right=True)  # each token's sequence
    assert max_length_q >= int(cu_seq_lens_q.diff().max())
    mask = (seq[:, None] == seq[None, :]).tril()
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                                           enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2), None


@pytest.mark.parametrize("where", ["emulated", "cuda", "cuda-checkpointing"])
def test_steps_replayed_from_graphs_train_the_same_adapters(tiny: dict[str, Path], tmp_path: Path, where: str,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """train.cuda_graphs (logivote.training.cuda_graphs): a stream shape's first step runs eagerly, its later ones replay a
    capture made over the batch kept for that shape. Two adapters with unequal streams (the shapes change when
    one ends), bucket 64 (shapes repeat), grad_accum 2, against the same training without graphs.

    "emulated" (CPU, float64): the capture hands back the step itself, run again over the kept batch at every
    replay, and attention reads the boundaries from the device (:func:`boundaries_from_the_device`, both runs).
    That checks what the graphs rely on (each step's tensors copied into the kept batch, a bound on the
    lengths, the losses copied out), not CUDA's capture. "cuda" (bf16, r = 8 for the grouped GEMMs, a GPU with
    FlashAttention): real graphs against eager steps on the same GPU, also with gradient checkpointing."""
    from logivote.training import cuda_graphs, packing

    if where == "emulated":
        monkeypatch.setattr(cuda_graphs, "graph_blockers", lambda *args: [])
        monkeypatch.setattr(cuda_graphs, "cuda_graph_capture", lambda: lambda step: step)
        monkeypatch.setattr(packing, "packed_attention", boundaries_from_the_device)
        settings, atol = replace(EXACT, bucket_tokens=64, grad_accum=2), 0.0
    elif not torch.cuda.is_available():
        pytest.skip("no GPU")
    else:
        settings, atol = replace(EXACT, bucket_tokens=64, grad_accum=2, dtype="bfloat16", gpus=1, lora_r=8, lora_alpha=16,
                                 gradient_checkpointing=where.endswith("checkpointing")), 0.0
    bags = subsets(tiny, {3: 0.25, 4: 0.1})
    for name, graphs in (("eager", False), ("graphs", True)):
        caplog.clear()
        with caplog.at_level("INFO", logger="logivote.training.loop"):
            train_adapters(tiny["base"], bags, {k: tmp_path / name / str(k) for k in bags}, tmp_path / f"c-{name}",
                           replace(settings, cuda_graphs=graphs))
        replayed = re.findall(r"CUDA graphs: (\d+) stream shapes captured, (\d+) of 60 steps replayed", caplog.text)
        if graphs:
            shapes, replays = map(int, replayed[0])
            assert shapes >= 2 and replays >= 30, replayed  # both row counts, most steps
        else:
            assert not replayed
    for k in bags:
        assert_same_adapters(tmp_path / "eager" / str(k), tmp_path / "graphs" / str(k), atol=atol)
        for name in ("loss_curve.tsv",):
            assert (tmp_path / "graphs" / str(k) / name).read_text() == (tmp_path / "eager" / str(k) / name).read_text()

