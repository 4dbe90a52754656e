"""Inference backends behind :class:`classifier.predict.Predictor`: what runs the network on a padded batch.

Four variants, named ``<backend>-<precision>``:

* ``torch-fp32`` — PyTorch eager (bf16 autocast on CUDA). The reference.
* ``torch-int8`` — ``torch.ao`` dynamic int8 on every ``nn.Linear``, per-channel weights (CPU).
* ``onnx-fp32`` — the classifier graph (encoder + [CLS] + head → logits) exported once with ``torch.onnx``
  and run by ONNX Runtime's CPUExecutionProvider with every graph optimisation.
* ``onnx-int8`` — the same graph after ONNX Runtime dynamic int8 quantisation of its MatMuls (per-channel).

Exports are cached in the model directory under ``onnx/`` (or the user cache when the directory is
read-only), named by the weights' hash so an export of other weights is never used
(:func:`classifier.modeldir.onnx_cache_file`).

``backend="auto"`` / ``quantize="auto"`` measure the allowed variants on this host at load time on
:data:`SAMPLE_TEXTS` (batch 32 and batch 1) and keep the fastest one whose probabilities stay within
tolerance of torch fp32 (:func:`within_tolerance`); the decision is cached next to the ONNX files, keyed by
weights hash, CPU model and flags, thread count and library versions, so replicas on the same kind of host
do not measure again. Which variant wins depends on the CPU: int8 pays off with AVX-512 VNNI / AMX, ONNX
Runtime's fused kernels on some AVX2-only hosts, and neither everywhere — hence a measurement, not a rule.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from classifier.errors import ConfigError, ModelDirError
from classifier.host import cpu_info

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("torch", "onnx", "auto")
QUANTIZE: tuple[str, ...] = ("none", "int8", "auto")
#: model_version suffix of each variant (torch fp32 has none; bf16 on CUDA is the same weights)
VERSION_SUFFIX: dict[str, str] = {"torch-fp32": "", "torch-int8": "+int8", "onnx-fp32": "+onnx",
                                  "onnx-int8": "+onnx-int8"}

#: ``auto`` keeps a variant only if no probability of the sample moves by more than this from torch fp32 ...
AUTO_MAX_ABS_DIFF = 0.02
#: ... and the label stays the same on every sample text whose fp32 top-two margin is at least this
AUTO_LABEL_MARGIN = 0.02
#: ``auto`` leaves the plain fp32 variant only for one at least this much faster (timing noise)
AUTO_MIN_GAIN = 1.05
#: texts per batch of the batched measurement; the single-request one runs the first ``AUTO_SINGLE_TEXTS``
AUTO_BATCH = 32
AUTO_SINGLE_TEXTS = 8
#: version of the decision format and rule: bump when the rule changes so cached decisions are re-measured
AUTO_RULE_VERSION = 1
#: ONNX opset of the export
ONNX_OPSET = 18

#: Representative Chinese finance texts (headlines and news sentences of typical lengths, all three
#: sentiments) on which ``auto`` times the variants and compares their probabilities.
SAMPLE_TEXTS: tuple[str, ...] = (
    "贵州茅台上半年净利润同比增长20.8%，超出市场预期",
    "央行宣布下调存款准备金率0.25个百分点，释放长期资金约5000亿元",
    "多家银行下调存量房贷利率，市场人士称利好消费修复",
    "公司控股股东拟减持不超过2%股份，股价午后跳水跌停",
    "受原材料价格上涨影响，公司三季度毛利率同比下滑5.3个百分点，净利润亏损1.2亿元",
    "证监会对某上市公司财务造假立案调查，公司股票将被实施其他风险警示",
    "沪深两市成交额连续第三个交易日突破1万亿元，北向资金净买入超80亿元",
    "新能源汽车板块午后集体走强，宁德时代涨超5%，比亚迪创历史新高",
    "公司公告称将以自有资金回购股份，回购金额不低于3亿元且不超过6亿元",
    "美联储维持利率不变，鲍威尔表示年内仍可能加息一次",
    "国际油价大幅下跌，布伦特原油期货跌破每桶75美元",
    "该公司发布年度报告，全年实现营业收入128亿元，同比增长3.2%",
    "房地产开发投资同比下降9.1%，商品房销售面积继续萎缩",
    "公司中标国家电网特高压项目，中标金额约占上年营业收入的15%",
    "因涉嫌信息披露违法违规，公司实际控制人被采取留置措施",
    "半导体设备国产化进程加快，多家券商上调行业评级至增持",
    "人民币兑美元中间价报7.1250，较上一交易日调贬56个基点",
    "公司发行的债券未能按期兑付本息，构成实质性违约",
    "三大指数小幅收涨，创业板指涨0.3%，两市超3000只个股上涨",
    "光伏组件价格持续下行，产业链企业盈利承压，部分二线厂商开始减产",
    "公司拟收购某医疗器械企业70%股权，交易完成后将进入高端影像设备领域",
    "统计局公布5月CPI同比上涨0.2%，PPI同比下降4.6%",
    "保险资金加大权益类资产配置，险资年内举牌上市公司已达12次",
    "公司董事长因个人原因辞职，董事会将尽快选举新任董事长",
    "监管层发布新规，进一步规范上市公司股东减持行为，保护中小投资者合法权益",
    "某知名白酒企业宣布出厂价上调约20%，经销商普遍反映终端动销良好",
    "受海外需求疲软影响，公司出口订单同比减少三成，二季度营收下滑明显",
    "基金发行市场回暖，本周新成立基金募集规模合计超过300亿元",
    "公司股票连续三个交易日收盘价格涨幅偏离值累计超过20%，属于股票交易异常波动",
    "锂价持续走低，多家锂矿企业半年报预告净利润同比下降超过七成",
    "银行间市场流动性合理充裕，隔夜Shibor下行8个基点至1.45%",
    "公司与国际知名车企签署长期供货协议，预计未来五年累计销售额超过200亿元",
)


# ================================================================================================ host


def library_versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - a declared dependency
        out["onnxruntime"] = "missing"
    return out


# ================================================================================================ runners
class InferenceBackend:
    """Runs the classifier network: ``backend(inputs) -> logits`` for padded ``{"input_ids",
    "attention_mask"}`` int64 tensors; logits are ``[batch, num_labels]`` float32 on the CPU."""

    #: ``<backend>-<precision>``, e.g. ``onnx-int8``
    name: str = ""

    @property
    def version_suffix(self) -> str:
        return VERSION_SUFFIX[self.name]

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class TorchBackend(InferenceBackend):
    """PyTorch eager on ``device`` (bf16 autocast on CUDA); ``model`` may be dynamic-int8 quantised."""

    def __init__(self, model: torch.nn.Module, device: torch.device, int8: bool = False) -> None:
        self.model = model.eval()
        self.device = device
        self.name = "torch-int8" if int8 else "torch-fp32"

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = self.model(**inputs)
        else:
            logits = self.model(**inputs)
        return logits.float().cpu()


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every ``nn.Linear`` (per-channel weights, activations quantized per batch);
    returns a quantized copy."""
    from torch import nn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notice (the API still works in torch 2.x)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


