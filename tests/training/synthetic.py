"""A small synthetic but learnable labelled set: the label is decided by which finance keyword a text holds."""

from __future__ import annotations

import random
from pathlib import Path

BULLISH = ("利好", "上涨", "大涨", "涨停", "增持", "盈利", "回购")
BEARISH = ("下跌", "暴跌", "跌停", "亏损", "减持", "违约", "利空")
FILLER = ("公司", "今天", "市场", "发布", "公告", "股东", "会议", "董事会", "季度", "报告", "板块", "消息",
          "投资者", "明天", "行业", "数据", "平台", "产品", "项目", "计划")


def make_examples(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = ("其他", "利多", "利空")[i % 3]
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        if label != "其他":
            words.insert(rng.randrange(len(words) + 1), rng.choice(BULLISH if label == "利多" else BEARISH))
        out.append((label, "".join(words)))
    rng.shuffle(out)
    return out


def write_split(path: Path, n: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{y}|||{x}\n" for y, x in make_examples(n, seed)), encoding="utf-8")
    return path
