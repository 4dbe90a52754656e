"""Distillation: the loss on constructed cases (by hand), the student's layer selection and its forward pass
against the teacher's truncated one, soft-label files, the recipe in one process, and a real Ray run (the
teacher labels the corpus through `finsent label`, the student trains on Ray Train and exports)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from classifier.config import load_config, replace
from classifier.errors import ConfigError, DataError
from classifier.modeldir import load_model_dir, save_model_dir
from classifier.testing import TINY_LEXICON, make_tiny_model_dir
from training.config import FinetuneConfig, resolve_paths
from training.data import IGNORE_INDEX
from training.distill import (
    DistillationLoss,
    DistillConfig,
    DistillRecipe,
    build_student,
    distillation_loss,
    make_student,
    read_soft_labels,
    sample_corpus,
    student_layer_map,
)
from training.engine import Penalties, total_loss
from training.lifecycle import RUN_FILE, WorkerContext, plan_run, write_run_record

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["公司公告利好，股价上涨", "业绩亏损，股价下跌", "董事会召开会议", "大涨之后回购股份", "违约风险暴露，跌停"]


# ------------------------------------------------------------------------------------------------ the loss
LOGITS = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.5], [2.0, 0.0, -1.0]]
LABELS = [1, 2, IGNORE_INDEX]  # row 2 has no gold label
PROBS = [[0.2, 0.5, 0.3], [0.0, 0.0, 0.0], [0.7, 0.2, 0.1]]
HAS_SOFT = [True, False, True]  # row 1 has no teacher probabilities


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def _hand(temperature: float, alpha: float) -> tuple[float, float, float]:
    """(loss, mean CE over gold rows, mean T²·KL over soft rows), computed with plain floats."""
    ce = [-math.log(_softmax(z)[y]) if y != IGNORE_INDEX else 0.0 for z, y in zip(LOGITS, LABELS, strict=True)]
    kl = []
    for z, p, soft in zip(LOGITS, PROBS, HAS_SOFT, strict=True):
        if not soft:
            kl.append(0.0)
            continue
        q = [v ** (1 / temperature) for v in p]
        q = [v / sum(q) for v in q]
        s = _softmax([v / temperature for v in z])
        kl.append(temperature ** 2 * sum(qi * math.log(qi / si) for qi, si in zip(q, s, strict=True) if qi > 0))
    loss = sum((1 - alpha) * c + alpha * k for c, k in zip(ce, kl, strict=True)) / len(LOGITS)
    return loss, (ce[0] + ce[1]) / 2, (kl[0] + kl[2]) / 2


def _tensors() -> tuple[torch.Tensor, ...]:
    """The constructed case (float32, as in training; the hand values are float64: agreement to 2e-5)."""
    return (torch.tensor(LOGITS, requires_grad=True), torch.tensor(LABELS), torch.tensor(PROBS),
            torch.tensor(HAS_SOFT))


@pytest.mark.parametrize(("temperature", "alpha"), [(2.0, 0.5), (1.0, 0.3), (4.0, 0.0), (3.0, 1.0), (1.0, 1.0)])
def test_distillation_loss_equals_the_hand_computed_value(temperature, alpha):
    logits, labels, probs, has_soft = _tensors()
    loss, ce, kl = (float(x.detach()) for x in distillation_loss(logits, labels, probs, has_soft, temperature, alpha))
    want_loss, want_ce, want_kl = _hand(temperature, alpha)
    assert loss == pytest.approx(want_loss, rel=2e-5)
    assert ce == pytest.approx(want_ce, rel=2e-5) and kl == pytest.approx(want_kl, rel=2e-5)


def test_distillation_loss_edge_cases():
    logits, labels, probs, has_soft = _tensors()
    # alpha = 0: the mean of the gold rows' cross-entropy over the batch (rows without a gold label add 0)
    ce_rows = nn.functional.cross_entropy(logits[:2], labels[:2], reduction="none")
    loss, _, _ = distillation_loss(logits, labels, probs, has_soft, 2.0, 0.0)
    assert float(loss) == pytest.approx(float(ce_rows.sum()) / 3, rel=2e-5)
    # T = 1, alpha = 1: plain KL(p || softmax(z)) of the soft rows, no T² scaling
    loss, _, kl = distillation_loss(logits, labels, probs, has_soft, 1.0, 1.0)
    plain = nn.functional.kl_div(torch.log_softmax(logits, -1), probs, reduction="none").sum(-1)
    assert float(loss) == pytest.approx(float(plain[0] + plain[2]) / 3, rel=2e-5)
    assert float(kl) == pytest.approx(float(plain[0] + plain[2]) / 2, rel=2e-5)
    # the teacher's own distribution at any T gives KL 0 (the soft target is p softened like the logits)
    z = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    _, _, kl = distillation_loss(z, torch.tensor([IGNORE_INDEX]), torch.tensor([[0.2, 0.5, 0.3]]),
                                 torch.tensor([True]), 3.0, 1.0)
    assert float(kl) == pytest.approx(0.0, abs=1e-6)


def test_distillation_gradient_is_t_times_student_minus_teacher():
    """d/dz of T²·KL(q || softmax(z/T)) is T·(softmax(z/T) − q): the T² keeps the soft gradients' scale."""
    logits, labels, probs, has_soft = _tensors()
    t = 2.0
    loss, _, _ = distillation_loss(logits, labels, probs, has_soft, t, 1.0)
    loss.backward()
    q = probs[0] ** (1 / t) / (probs[0] ** (1 / t)).sum()
    want = t * (torch.softmax(logits[0].detach() / t, -1) - q) / 3
    assert torch.allclose(logits.grad[0], want, atol=1e-6)
    assert torch.equal(logits.grad[1], torch.zeros(3))  # gold-only row, alpha = 1: no gradient