class OnnxBackend(InferenceBackend):
    """An ONNX Runtime session (CPUExecutionProvider, every graph optimisation) over an exported graph.

    ``threads``: intra-op threads (default: torch's thread count, so both backends use the same cores);
    ``spinning``: let idle pool threads spin-wait (ONNX Runtime's default; off here, because on a shared or
    oversubscribed CPU spinning threads steal the cores the work needs)."""

    def __init__(self, path: str | Path, int8: bool, threads: int | None = None, spinning: bool = False) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = max(1, threads or torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        so.log_severity_level = 3  # errors only: ORT warns about every unused initializer
        self.path = Path(path)
        self.threads = so.intra_op_num_threads
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.name = "onnx-int8" if int8 else "onnx-fp32"

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {"input_ids": inputs["input_ids"].cpu().numpy(), "attention_mask": inputs["attention_mask"].cpu().numpy()}
        return torch.from_numpy(self.session.run(["logits"], feed)[0]).float()


# ================================================================================================ export
class _LogitsGraph(torch.nn.Module):
    """The exported graph: ``(input_ids, attention_mask) -> logits`` (positional, so the ONNX inputs are named
    after them)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints and its notes about optional packages (torchvision)."""
    import io

    noisy = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(noisy, levels, strict=True):
            lg.setLevel(lv)


def export_onnx(model: torch.nn.Module, path: str | Path, pad_id: int = 0) -> Path:
    """Export ``model`` (a fp32 :class:`~classifier.modeling.FinsentClassifier` on the CPU) to ONNX with
    dynamic batch and sequence axes (the ``torch.export``-based exporter, opset :data:`ONNX_OPSET`).
    Written to a temporary file and renamed, so a concurrent reader never sees half a graph."""
    path = Path(path)
    if next(model.parameters()).device.type != "cpu":
        raise ConfigError("the ONNX export needs the model on the CPU: load it with device=cpu")
    graph = _LogitsGraph(model).eval()
    # batch 2 x 8 with one padded row (sizes 0 and 1 would be specialised as constants)
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15, 3], [2, 20, 21, 22, 3, pad_id, pad_id, pad_id]])
    ids = ids.clamp(max=int(model.config.vocab_size) - 1)
    mask = (torch.arange(8)[None, :] < torch.tensor([[8], [5]])).long()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    t0 = time.perf_counter()
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                graph, (ids, mask), str(tmp), input_names=["input_ids", "attention_mask"],
                output_names=["logits"], opset_version=ONNX_OPSET, dynamo=True, external_data=False,
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                verbose=False,
            )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported the classifier graph to %s in %.1fs", path, time.perf_counter() - t0)
    return path


