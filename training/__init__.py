"""finsent training: fine-tuning (and domain pretraining) on Ray Train.

Recipes (``finetune``, ``pretrain``) are runnable with ``python -m training <recipe>``; the components they use
(config, data, optimizer, adversarial training, engine, checkpoints, reporting) are plain modules. Importing
this package imports nothing heavy.
"""