def test_criterion_reads_the_batch_and_reports_its_parts():
    class Fixed(nn.Module):  # returns the constructed logits whatever the input
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return torch.tensor(LOGITS)

    batch = {"input_ids": torch.zeros(3, 2, dtype=torch.long), "attention_mask": torch.ones(3, 2, dtype=torch.long),
             "labels": torch.tensor(LABELS), "soft": torch.tensor(PROBS), "has_soft": torch.tensor(HAS_SOFT)}
    crit = DistillationLoss(temperature=2.0, alpha=0.5)
    total, task, parts = total_loss(Fixed(), batch, crit, Penalties())
    want_loss, want_ce, want_kl = _hand(2.0, 0.5)
    assert float(total) == float(task) == pytest.approx(want_loss, rel=2e-5)
    assert parts["distill_ce"] == pytest.approx(want_ce, rel=2e-5)
    assert parts["distill_kl"] == pytest.approx(want_kl, rel=2e-5)


# ------------------------------------------------------------------------------------------------ the student
def test_layer_map_rule():
    assert student_layer_map(12, 6) == [0, 2, 4, 6, 8, 10]
    assert student_layer_map(12, 4) == [0, 3, 6, 9]
    assert student_layer_map(12, 3) == [0, 4, 8]
    assert student_layer_map(4, 2) == [0, 2]
    assert student_layer_map(12, 12) == list(range(12))
    for bad in (0, 13):
        with pytest.raises(ConfigError, match="student_layers"):
            student_layer_map(12, bad)