def quantize_onnx_int8(src: str | Path, dst: str | Path) -> Path:
    """ONNX Runtime dynamic int8 quantisation of the MatMuls with constant weights (the Linear layers, like
    ``torch-int8``): per-channel int8 weights, activations quantised per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    t0 = time.perf_counter()
    root = logging.getLogger()
    quiet = _DropRootRecords()
    root.addFilter(quiet)  # the quantizer logs its per-node notes and advice on the root logger
    try:
        quantize_dynamic(str(src), str(tmp), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"])
        tmp.replace(dst)
    finally:
        root.removeFilter(quiet)
        tmp.unlink(missing_ok=True)
    log.info("quantized %s to int8 in %.1fs", dst.name, time.perf_counter() - t0)
    return dst


class _DropRootRecords(logging.Filter):
    """Drops records logged on the root logger itself (``logging.info(...)``), keeps named loggers'."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root"


def onnx_graph(model_dir: str | Path, weights_sha: str, precision: str, model: torch.nn.Module | None,
               pad_id: int = 0) -> Path:
    """The cached ONNX graph of a model directory at ``precision`` (``fp32`` / ``int8``), exported (and
    quantised) on first use into the first writable cache directory. ``model`` (fp32, CPU) is needed only
    when nothing is cached yet."""
    from classifier.modeldir import find_onnx_file, writable_onnx_file

    found = find_onnx_file(model_dir, weights_sha, precision)
    if found is not None:
        log.info("using the cached ONNX graph %s", found)
        return found
    if precision == "int8":
        src = onnx_graph(model_dir, weights_sha, "fp32", model, pad_id)
        return quantize_onnx_int8(src, writable_onnx_file(model_dir, weights_sha, "int8"))
    if model is None:
        raise ModelDirError(f"no ONNX export of {model_dir} is cached: load it with its torch model to export one")
    return export_onnx(model, writable_onnx_file(model_dir, weights_sha, "fp32"), pad_id)


# ================================================================================================ auto
@dataclass
class Measurement:
    """One variant's figures on :data:`SAMPLE_TEXTS` (speeds are the best of the timed rounds)."""

    variant: str
    texts_per_s_batch: float = 0.0
    texts_per_s_single: float = 0.0
    max_abs_diff: float = 0.0
    label_flips: int = 0
    within_tolerance: bool = True
    #: geometric mean of the two speed ratios against the reference variant
    speed_ratio: float = 1.0
    load_s: float = 0.0

    def line(self) -> str:
        return (f"{self.variant}: {self.texts_per_s_batch:.1f} texts/s at batch {AUTO_BATCH}, "
                f"{self.texts_per_s_single:.1f} at batch 1, x{self.speed_ratio:.2f} vs torch-fp32, "
                f"max |dp| {self.max_abs_diff:.4f}, {self.label_flips} label flip(s)"
                + ("" if self.within_tolerance else " -> outside tolerance"))


@dataclass
class AutoDecision:
    """What ``auto`` chose, the figures it chose on, and where they came from."""

    choice: str
    measurements: list[Measurement] = field(default_factory=list)
    key: dict[str, Any] = field(default_factory=dict)
    measured_at: str = ""
    seconds: float = 0.0
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cached")
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AutoDecision:
        return cls(choice=str(data["choice"]), measurements=[Measurement(**m) for m in data["measurements"]],
                   key=dict(data["key"]), measured_at=str(data.get("measured_at", "")),
                   seconds=float(data.get("seconds", 0.0)), cached=True)


