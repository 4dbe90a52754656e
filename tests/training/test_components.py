"""The plain pieces of fine-tuning (no Ray): FGM/PGD, L1, the step, LR groups and schedule, sampling, data,
checkpoints. Value assertions throughout."""

from __future__ import annotations

import copy
import hashlib
from collections import Counter

import pytest
import torch
from torch import nn

from classifier.modeldir import load_model_dir
from classifier.predict import Predictor
from training.adversarial import FGM, PGD
from training.callbacks import select_best
from training.checkpoint import load_checkpoint, read_progress, save_checkpoint
from training.config import FinetuneConfig
from training.data import (
    Collator,
    EncodedDataset,
    LengthGroupedBatchSampler,
    class_weight_vector,
    load_finetune_data,
)
from training.engine import Penalties, StepContext, micro_step, optimizer_step, task_loss, total_loss
from training.finetune import epochs_since_best
from training.optim import build_scheduler, param_groups, warmup_linear

TEXTS = ["公司公告利好，股价上涨", "业绩亏损，股价下跌", "董事会召开会议", "大涨之后回购股份", "违约风险暴露，跌停"]
LABELS = [1, 2, 0, 1, 2]


@pytest.fixture
def tiny(tiny_model_dir):
    model, tok, meta = load_model_dir(tiny_model_dir)  # eval mode: no dropout, so losses are deterministic
    batch = tok(TEXTS)
    batch["labels"] = torch.tensor(LABELS)
    return model, tok, meta, batch


def _loss_with_embeddings(model, batch, weight: torch.Tensor) -> float:
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.word_embeddings.weight.copy_(weight)
    with torch.no_grad():
        return float(task_loss(m, batch, nn.CrossEntropyLoss()))


def test_fgm_loss_is_the_loss_at_embeddings_plus_eps_normalised_gradient(tiny):
    model, _, _, batch = tiny
    crit = nn.CrossEntropyLoss()
    clean = task_loss(model, batch, crit)
    clean.backward()
    emb = model.word_embeddings.weight
    g = emb.grad.clone()
    before = emb.detach().clone()
    eps = 0.5
    expected = _loss_with_embeddings(model, batch, before + eps * g / g.norm())

    # the adversarial pass's own gradient, computed separately on a perturbed copy
    probe = copy.deepcopy(model)
    with torch.no_grad():
        probe.word_embeddings.weight.copy_(before + eps * g / g.norm())
    probe.zero_grad()
    task_loss(probe, batch, crit).backward()
    adv_grad = probe.word_embeddings.weight.grad.clone()

    fgm = FGM(model.word_embeddings, epsilon=eps)
    adv = fgm.step(lambda: task_loss(model, batch, crit))
    assert float(adv) == pytest.approx(expected, abs=1e-6)
    assert float(adv) > float(clean.detach())  # a step up the gradient raises the loss
    assert torch.equal(emb.detach(), before)  # restored exactly
    assert torch.allclose(emb.grad, g + adv_grad, atol=1e-6)  # adversarial gradients add to the clean ones


def test_fgm_without_gradient_does_nothing(tiny):
    model, _, _, batch = tiny
    before = model.word_embeddings.weight.detach().clone()
    calls = []
    assert FGM(model.word_embeddings, 1.0).step(lambda: calls.append(1) or torch.tensor(0.0)) is None
    assert calls == [] and torch.equal(model.word_embeddings.weight, before)