@pytest.fixture(scope="module")
def teacher4(tmp_path_factory) -> Path:
    """A tiny 4-layer finsent model directory."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("teacher4") / "model", seed=3, layers=4)


def _logits(model: nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def test_student_of_all_layers_is_the_teacher(teacher4):
    teacher, tok, _ = load_model_dir(teacher4)
    batch = tok(TEXTS)
    student = make_student(teacher, [0, 1, 2, 3])
    assert torch.equal(_logits(student, batch), _logits(teacher, batch))


def test_student_is_the_teacher_with_the_other_layers_cut_out(teacher4):
    teacher, tok, _ = load_model_dir(teacher4)
    batch = tok(TEXTS)
    student = make_student(teacher, student_layer_map(4, 2))  # teacher layers 0 and 2
    assert student.encoder.config.num_hidden_layers == 2 and len(student.encoder.encoder.layer) == 2
    # the reference: the teacher's own modules, layers 1 and 3 removed (module surgery, no state-dict copy)
    cut = copy.deepcopy(teacher)
    cut.encoder.encoder.layer = nn.ModuleList([cut.encoder.encoder.layer[i] for i in (0, 2)])
    cut.encoder.config.num_hidden_layers = 2
    assert torch.allclose(_logits(student, batch), _logits(cut, batch), atol=1e-6)
    assert not torch.allclose(_logits(student, batch), _logits(teacher, batch), atol=1e-3)  # the cut matters
    # embeddings and head are the teacher's; student layer 1 is teacher layer 2
    assert torch.equal(student.word_embeddings.weight, teacher.word_embeddings.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.encoder.encoder.layer[1].output.dense.weight,
                       teacher.encoder.encoder.layer[2].output.dense.weight)
    with pytest.raises(ConfigError, match="teacher_layers"):
        make_student(teacher, [0, 4])
    with pytest.raises(ConfigError, match="teacher_layers"):
        make_student(teacher, [2, 1])


def test_build_student_keeps_the_tokenizer_and_names_the_teacher(teacher4, synthetic_data, tmp_path):
    from classifier.predict import Predictor

    cfg = resolve_paths(DistillConfig(teacher_model=str(teacher4), student_layers=2, max_len=32,
                                      train_files=[str(synthetic_data["train"])], dev_file=str(synthetic_data["dev"])))
    student, tok, meta = build_student(cfg)
    teacher_tok = load_model_dir(teacher4)[1]
    assert tok.compound_ids == teacher_tok.compound_ids and set(TINY_LEXICON) <= set(tok.compound_words)
    assert tok.truncation.max_len == 32 and meta.name == "finsent-student-2L"
    assert meta.extra["distilled_from"]["layer_map"] == [0, 2] and meta.extra["distilled_from"]["teacher_layers"] == 4
    out = save_model_dir(tmp_path / "student", student, tok, meta)
    p = Predictor.from_dir(out, device="cpu")  # an ordinary finsent model directory
    assert p.model.encoder.config.num_hidden_layers == 2 and p.model_version.startswith("finsent-student-2L@")
    probs = p.predict_proba(TEXTS)
    student.eval()
    with torch.no_grad():
        assert torch.allclose(probs, torch.softmax(student(**tok(TEXTS)), -1), atol=1e-6)


# ------------------------------------------------------------------------------------------------ soft labels
def test_soft_label_files_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": "a", "text": "利好", "p_其他": 0.2, "p_利多": 0.7, "p_利空": 0.1},
            {"id": "b", "text": "", "p_其他": 0.2, "p_利多": 0.7, "p_利空": 0.1},  # no text
            {"id": "c", "text": "下跌", "p_其他": 0.5, "p_利多": 0.5, "p_利空": 0.5},  # sums to 1.5
            {"id": "d", "text": "开会", "p_其他": 0.6, "p_利多": 0.2, "p_利空": 0.2001}]  # within 1e-3: renormalised
    jsonl = tmp_path / "soft.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    labels = ["其他", "利多", "利空"]
    texts, probs, skipped = read_soft_labels(jsonl, labels)
    assert texts == ["利好", "开会"] and skipped == 2
    assert probs[0] == pytest.approx([0.2, 0.7, 0.1]) and sum(probs[1]) == pytest.approx(1.0, abs=1e-12)
    # a `finsent label` output directory: part-* shards in order, other files ignored
    d = tmp_path / "labels"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:1]), d / "part-00000-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:]), d / "part-00000-00000.parquet")
    (d / "_manifest.json").write_text("{}", encoding="utf-8")
    texts, _, skipped = read_soft_labels(d, labels)
    assert texts == ["开会", "利好"] and skipped == 0
    pq.write_table(pa.Table.from_pylist([{"id": "x", "p_其他": 1.0}]), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['text', 'p_利多', 'p_利空'\].*passthrough=\[text\]"):
        read_soft_labels(tmp_path / "bad.parquet", labels)
    with pytest.raises(DataError, match="soft_labels: .* not found"):
        read_soft_labels(tmp_path / "missing", labels)


def test_corpus_sample_is_seeded(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"文档{i}\n" if i % 10 else "\n" for i in range(100)), encoding="utf-8")
    a = sample_corpus([str(corpus)], 20, seed=1)
    assert a == sample_corpus([str(corpus)], 20, seed=1) and a != sample_corpus([str(corpus)], 20, seed=2)
    assert len(a) == 20 and all(d["text"] == f"文档{d['id'].split(':')[1]}" for d in a)  # id = file:line
    assert [d["id"] for d in a] == sorted((d["id"] for d in a), key=lambda s: int(s.split(":")[1]))
    assert len(sample_corpus([str(corpus)], 0, seed=1)) == 90  # blank lines are not documents


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("name", ["distill-6.yaml", "distill-4.yaml"])
def test_packaged_configs_load(name):
    cfg = load_config(DistillConfig, REPO / "training" / "configs" / name)
    n = int(name[8])
    assert cfg.student_layers == n and cfg.student_name == f"finsent-student-{n}L"
    assert cfg.select_metric == "mean_macro_f1" and cfg.ema_decay > 0 and cfg.calibrate and cfg.companion
    assert student_layer_map(12, n) == ([0, 2, 4, 6, 8, 10] if n == 6 else [0, 3, 6, 9])


@pytest.mark.parametrize(("overrides", "needle"), [
    (["distill_alpha=1.5"], "distill_alpha: must be in [0, 1]"),
    (["distill_temperature=0"], "distill_temperature: must be positive"),
    (["student_layers=0"], "student_layers: must be at least 1"),
    (["student_layers=2", "teacher_layers=[0,1,2]"], "teacher_layers: lists 3 layers for student_layers=2"),
    (["student_layers=2", "teacher_layers=[3,1]"], "teacher_layers: [3, 1] must be increasing"),
    (["base_model=x"], "unknown config key(s): base_model"),
])
def test_bad_settings_name_the_field(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(DistillConfig, None, overrides)
    assert needle in str(e.value)


def test_one_lifecycle_plans_every_recipe(tmp_path, teacher4, synthetic_data):
    """New runs get the recipe's name; an exported model is not overwritten; resume refuses changed settings."""
    cfg = resolve_paths(DistillConfig(teacher_model=str(teacher4), student_layers=2, output_dir=str(tmp_path / "o"),
                                      storage_path=str(tmp_path / "ray"), train_files=[str(synthetic_data["train"])],
                                      dev_file=str(synthetic_data["dev"])))
    planned, resumed = plan_run(cfg, DistillRecipe)
    assert not resumed and planned.run_name.startswith("distill-")
    write_run_record(planned, DistillRecipe)
    assert json.loads((tmp_path / "o" / RUN_FILE).read_text())["recipe"] == "distill"
    (tmp_path / "ray" / planned.run_name).mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"resume: student_layers=3 \(the run used 2\)"):
        plan_run(replace(cfg, resume=True, student_layers=3), DistillRecipe)
    again, resumed = plan_run(replace(cfg, resume=True, lr=1e-3), DistillRecipe)  # lr may change
    assert resumed and again.run_name == planned.run_name
    (tmp_path / "o" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="output_dir: .* already holds a model"):
        plan_run(cfg, DistillRecipe)