def within_tolerance(ref: torch.Tensor, probs: torch.Tensor) -> tuple[bool, float, int]:
    """``(ok, max |Δp|, label flips)`` of ``probs`` against the reference ``ref`` (both ``[n, labels]``).

    The rule: every probability within :data:`AUTO_MAX_ABS_DIFF` of torch fp32, and the same label on every
    text whose fp32 top-two margin is at least :data:`AUTO_LABEL_MARGIN` (below that margin the two labels
    are a coin toss for the reference too)."""
    diff = float((probs - ref).abs().max()) if ref.numel() else 0.0
    top2 = ref.topk(min(2, ref.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, -1] if ref.shape[1] > 1 else torch.ones(len(ref))
    flips = int(((probs.argmax(1) != ref.argmax(1)) & (margin >= AUTO_LABEL_MARGIN)).sum())
    return diff <= AUTO_MAX_ABS_DIFF and flips == 0, diff, flips


def decision_key(weights_sha: str, variants: Sequence[str], threads: int, max_len: int) -> dict[str, Any]:
    """What a cached decision depends on: the weights, the CPU (model and flags), the thread counts (torch's
    and ONNX Runtime's), the library versions, the candidates and the rule."""
    cpu = cpu_info()
    return {"weights": weights_sha, "cpu": cpu["model"], "flags": cpu["flags"],
            "torch_threads": torch.get_num_threads(), "onnx_threads": threads,
            "max_len": max_len, "candidates": list(variants), **library_versions(), "rule": AUTO_RULE_VERSION}


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]


def measure(
    variants: dict[str, InferenceBackend],
    pad: Callable[[Sequence[Sequence[int]]], dict[str, torch.Tensor]],
    seqs: Sequence[Sequence[int]],
    reference: str = "torch-fp32",
    rounds: int = 2,
) -> list[Measurement]:
    """Time every variant on the model inputs ``seqs`` (one batch of all of them, and the first
    :data:`AUTO_SINGLE_TEXTS` one at a time) in interleaved rounds, and compare probabilities with
    ``reference``. Speeds are the best round (least disturbed by other work on the host)."""
    if reference not in variants:
        raise ValueError(f"the reference variant {reference} must be measured")
    batch = pad(seqs)
    singles = [pad([s]) for s in seqs[:AUTO_SINGLE_TEXTS]]
    probs = {name: torch.softmax(run(batch), -1) for name, run in variants.items()}  # also the warm-up
    for run in variants.values():
        run(singles[0])
    best_batch = dict.fromkeys(variants, math.inf)
    best_single = dict.fromkeys(variants, math.inf)
    for _ in range(rounds):
        for name, run in variants.items():
            t0 = time.perf_counter()
            run(batch)
            best_batch[name] = min(best_batch[name], time.perf_counter() - t0)
            t0 = time.perf_counter()
            for s in singles:
                run(s)
            best_single[name] = min(best_single[name], time.perf_counter() - t0)
    out = []
    ref = probs[reference]
    for name in variants:
        ok, diff, flips = within_tolerance(ref, probs[name])
        ratio = math.sqrt((best_batch[reference] / best_batch[name]) * (best_single[reference] / best_single[name]))
        out.append(Measurement(name, len(seqs) / best_batch[name], len(singles) / best_single[name], diff, flips,
                               ok, ratio))
    return out


def choose(measurements: Sequence[Measurement], allowed: Sequence[str]) -> str:
    """The fastest variant of ``allowed`` within tolerance; the first of ``allowed`` (the plain fp32 one)
    unless another is :data:`AUTO_MIN_GAIN` times faster or the first is itself out of tolerance."""
    default = allowed[0]
    by_name = {m.variant: m for m in measurements}
    ok = [m for m in measurements if m.within_tolerance and m.variant in allowed]
    if not ok:
        return default
    best = max(ok, key=lambda m: m.speed_ratio)
    base = by_name.get(default)
    if base is not None and base.within_tolerance and best.speed_ratio < base.speed_ratio * AUTO_MIN_GAIN:
        return default
    return best.variant