def test_pgd_stays_in_the_epsilon_ball_and_restores(tiny):
    model, _, _, batch = tiny
    crit = nn.CrossEntropyLoss()
    task_loss(model, batch, crit).backward()
    emb = model.word_embeddings.weight
    before = emb.detach().clone()
    clean_head_grad = model.classifier.weight.grad.clone()
    seen = []

    def loss_fn():
        seen.append(float(torch.linalg.vector_norm(emb.detach() - before)))
        return task_loss(model, batch, crit)

    pgd = PGD(model.word_embeddings, model.parameters(), epsilon=0.5, alpha=0.3, steps=3)
    adv = pgd.step(loss_fn)
    assert len(seen) == 3
    assert seen[0] == pytest.approx(0.3, rel=1e-4)  # first step: alpha
    assert seen[1] == pytest.approx(0.5, rel=1e-4) and seen[2] <= 0.5 + 1e-5  # then projected onto the ball
    assert adv is not None and torch.equal(emb.detach(), before)
    assert not torch.allclose(model.classifier.weight.grad, clean_head_grad)  # last adversarial grad added


def test_l1_adds_exactly_l1_times_sum_abs_output_weights(tiny):
    model, _, _, batch = tiny
    crit = nn.CrossEntropyLoss()
    total, task, parts = total_loss(model, batch, crit, Penalties(l1=0.01))
    expected = 0.01 * float(model.classifier.weight.detach().abs().sum())
    assert parts["l1"] == pytest.approx(expected, rel=1e-6)
    assert float(total.detach()) == pytest.approx(float(task.detach()) + expected, abs=1e-6)  # float32: ~1.1 + ~0.014
    total.backward()
    with_l1 = model.classifier.weight.grad.clone()
    model.zero_grad()
    task_loss(model, batch, crit).backward()
    assert torch.allclose(with_l1 - model.classifier.weight.grad, 0.01 * model.classifier.weight.sign(), atol=1e-7)
    total0, task0, parts0 = total_loss(model, batch, crit, Penalties())
    assert float(total0) == float(task0) and parts0 == {}


def test_micro_step_with_fgm_and_optimizer_step_update_weights(tiny):
    model, _, _, batch = tiny
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, total_steps=10, warmup_ratio=0.0)
    ctx = StepContext(model=model, criterion=nn.CrossEntropyLoss(), penalties=Penalties(l1=1e-3),
                      adversary=FGM(model.word_embeddings, 1.0), grad_accum=2)
    head = model.classifier.weight.detach().clone()
    out1 = micro_step(ctx, batch, step=0, sync=False)
    out2 = micro_step(ctx, batch, step=0, sync=True)
    assert {"loss", "task_loss", "l1", "adv_loss"} <= set(out1) and "adv_loss" in out2
    assert out1["loss"] == pytest.approx(out1["task_loss"] + out1["l1"], rel=1e-6)
    norm = optimizer_step(model, opt, sched, max_grad_norm=1.0)
    assert norm > 0 and not torch.equal(model.classifier.weight, head)
    assert all(p.grad is None for p in model.parameters())
    assert sched.get_last_lr()[0] == pytest.approx(0.1 * 9 / 10)


def test_layerwise_lr_decay_groups(tiny):
    model = tiny[0]
    groups = param_groups(model, lr=1.0, weight_decay=0.1, layerwise_decay=0.5, head_lr_scale=3.0)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    lr = {n: by_param[id(p)]["lr"] for n, p in named.items()}
    wd = {n: by_param[id(p)]["weight_decay"] for n, p in named.items()}
    assert lr["encoder.embeddings.word_embeddings.weight"] == pytest.approx(0.25)  # decay^num_layers (2 layers)
    assert lr["encoder.encoder.layer.0.attention.self.query.weight"] == pytest.approx(0.5)
    assert lr["encoder.encoder.layer.1.output.dense.weight"] == pytest.approx(1.0)
    assert lr["classifier.weight"] == pytest.approx(3.0)
    assert wd["encoder.encoder.layer.0.attention.self.query.weight"] == 0.1
    assert wd["encoder.encoder.layer.0.attention.self.query.bias"] == 0.0
    assert wd["encoder.embeddings.LayerNorm.weight"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_warmup_then_linear_decay():
    f = warmup_linear(total_steps=10, warmup_steps=2)
    assert [round(f(s), 4) for s in (0, 1, 2, 6, 10, 12)] == [0.5, 1.0, 1.0, 0.5, 0.0, 0.0]


def test_length_grouped_sampler_splits_ranks_evenly_and_groups_lengths():
    lengths = [(i * 37) % 50 + 3 for i in range(203)]
    s0 = LengthGroupedBatchSampler(lengths, batch_size=8, num_replicas=2, rank=0, seed=1, group_batches=4)
    s1 = LengthGroupedBatchSampler(lengths, batch_size=8, num_replicas=2, rank=1, seed=1, group_batches=4)
    b0, b1 = list(s0), list(s1)
    assert len(b0) == len(b1) == len(s0) == 13  # 26 batches (the last one partial), 13 per rank
    seen = [i for b in b0 + b1 for i in b]
    assert sorted(seen) == list(range(203))  # 26 batches split evenly: nothing dropped, nothing repeated
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in b0) / len(b0)
    assert spread < 20  # random batches of 8 from lengths 3..52 spread ~40
    assert list(s0) == b0  # same epoch, same order
    s0.set_epoch(1)
    assert list(s0) != b0