# ------------------------------------------------------------------------------------------------ the recipe
def _corpus(path: Path, n: int) -> Path:
    from synthetic import make_examples

    path.write_text("".join(f"{text}\n" for _, text in make_examples(n, seed=7)), encoding="utf-8")
    return path


def test_recipe_trains_in_one_process_on_gold_and_soft_labels(teacher4, synthetic_data, tmp_path):
    """The distill worker without Ray: student of the teacher, gold + soft examples, both loss terms active."""
    texts = [t for t in _corpus(tmp_path / "c.txt", 60).read_text(encoding="utf-8").split("\n") if t]
    soft = tmp_path / "soft.jsonl"
    soft.write_text("".join(json.dumps({"text": t, "p_其他": 0.1, "p_利多": 0.6, "p_利空": 0.3}, ensure_ascii=False)
                            + "\n" for t in texts), encoding="utf-8")
    cfg = DistillConfig(
        teacher_model=str(teacher4), student_layers=2, soft_labels=str(soft), train_files=[str(synthetic_data["train"])],
        dev_file=str(synthetic_data["dev"]), max_train_examples=90, max_len=32, batch_size=16, num_workers=1,
        epochs=2, lr=5e-3, ema_decay=0.9, progress=False)
    ctx = WorkerContext()
    recipe = DistillRecipe(cfg, ctx)
    recipe.setup()
    assert len(recipe.train_ds) == 90 + 60 and recipe.train_ds.labels.count(IGNORE_INDEX) == 60
    assert recipe.model.encoder.config.num_hidden_layers == 2
    result = recipe.train()
    assert result == {"epochs_run": 2, "best_epoch": recipe.progress["best_epoch"]}
    assert [r["epoch"] for r in ctx.reports] == [0, 1]
    for r in ctx.reports:
        assert r["train_distill_ce"] > 0 and r["train_distill_kl"] > 0 and "ema_dev_macro_f1" in r
        assert r["train_examples"] >= 144  # gold and corpus examples both trained


