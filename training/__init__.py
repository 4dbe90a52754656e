"""finsent training on Ray Train: fine-tuning, domain pretraining and distillation.

Recipes (``finetune``, ``pretrain``, ``distill``) run with ``python -m training <recipe>`` (or ``finsent
<recipe>``) through one lifecycle (:mod:`training.lifecycle`); the components they use (config, data,
optimizer, adversarial training, engine, checkpoints, reporting) are plain modules. Importing this package
imports nothing heavy.
"""
