"""Deterministic character-level noise for robustness evaluation (``finsent evaluate --perturb RATE``).

Each character is, with probability ``rate``, subjected to one of: a homophone or near-form swap (from a
small table of characters common in finance text), a random typo (a neighbour in the CJK code table or a
dropped/duplicated character), a full-width/half-width flip, or an inserted space or punctuation mark. The
same (text, rate, seed) always gives the same output.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

# homophones (同音) and near-forms (形近) seen in forum posts; symmetric pairs are listed once
_CONFUSABLE: dict[str, str] = {}
for a, b in [
    ("涨", "张"), ("跌", "迭"), ("股", "鼓"), ("市", "事"), ("利", "力"), ("空", "控"), ("多", "夺"), ("盘", "搬"),
    ("买", "卖"), ("赚", "钻"), ("亏", "归"), ("仓", "苍"), ("牛", "扭"), ("熊", "雄"), ("底", "低"), ("顶", "订"),
    ("板", "版"), ("价", "假"), ("资", "姿"), ("金", "今"), ("债", "寨"), ("券", "卷"), ("基", "机"), ("业", "页"),
    ("绩", "迹"), ("增", "曾"), ("减", "剪"), ("持", "特"), ("收", "手"), ("益", "意"), ("风", "疯"), ("险", "显"),
    ("已", "己"), ("未", "末"), ("大", "太"), ("人", "入"), ("日", "曰"), ("天", "夭"),
]:
    _CONFUSABLE[a] = b
    _CONFUSABLE[b] = a

_PUNCT = list("，。！？、 ~…")


def _width_flip(ch: str) -> str:
    code = ord(ch)
    if 0x21 <= code <= 0x7E:
        return chr(code + 0xFEE0)
    if 0xFF01 <= code <= 0xFF5E:
        return chr(code - 0xFEE0)
    if ch == " ":
        return "\u3000"
    return ch


def perturb_text(text: str, rate: float, rng: random.Random) -> str:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"perturbation rate must be within [0, 1], got {rate}")
    out: list[str] = []
    for ch in text:
        if rng.random() >= rate:
            out.append(ch)
            continue
        kind = rng.randrange(4)
        if kind == 0 and ch in _CONFUSABLE:
            out.append(_CONFUSABLE[ch])
        elif kind == 1:
            op = rng.randrange(3)
            if op == 0 and "\u4e00" <= ch <= "\u9fa5":
                out.append(chr(ord(ch) + rng.choice((-1, 1))))
            elif op == 1:
                continue  # dropped character
            else:
                out.append(ch + ch)
        elif kind == 2 and _width_flip(ch) != ch:
            out.append(_width_flip(ch))
        else:
            out.append(ch + rng.choice(_PUNCT))
    result = "".join(out)
    return result if result.strip() else text


def perturb_texts(texts: Sequence[str], rate: float, seed: int = 0) -> list[str]:
    """Perturb every text; text *i* uses its own generator seeded by ``(seed, i)``, so results do not depend on
    batch composition."""
    return [perturb_text(t, rate, random.Random(f"{seed}:{i}")) for i, t in enumerate(texts)]