# ------------------------------------------------------------------------------------------------ on Ray
def _train_teacher(init: Path, synthetic_data: dict, out: Path) -> Path:
    """The tiny 4-layer model fine-tuned on the synthetic task in this process (FinetuneRecipe, no Ray), so
    its soft labels carry the task."""
    from training.finetune import FinetuneRecipe

    cfg = FinetuneConfig(init_model=str(init), train_files=[str(synthetic_data["train"])],
                         dev_file=str(synthetic_data["dev"]), max_len=32, batch_size=16, num_workers=1, epochs=4,
                         lr=5e-3, warmup_ratio=0.1, seed=0, progress=False)
    recipe = FinetuneRecipe(cfg)
    recipe.setup()
    recipe.train()
    assert recipe.progress["history"][-1]["dev_accuracy"] >= 0.85  # the teacher knows the task
    return save_model_dir(out, recipe.model, recipe.tokenizer, recipe.meta)


@pytest.fixture(scope="module")
def distilled(ray_local, teacher4, synthetic_data, tmp_path_factory) -> dict:
    """A real run: a calibrated tiny 4-layer teacher labels 120 corpus documents through `finsent label` (Ray
    Data), a 2-layer student trains on 2 Ray Train workers (gloo DDP) and is exported."""
    from classifier.data import read_examples
    from classifier.postfit import fit_postprocessing
    from training.distill import run_distill

    try:  # Serve replicas from other test modules would hold the 2 CPUs
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - Serve was not running
        pass
    root = tmp_path_factory.mktemp("distill")
    teacher = _train_teacher(teacher4, synthetic_data, root / "teacher")
    fit_postprocessing(teacher, read_examples(synthetic_data["dev"]).examples, calibrate=True)
    cfg = DistillConfig(
        teacher_model=str(teacher), student_layers=2, corpus_files=[str(_corpus(root / "corpus.txt", 200))],
        max_corpus_docs=120, corpus_seed=3, label_concurrency=1, train_files=[str(synthetic_data["train"])],
        dev_file=str(synthetic_data["dev"]), max_len=32, batch_size=16, epochs=3, lr=5e-3, warmup_ratio=0.1,
        seed=0, distill_temperature=2.0, distill_alpha=0.5, calibrate=True, output_dir=str(root / "student"),
        storage_path=str(root / "ray"), num_workers=2, cpus_per_worker=1, use_gpu=False, max_failures=0,
        log_every=1000, progress=False)
    result = run_distill(cfg)
    return {"cfg": cfg, "teacher": teacher, "result": result, "root": root}


