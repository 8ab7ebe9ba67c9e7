"""The tiny base's pre-training (logivote.base.pretrain): fresh generated puzzles, a loss that falls, weights written back.

Whether the pre-trained base then helps is the end-to-end test's business (test_e2e: the default's adapters
beat the most-frequent letter by 10 points, and the base without adapters is worse than they are).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from logivote.base.pretrain import PretrainSettings, generated_questions, lr_scheduler, pretrain  # noqa: E402
from logivote.base.tiny_model import TinyShape, build_tiny_model  # noqa: E402
from logivote.data.prompt import SYSTEM, user_prompt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = PretrainSettings(steps=80, batch_size=8, learning_rate=1e-3, kinds=["weather"], puzzles=100, seed=7)


def test_generated_questions_are_seeded_fresh_and_of_the_named_kinds() -> None:
    questions = generated_questions(SETTINGS)
    assert len(questions) == 3 * SETTINGS.puzzles  # a weather log asks three questions
    assert questions == generated_questions(SETTINGS)
    assert questions != generated_questions(PretrainSettings(puzzles=100, seed=8))
    assert all("天气" in q["problem"] for q in questions)
    # a week of weather repeats by chance: puzzles of the workflow's own files are left out by their text
    sample = {json.loads(line)["problem"] for name in ("sample_train", "sample_test")
              for line in (ROOT / "resources" / "data" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()}
    many = PretrainSettings(puzzles=2000)
    assert sample & {q["problem"] for q in generated_questions(many)}
    kept = generated_questions(many, unseen=sample)
    assert not sample & {q["problem"] for q in kept} and len(kept) > 0.9 * 3 * many.puzzles
    with pytest.raises(ValueError, match=r"base_model.tiny.pretrain.kinds: unknown \['sudoku'\]"):
        generated_questions(PretrainSettings(kinds=["sudoku"]))


@pytest.fixture()
def raw_model(tmp_path: Path) -> Path:
    texts = [SYSTEM, *"ABCD"] + [user_prompt(q) for q in generated_questions(SETTINGS)]
    build_tiny_model(texts, tmp_path / "tiny", TinyShape(initializer_range=0.1))
    return tmp_path / "tiny"


def test_pretraining_lowers_the_loss_and_writes_the_weights_back(raw_model: Path) -> None:
    before = load_file(raw_model / "model.safetensors")
    losses = pretrain(raw_model, SETTINGS)
    after = load_file(raw_model / "model.safetensors")
    assert len(losses) == SETTINGS.steps and all(map(torch.isfinite, torch.tensor(losses)))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"pre-training loss: first 10 steps {first:.3f}, last 10 {last:.3f}")
    assert last < first / 2, (first, last)
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before if "norm" not in k), "a weight did not move"


def test_zero_steps_leave_the_model_as_built(raw_model: Path) -> None:
    before = load_file(raw_model / "model.safetensors")
    assert pretrain(raw_model, PretrainSettings(steps=0)) == []
    after = load_file(raw_model / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_built_model_records_its_pretraining(tmp_path: Path) -> None:
    settings = PretrainSettings(steps=3, puzzles=10)
    texts = [SYSTEM, *"ABCD"] + [user_prompt(q) for q in generated_questions(settings)]
    build_tiny_model(texts, tmp_path / "tiny", TinyShape(initializer_range=0.1), settings)
    assert json.loads((tmp_path / "tiny" / "logivote_pretrain.json").read_text())["steps"] == 3
    build_tiny_model(texts, tmp_path / "plain", TinyShape(initializer_range=0.1))
    assert not (tmp_path / "plain" / "logivote_pretrain.json").exists()


def test_the_rule_keeps_the_workflow_s_own_puzzles_out_of_pretraining(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from logivote.base import tiny_model
    from logivote.data.flatten import Source, flatten

    flatten([Source("sample", str(ROOT / "resources" / "data" / "sample_train.jsonl"), "train")],
            tmp_path / "train.jsonl", tmp_path / "test.jsonl")
    seen: list[set[str]] = []
    monkeypatch.setattr(tiny_model, "pretrain", lambda model_dir, settings, unseen: seen.append(set(unseen)) or [])
    tiny_model.build_from_questions([tmp_path / "train.jsonl"], tmp_path / "tiny", TinyShape(), PretrainSettings(steps=1))
    problems = {json.loads(line)["problem"] for line in (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()}
    assert seen == [problems]


def factors(schedule: str, steps: int) -> list[float]:
    """The pre-training rate's factor before each step 0 … ``steps`` (after the last step: ``steps``)."""
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = lr_scheduler(optimizer, schedule, steps)
    out = []
    for _ in range(steps + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_the_learning_rate_schedules_fall_to_zero_at_the_last_step() -> None:
    steps = 600
    constant, linear, cosine = (factors(name, steps) for name in ("constant", "linear", "cosine"))
    assert set(constant) == {1.0}
    assert linear[0] == 1.0 and linear[300] == 0.5 and linear[steps] == 0.0 and 0 < linear[599] < 0.01
    assert cosine[0] == 1.0 and cosine[300] == pytest.approx(0.5) and cosine[steps] == pytest.approx(0.0)
    assert linear == sorted(linear, reverse=True) and cosine == sorted(cosine, reverse=True)
    with pytest.raises(ValueError, match=r"base_model.tiny.pretrain.lr_schedule: 'step'"):
        factors("step", steps)