def test_class_weights():
    w = class_weight_vector([0, 0, 0, 1], 2, "balanced")
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    assert class_weight_vector([0, 0, 0, 1], 2, "sqrt").tolist() == pytest.approx([(4 / 6) ** 0.5, 2 ** 0.5])
    assert class_weight_vector([0, 1], 2, "none") is None
    assert class_weight_vector([0, 1], 2, [1.0, 3.0]).tolist() == [1.0, 3.0]


def test_load_data_mixes_extra_files_and_subsamples(synthetic_data, tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("利多|||额外的利好消息\nbad line\n利空|||额外的亏损\n", encoding="utf-8")
    cfg = FinetuneConfig(train_files=[str(synthetic_data["train"])], extra_train_files=[str(extra)],
                         dev_file=str(synthetic_data["dev"]))
    data = load_finetune_data(cfg)
    assert len(data.train) == 602 and len(data.dev) == 150 and data.skipped_lines == 1
    assert data.sha256[str(extra)] == hashlib.sha256(extra.read_bytes()).hexdigest()
    summary = data.summary(cfg.labels)
    assert summary["train_label_counts"] == {"其他": 200, "利多": 201, "利空": 201}
    small = load_finetune_data(FinetuneConfig(train_files=[str(synthetic_data["train"])], max_train_examples=50,
                                              dev_file=str(synthetic_data["dev"])))
    again = load_finetune_data(FinetuneConfig(train_files=[str(synthetic_data["train"])], max_train_examples=50,
                                              dev_file=str(synthetic_data["dev"])))
    assert len(small.train) == 50 and small.train == again.train


def test_encoded_dataset_and_collator(tiny):
    _, tok, meta, _ = tiny
    from classifier.data import Example

    ds = EncodedDataset.from_examples([Example("利好消息", "利多"), Example("公司今天开会发布公告", "其他")], tok,
                                      __import__("classifier.labels").labels.LabelSet.of(meta.labels))
    batch = Collator(tok)([ds[0], ds[1]])
    assert batch["labels"].tolist() == [1, 0]
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].sum(1).tolist() == ds.lengths
    assert batch["input_ids"][0, 0].item() == tok.cls_id