def test_distill_run_exports_a_loadable_student_with_a_report(distilled, synthetic_data):
    from classifier.data import read_examples
    from classifier.metrics import compute_metrics
    from classifier.modeldir import model_version
    from classifier.predict import Predictor

    result, teacher = distilled["result"], distilled["teacher"]
    out, rep = result.model_dir, result.report
    student = Predictor.from_dir(out, device="cpu")
    assert student.model.encoder.config.num_hidden_layers == 2
    assert student.model_version.startswith("finsent-student-2L@") and student.calibration is not None
    for name in ("training_report.json", "metrics.csv", "training_curves.png", "calibration.json", RUN_FILE):
        assert (out / name).is_file(), name
    saved = json.loads((out / "training_report.json").read_text(encoding="utf-8"))
    d = saved["distillation"]
    assert d["soft_examples"] == 120 and d["soft_rows_skipped"] == 0
    assert d["teacher_version"] == model_version(teacher) and d["labelling"]["labelled"] == 120
    assert json.loads((out / "config.json").read_text())["finsent"]["distilled_from"]["layer_map"] == [0, 2]
    # both loss terms trained on 2 workers: 600 gold + 120 corpus examples = 90 length-grouped batches of 8,
    # 45 per worker -> 45 optimizer steps of 16 examples per epoch
    epochs = rep["epochs"]
    assert all(e["train_distill_ce"] > 0 and e["train_distill_kl"] > 0 for e in epochs)
    assert all(e["train_examples"] == 720 for e in epochs)
    assert [e["global_step"] for e in epochs] == [45, 90, 135]
    # learned the task (chance is 1/3) and agrees with its teacher on dev; the exported student reproduces
    # the dev report
    assert rep["dev_metrics"]["accuracy"] >= 0.85
    dev = read_examples(synthetic_data["dev"])
    agree = (student.predict_proba(dev.texts).argmax(-1) == Predictor.from_dir(teacher).predict_proba(
        dev.texts).argmax(-1)).float().mean()
    assert float(agree) >= 0.85
    preds = [student.labels[i] for i in student.predict_proba(dev.texts).argmax(-1).tolist()]
    assert compute_metrics(dev.labels, preds, student.labels)["confusion_matrix"] == \
        rep["dev_metrics"]["confusion_matrix"]


def test_the_soft_labels_are_the_teachers_final_probabilities(distilled):
    from classifier.predict import Predictor
    from training.distill import label_corpus

    cfg = resolve_paths(distilled["cfg"])
    label_dir = Path(distilled["result"].report["config"]["soft_labels"])
    assert label_dir.parent.parent == Path(cfg.storage_path) / "soft-labels"  # the default, keyed by teacher
    assert len((label_dir.parent / "corpus.jsonl").read_text(encoding="utf-8").splitlines()) == 120
    texts, probs, _ = read_soft_labels(label_dir, cfg.labels)
    teacher = Predictor.from_dir(distilled["teacher"], device="cpu")
    assert teacher.calibration is not None  # calibrated: predict_proba is not the raw softmax
    assert torch.allclose(torch.tensor(probs), teacher.predict_proba(texts), atol=1e-5)
    # labelling again (a second student of the same teacher and sample) reuses every shard
    again_dir, summary = label_corpus(cfg)
    assert again_dir == label_dir and summary["rows"] == 0 and summary["shards_skipped"] >= 1
