"""What a run shows and leaves behind: the rank-0 progress bar, per-epoch metrics as JSONL/CSV, the training
curves PNG, the best epoch's confusion PNG, and ``training_report.json``."""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "training_curves.png"
CONFUSION_PNG = "confusion_dev_best.png"


class Progress:
    """A tqdm bar with the running loss and examples/s, shown on rank 0 only (a no-op elsewhere)."""

    def __init__(self, total: int, desc: str, enabled: bool, every: int = 20) -> None:
        self.bar = None
        self.every = every
        if enabled:
            from tqdm import tqdm

            tty = sys.stderr.isatty()
            # not a terminal (Ray worker logs, nohup): print a line every 30 s instead of redrawing
            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=tty, ascii=not tty,
                            mininterval=0.5 if tty else 30.0, maxinterval=60.0)

    def update(self, i: int, out: dict[str, float], stats: Any) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if (i + 1) % self.every == 0:
            self.bar.set_postfix(loss=f"{stats.mean_loss:.4f}",
                                 ex_s=f"{stats.examples / max(stats.seconds, 1e-9):.1f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_metrics(history: Sequence[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """One line / row per epoch of the scalar metrics (the nested dev report stays in the JSON report)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in h.items() if not isinstance(v, (dict, list))} for h in history]
    jsonl = out / METRICS_JSONL
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    path_csv = out / METRICS_CSV
    with path_csv.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return jsonl, path_csv


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, select_metric: str = "macro_f1",
                best_epoch: int | None = None) -> Path:
    """Train/dev loss and dev accuracy/macro-F1 per epoch, the best (exported) epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.4), dpi=120)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax1.plot(epochs, [h["dev_loss"] for h in history], "s-", label="dev loss")
    if any("train_adv_loss" in h for h in history):
        ax1.plot(epochs, [h.get("train_adv_loss", float("nan")) for h in history], "^--", label="train adv. loss")
    ax1.set_xlabel("epoch")
    ax1.set_title("loss", fontsize=9)
    ax1.legend(fontsize=8)
    for key, style in (("dev_accuracy", "o-"), ("dev_macro_f1", "s-")):
        ax2.plot(epochs, [h[key] for h in history], style, label=key.removeprefix("dev_"))
    if best_epoch is None and (best := select_best(history, select_metric)) is not None:
        best_epoch = best["epoch"]
    if best_epoch is not None:
        ax2.axvline(best_epoch + 1, color="grey", ls=":", lw=1, label=f"best ({select_metric})")
    ax2.set_xlabel("epoch")
    ax2.set_title("dev", fontsize=9)
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    from classifier.metrics import save_figure

    return save_figure(fig, path)


def select_best(history: Sequence[dict[str, Any]], select_metric: str) -> dict[str, Any] | None:
    """The epoch with the best ``score_<select_metric>`` (``dev_<select_metric>`` in older histories; lowest
    for loss, else highest; earliest on ties)."""
    key = f"score_{select_metric}" if history and f"score_{select_metric}" in history[0] else f"dev_{select_metric}"
    sign = -1.0 if select_metric == "loss" else 1.0
    best = None
    for h in history:
        if best is None or sign * h[key] > sign * best[key]:
            best = h
    return best


def machine_info() -> dict[str, Any]:
    """The machine of a run (:func:`classifier.host.host_info`), for training reports."""
    from classifier.host import host_info

    return host_info()


def build_report(config: dict[str, Any], data_summary: dict[str, Any], history: Sequence[dict[str, Any]],
                 best: dict[str, Any], select_metric: str, wall_time_s: float, extra: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """``training_report.json``: config, data hashes, per-epoch metrics, best epoch, times, machine."""
    scalars = [{k: v for k, v in h.items() if not isinstance(v, (dict, list))} for h in history]
    return {
        "best_epoch": best["epoch"],
        "best_metric": {"name": f"dev_{select_metric}", "value": best.get(f"score_{select_metric}",
                                                                           best[f"dev_{select_metric}"]),
                        "weights": best.get("variant", "raw")},
        "dev_metrics": best["ema_dev_report"] if best.get("variant") == "ema" else best["dev_report"],
        "epochs": scalars,
        "wall_time_s": wall_time_s,
        "train_time_s": sum(h.get("train_time_s", 0.0) + h.get("eval_time_s", 0.0) for h in history),
        "train_files": list(config.get("train_files", [])) + list(config.get("extra_train_files", [])),
        "dev_file": config.get("dev_file"),
        "data": data_summary,
        "config": config,
        "machine": machine_info(),
        **(extra or {}),
    }
