"""Helpers of the serving tests (a uniquely named module so ``import`` never picks another conftest)."""

from __future__ import annotations

import socket
from pathlib import Path

#: a word → label toy language the trained tiny model learns exactly (decisive words for explain tests)
POSITIVE_WORDS = ("利好", "大涨", "增持", "盈利", "回购", "涨停")
NEGATIVE_WORDS = ("利空", "暴跌", "减持", "亏损", "违约", "跌停")
SUBJECTS = ("公司", "银行", "券商", "基金", "地产", "央企", "板块", "龙头")
FRAMES = ("{s}发布{w}公告", "{s}今日{w}", "消息称{s}{w}", "{s}股价{w}了")


def toy_examples() -> list[tuple[str, str]]:
    """(text, label): texts with a positive word → 利多, a negative word → 利空, neither → 其他."""
    out = []
    for s in SUBJECTS:
        for f in FRAMES:
            out.extend((f.format(s=s, w=w), "利多") for w in POSITIVE_WORDS)
            out.extend((f.format(s=s, w=w), "利空") for w in NEGATIVE_WORDS)
            out.extend((f.format(s=s, w=n), "其他") for n in ("开会", "调研", "公告"))
    return out


def train_tiny_model(out_dir: Path, seed: int = 0, steps: int = 80) -> Path:
    """A tiny model fitted to ``toy_examples`` (a few seconds on 2 CPUs), saved as a finsent model directory."""
    import torch

    from classifier.labels import LabelSet
    from classifier.modeldir import load_model_dir, save_model_dir
    from classifier.testing import make_tiny_model_dir

    start = make_tiny_model_dir(out_dir.parent / f"{out_dir.name}-init", seed=seed)
    model, tok, meta = load_model_dir(start, "cpu")
    meta.name = f"toy{seed}"
    labels = LabelSet.of(meta.labels)
    data = toy_examples()
    enc_all = tok([t for t, _ in data])  # tokenize once; batches index into it
    y_all = torch.tensor([labels.id(y) for _, y in data])
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a hidden-32 model gains nothing from more, and spinning threads hurt on a busy box
    try:
        _fit(model, opt, enc_all, y_all, g, steps)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return save_model_dir(out_dir, model, tok, meta)


def _fit(model, opt, enc_all, y_all, g, steps: int) -> None:
    import torch

    for _ in range(steps):
        idx = torch.randint(len(y_all), (32,), generator=g)
        logits = model(input_ids=enc_all["input_ids"][idx], attention_mask=enc_all["attention_mask"][idx])
        loss = torch.nn.functional.cross_entropy(logits, y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve_http(port: int) -> None:
    """Start Serve with its HTTP proxy on 127.0.0.1:``port`` in the session's Ray. A Serve left running by an
    earlier test keeps its own port (``serve.start`` would silently reuse it), so any is shut down first;
    fixtures call ``serve.shutdown()`` when done."""
    from ray import serve

    serve.shutdown()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