def candidates(backend: str, quantize: str, device: torch.device) -> list[str]:
    """The variants ``backend`` × ``quantize`` allow on ``device`` (the first is the plain fp32 default)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend: {backend!r} is not allowed; choose one of {', '.join(BACKENDS)}")
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize: {quantize!r} is not allowed; choose one of {', '.join(QUANTIZE)}")
    if device.type != "cpu":
        if backend == "onnx":
            raise ConfigError(f"backend=onnx runs on the CPU; on {device.type} use backend=torch (bf16 autocast) "
                              "or backend=auto")
        if quantize == "int8":
            raise ConfigError("quantize=int8 is a CPU option: on GPU use bf16 (automatic) with quantize=none "
                              "or quantize=auto")
        return ["torch-fp32"]
    backends = ["torch", "onnx"] if backend == "auto" else [backend]
    precisions = {"none": ["fp32"], "int8": ["int8"], "auto": ["fp32", "int8"]}[quantize]
    return [f"{b}-{p}" for b in backends for p in precisions]


# ================================================================================================ building
def build_backend(variant: str, model_dir: str | Path, model: torch.nn.Module, tokenizer: Any,
                  device: torch.device, threads: int | None = None, weights_sha: str | None = None
                  ) -> InferenceBackend:
    """The runner of one variant (``torch-fp32`` ... ``onnx-int8``) for a loaded model directory; ONNX graphs
    come from the cache or are exported on first use."""
    if variant == "torch-fp32":
        return TorchBackend(model, device)
    if variant == "torch-int8":
        return TorchBackend(quantize_int8(model), device, int8=True)
    if variant not in ("onnx-fp32", "onnx-int8"):
        raise ConfigError(f"unknown inference variant {variant!r}: choose one of {', '.join(VERSION_SUFFIX)}")
    if weights_sha is None:
        weights_sha = _weights_sha(model_dir)
    precision = variant.split("-")[1]
    path = onnx_graph(model_dir, weights_sha, precision, model, pad_id=tokenizer.pad_id)
    return OnnxBackend(path, int8=precision == "int8", threads=threads)


def _weights_sha(model_dir: str | Path) -> str:
    from classifier.modeldir import WEIGHTS_FILE, weights_version

    return weights_version(Path(model_dir) / WEIGHTS_FILE)


def choose_backend(model_dir: str | Path, model: torch.nn.Module, tokenizer: Any, device: torch.device,
                   allowed: Sequence[str], threads: int | None = None) -> tuple[InferenceBackend, AutoDecision]:
    """``auto``: the fastest of ``allowed`` within tolerance of torch fp32 on this host, measured on
    :data:`SAMPLE_TEXTS` or taken from the cached decision for these weights on this kind of host. Logs one
    INFO line per measured variant and one for the choice."""
    from datetime import datetime, timezone

    from classifier.modeldir import find_auto_decision, write_auto_decision

    sha = _weights_sha(model_dir)
    n_threads = max(1, threads or torch.get_num_threads())
    key = decision_key(sha, allowed, n_threads, tokenizer.truncation.max_len)
    digest = key_digest(key)
    cached = find_auto_decision(model_dir, sha, digest)
    if cached is not None and cached.get("key") == key and cached.get("choice") in allowed:
        decision = AutoDecision.from_json(cached)
        log.info("backend auto: %s (cached decision of %s for this model on this kind of host: %s)", decision.choice,
                 decision.measured_at, "; ".join(f"{m.variant} x{m.speed_ratio:.2f}" for m in decision.measurements))
        return build_backend(decision.choice, model_dir, model, tokenizer, device, threads, sha), decision
    t0 = time.perf_counter()
    names = ["torch-fp32", *[v for v in allowed if v != "torch-fp32"]]
    runners: dict[str, InferenceBackend] = {}
    load_s: dict[str, float] = {}
    for name in names:
        t1 = time.perf_counter()
        runners[name] = build_backend(name, model_dir, model, tokenizer, device, threads, sha)
        load_s[name] = time.perf_counter() - t1
    seqs = [tokenizer.truncate(ids) for ids in tokenizer.encode(list(SAMPLE_TEXTS[:AUTO_BATCH]))]
    measurements = measure(runners, tokenizer.pad, seqs)
    for m in measurements:
        m.load_s = round(load_s[m.variant], 2)
        log.info("backend auto: %s%s", m.line(), "" if m.variant in allowed else " (reference only)")
    choice = choose(measurements, allowed)
    decision = AutoDecision(choice, measurements, key, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            round(time.perf_counter() - t0, 2))
    log.info("backend auto: chose %s among %s on %s [%s], %d thread(s) (measured in %.1fs; rule: max |dp| <= %g and "
             "no label flip where the fp32 margin >= %g, then fastest, fp32 unless >= x%g)", choice,
             ", ".join(allowed), key["cpu"], " ".join(key["flags"]) or "no avx2/avx512/amx", n_threads,
             decision.seconds, AUTO_MAX_ABS_DIFF, AUTO_LABEL_MARGIN, AUTO_MIN_GAIN)
    try:
        write_auto_decision(model_dir, sha, digest, decision.to_json())
    except (OSError, ModelDirError) as e:
        log.warning("could not cache the auto decision (%s); the next load measures again", e)
    return runners[choice], decision
