"""The embedded sample: small Chinese closed-world puzzles in the competition format.

Generated, not copied: every puzzle is built from random facts with a fixed
seed, and every answer is computed from those facts by the small solvers
below, so the answers are correct by construction. ``resources/data/`` holds
the output of :func:`write_sample`; ``tests/data/test_sample_data.py`` checks that
the committed files are exactly what this module produces.

Puzzle kinds: family relations (parent / grandparent / sibling), orderings
(who is taller), likes (who likes what, closed world), number classes
(divisibility rules) and a week's weather log (which weather was most frequent,
which never came, did a given one come: counts and look-ups written out in the
text, which a tiny model can learn). Option counts vary from 2 to 5, like the
real data.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .contracts import LETTERS
from .jsonl import atomic_write_jsonl

NAMES = [
    "张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄强", "周杰", "吴丽",
    "徐明", "孙悦", "胡斌", "朱琳", "高峰", "林涛", "何欣", "郭亮", "马超", "罗兰",
]
FOODS = ["苹果", "香蕉", "米饭", "面条", "鸡肉", "豆腐", "西瓜", "饺子"]
CLOSED_WORLD = "假设以上列出的事实是全部事实，没有列出的关系一律不成立（封闭世界假设）。"

# how each kind's problem text opens (after a count, for orderings): :func:`kind_of` reads the kind back
OPENINGS = {
    "family": "下面是一个家族中的亲属关系",
    "ordering": "个人比较身高",
    "likes": "关于几个人的饮食喜好",
    "number": "对正整数按以下规则分类",
    "weather": "某城市一周的天气记录如下",
}

Puzzle = dict[str, Any]
QuestionSpec = tuple[str, list[str], int]  # question text, options, index of the correct option


def _question(rng: random.Random, text: str, correct: str, wrong: list[str], n_options: int) -> QuestionSpec:
    """Shuffle ``correct`` among ``n_options - 1`` distinct distractors from ``wrong``."""
    pool = sorted(set(wrong) - {correct})
    n_options = min(n_options, len(pool) + 1)
    if n_options < 2:
        raise ValueError(f"no distractor for {text!r}")
    distractors = rng.sample(pool, n_options - 1)
    options = distractors + [correct]
    rng.shuffle(options)
    return text, options, options.index(correct)


def _yes_no(is_true: bool) -> tuple[list[str], int]:
    return ["是", "否"], 0 if is_true else 1


def family_puzzle(rng: random.Random) -> tuple[str, list[QuestionSpec]]:
    names = rng.sample(NAMES, 7)
    grandparent, parent_a, parent_b, kids = names[0], names[1], names[2], names[3:7]
    children = {grandparent: [parent_a, parent_b], parent_a: kids[:2], parent_b: kids[2:]}
    facts = [f"{p}是{c}的父母。" for p, cs in children.items() for c in cs]
    rng.shuffle(facts)
    problem = (
        OPENINGS["family"] + "：\n\n"
        + "\n".join(f"{i}. {fact}" for i, fact in enumerate(facts, 1))
        + "\n\n规则：如果X是Y的父母，且Y是Z的父母，则X是Z的祖父母。"
        "如果X和Y有同一个父母且X不是Y，则X和Y是兄弟姐妹。\n"
        + CLOSED_WORLD
        + "\n\n根据以上信息，回答以下选择题："
    )
    grandchild = rng.choice(kids)
    own_parent = parent_a if grandchild in kids[:2] else parent_b
    sibling = next(k for k in children[own_parent] if k != grandchild)
    cousin = rng.choice([k for k in kids if k not in children[own_parent]])
    questions = [
        _question(rng, f"谁是{grandchild}的祖父母？", grandparent, [parent_a, parent_b] + [k for k in kids if k != grandchild], rng.choice([3, 4])),
        _question(rng, f"谁是{grandchild}的兄弟姐妹？", sibling, [grandparent, parent_a, parent_b, cousin], rng.choice([3, 4, 5])),
    ]
    options, answer = _yes_no(False)
    questions.append((f"{cousin}是{grandchild}的兄弟姐妹吗？", options, answer))
    return problem, questions


def ordering_puzzle(rng: random.Random) -> tuple[str, list[QuestionSpec]]:
    people = rng.sample(NAMES, rng.choice([4, 5]))  # tallest first
    facts = [f"{people[i]}比{people[i + 1]}高。" for i in range(len(people) - 1)]
    rng.shuffle(facts)
    problem = (
        f"{len(people)}{OPENINGS['ordering']}，已知：\n\n"
        + "\n".join(f"{i}. {fact}" for i, fact in enumerate(facts, 1))
        + "\n\n规则：如果X比Y高，且Y比Z高，则X比Z高。\n"
        + CLOSED_WORLD
        + "\n\n根据以上信息，回答以下选择题："
    )
    a, b = sorted(rng.sample(range(len(people)), 2))
    first, second = (people[a], people[b]) if rng.random() < 0.5 else (people[b], people[a])
    options, answer = _yes_no(first == people[a])
    return problem, [
        _question(rng, "谁最高？", people[0], people[1:], rng.choice([3, 4])),
        _question(rng, "谁最矮？", people[-1], people[:-1], rng.choice([2, 3, 4])),
        (f"{first}比{second}高吗？", options, answer),
    ]


def likes_puzzle(rng: random.Random) -> tuple[str, list[QuestionSpec]]:
    people = rng.sample(NAMES, 4)
    foods = rng.sample(FOODS, 5)
    likes = {p: set(rng.sample(foods, rng.choice([1, 2]))) for p in people}
    unloved = [f for f in foods if not any(f in s for s in likes.values())]
    turn = 0
    while not unloved:  # every food liked: narrow people down to one food each until one is left over
        likes[people[-1 - turn % len(people)]] = set(rng.sample(foods, 1))
        unloved = [f for f in foods if not any(f in s for s in likes.values())]
        turn += 1
    facts = [f"{p}喜欢{f}。" for p in people for f in sorted(likes[p], key=foods.index)]
    rng.shuffle(facts)
    problem = (
        OPENINGS["likes"] + "，已知：\n\n"
        + "\n".join(f"{i}. {fact}" for i, fact in enumerate(facts, 1))
        + "\n\n"
        + CLOSED_WORLD
        + "\n\n根据以上信息，回答以下选择题："
    )
    person = rng.choice(people)
    liked = sorted(likes[person], key=foods.index)[0]
    others = [p for p in people if p != person]
    food = rng.choice(foods)
    likers = [p for p in people if food in likes[p]]
    questions = [
        _question(rng, f"{person}喜欢以下哪种食物？", liked, [f for f in foods if f not in likes[person]], rng.choice([2, 3, 4])),
        _question(rng, "以下哪种食物没有人喜欢？", unloved[0], [f for f in foods if f not in unloved], rng.choice([3, 4])),
    ]
    if likers:
        questions.append(_question(rng, f"谁喜欢{food}？", likers[0], [p for p in people if p not in likers] + ["以上都不是"], 2))
    else:
        questions.append(_question(rng, f"谁喜欢{food}？", "以上都不是", others, rng.choice([3, 4])))
    return problem, questions


def number_puzzle(rng: random.Random) -> tuple[str, list[QuestionSpec]]:
    d1, d2 = rng.sample([2, 3, 5, 7], 2)
    classes = ["甲类", "乙类", "丙类", "丁类"]

    def classify(n: int) -> str:
        if n % d1 == 0 and n % d2 == 0:
            return "甲类"
        if n % d1 == 0:
            return "乙类"
        if n % d2 == 0:
            return "丙类"
        return "丁类"

    problem = (
        OPENINGS["number"] + "：\n\n"
        f"1. 如果一个数既能被{d1}整除又能被{d2}整除，它属于甲类。\n"
        f"2. 否则，如果它能被{d1}整除，它属于乙类。\n"
        f"3. 否则，如果它能被{d2}整除，它属于丙类。\n"
        "4. 其余的数属于丁类。\n\n根据以上规则，回答以下选择题："
    )
    wanted = rng.sample(classes, 3)
    questions: list[QuestionSpec] = []
    for cls in wanted:
        n = rng.choice([m for m in range(2, 200) if classify(m) == cls])
        questions.append(_question(rng, f"数字{n}属于哪一类？", cls, classes, rng.choice([4, 4, 3])))
    return problem, questions


WEATHER = ["晴", "雨", "阴", "雪"]
DAYS = ["周一", "周二", "周三", "周四", "周五", "周六", "周日"]


def weather_puzzle(rng: random.Random) -> tuple[str, list[QuestionSpec]]:
    """A week of weather, three of the four kinds, one of them on more days than any other."""
    used = rng.sample(WEATHER, 3)
    counts = list(rng.choice([(3, 2, 2), (4, 2, 1), (5, 1, 1)]))
    rng.shuffle(counts)
    days = [w for w, k in zip(used, counts) for _ in range(k)]
    rng.shuffle(days)
    problem = (
        OPENINGS["weather"] + "：\n\n"
        + "\n".join(f"{day}：{w}。" for day, w in zip(DAYS, days))
        + "\n\n" + CLOSED_WORLD + "\n\n根据以上信息，回答以下选择题："
    )
    most = used[counts.index(max(counts))]
    never = next(w for w in WEATHER if w not in used)
    probe = rng.choice(WEATHER)
    return problem, [
        ("这一周哪种天气出现的天数最多？", list(WEATHER), WEATHER.index(most)),
        ("以下哪种天气这一周一次也没有出现？", list(WEATHER), WEATHER.index(never)),
        (f"这一周有没有出现{probe}天？", ["有", "没有"], 0 if probe in used else 1),
    ]


KINDS: list[Callable[[random.Random], tuple[str, list[QuestionSpec]]]] = [
    family_puzzle, ordering_puzzle, likes_puzzle, number_puzzle, weather_puzzle,
]
KIND_NAMES = {kind.__name__.removesuffix("_puzzle"): kind for kind in KINDS}


def kind_of(problem: str) -> str | None:
    """The kind (a key of :data:`KIND_NAMES`) of a problem text this module wrote, else ``None``."""
    opening = problem.lstrip("0123456789")
    return next((kind for kind, text in OPENINGS.items() if opening.startswith(text)), None)


def make_puzzles(prefix: str, n: int, seed: int, with_answers: bool,
                 kinds: list[Callable[[random.Random], tuple[str, list[QuestionSpec]]]] = KINDS) -> list[Puzzle]:
    """``n`` puzzles with ids ``{prefix}_{i:03d}``; ``kinds`` cycle, content from ``seed``."""
    rng = random.Random(seed)
    puzzles: list[Puzzle] = []
    for i in range(n):
        problem, specs = kinds[i % len(kinds)](rng)
        questions = []
        for j, (text, options, answer) in enumerate(specs, 1):
            item: dict[str, Any] = {"question": f"选择题 {j}：\n{text}", "options": options}
            if with_answers:
                item["answer"] = LETTERS[answer]
            questions.append(item)
        puzzles.append({"problem": problem, "questions": questions, "id": f"{prefix}_{i:03d}"})
    return puzzles


def write_sample(directory: str | Path, n_train: int = 150, n_test: int = 30, seed: int = 2024) -> None:
    """Write ``sample_train.jsonl`` (with answers) and ``sample_test.jsonl`` (without)."""
    directory = Path(directory)
    atomic_write_jsonl(directory / "sample_train.jsonl", make_puzzles("sample_train", n_train, seed, True))
    atomic_write_jsonl(directory / "sample_test.jsonl", make_puzzles("sample_test", n_test, seed + 1, False))


if __name__ == "__main__":  # python -m logivote.data.sample_data [OUT_DIR]: regenerate resources/data/
    import sys

    write_sample(sys.argv[1] if len(sys.argv) > 1 else "resources/data")