def test_checkpoint_roundtrip_gives_identical_logits(tiny, tmp_path, tiny_base_dir):
    model, tok, meta, batch = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = build_scheduler(opt, 10, 0.1)
    task_loss(model, batch, nn.CrossEntropyLoss()).backward()
    opt.step()
    sched.step()
    progress = {"epoch": 0, "global_step": 1, "history": [], "best_epoch": None}
    save_checkpoint(tmp_path / "ck", model, tok, meta, opt, sched, None, progress)
    other, _, _ = load_model_dir(tmp_path / "ck" / "model")
    with torch.no_grad():
        other.classifier.weight.add_(1.0)  # make sure loading overwrites
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    sched2 = build_scheduler(opt2, 10, 0.1)
    assert load_checkpoint(tmp_path / "ck", other, opt2, sched2) == progress == read_progress(tmp_path / "ck")
    model.eval()
    other.eval()
    with torch.no_grad():
        want = model(batch["input_ids"], batch["attention_mask"])
        assert torch.equal(other(batch["input_ids"], batch["attention_mask"]), want)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    p = Predictor.from_dir(tmp_path / "ck" / "model", device="cpu")
    assert torch.allclose(p.predict_proba(TEXTS), torch.softmax(want, -1), atol=1e-6)


def test_best_epoch_selection_and_patience():
    h = [{"epoch": 0, "dev_macro_f1": 0.5, "dev_loss": 1.0}, {"epoch": 1, "dev_macro_f1": 0.7, "dev_loss": 0.9},
         {"epoch": 2, "dev_macro_f1": 0.7, "dev_loss": 0.8}, {"epoch": 3, "dev_macro_f1": 0.6, "dev_loss": 0.7}]
    assert select_best(h, "macro_f1")["epoch"] == 1  # earliest of the ties
    assert select_best(h, "loss")["epoch"] == 3
    assert epochs_since_best(h, "macro_f1") == 2
    assert epochs_since_best([], "macro_f1") == 0
    assert Counter(e["epoch"] for e in h) == Counter({0: 1, 1: 1, 2: 1, 3: 1})


def test_init_model_and_forgetting_controls_are_wired(tiny_model_dir, synthetic_data, tmp_path):
    """init_model continues from a finsent model; save_fisher / ewc / l2sp reach training.forgetting."""
    pytest.importorskip("training.forgetting")
    import shutil

    from training.config import resolve_paths
    from training.finetune import build_model, build_penalties, write_fisher

    prev = tmp_path / "prev"
    shutil.copytree(tiny_model_dir, prev)
    cfg = resolve_paths(FinetuneConfig(train_files=[str(synthetic_data["train"])], dev_file=str(synthetic_data["dev"]),
                                       init_model=str(prev), max_len=32, batch_size=8, num_workers=1,
                                       fisher_max_batches=3, save_fisher=True))
    assert cfg.base_model is None
    model, tok, meta = build_model(cfg)
    ref = Predictor.from_dir(prev, device="cpu")
    model.eval()
    with torch.no_grad():  # same weights, compound tokens and head as the model it continues from
        assert torch.allclose(model(**tok(TEXTS)).softmax(-1), ref.predict_proba(TEXTS), atol=1e-6)
    assert meta.extra["init_model"] == str(prev) and tok.truncation.max_len == 32

    fisher_path = write_fisher(cfg, prev)
    assert fisher_path == prev / "fisher.safetensors" and fisher_path.stat().st_size > 0
    elsewhere = write_fisher(cfg, prev, tmp_path / "f2.safetensors")  # e.g. bench/forgetting.py --task1-model
    from training.forgetting import load_fisher

    a, b = load_fisher(fisher_path), load_fisher(elsewhere)
    assert elsewhere == tmp_path / "f2.safetensors" and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a) and "classifier.weight" in a  # the head's Fisher is kept
    cfg2 = FinetuneConfig(**{**cfg.__dict__, "l2sp": 0.1, "ewc": 2.0, "ewc_fisher": str(fisher_path)})
    pen = build_penalties(cfg2, model)
    assert pen.l2sp is not None and pen.ewc is not None
    _, parts = pen(model, step=0)
    assert parts["l2sp"] == 0.0 and parts["ewc"] == 0.0  # anchored at the starting weights
    with torch.no_grad():
        model.encoder.embeddings.LayerNorm.weight.add_(0.5)
    _, parts = pen(model, step=0)
    assert parts["l2sp"] > 0 and parts["ewc"] > 0
