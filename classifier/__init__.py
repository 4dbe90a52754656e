"""finsent classifier core: labels, text preprocessing, jieba-aware tokenization, the classifier module,
model-directory save/load, prediction, metrics, data readers and config loading.

Shared by ``training/``, ``serving/`` and ``stream/`` so that they can never drift apart. Importing this
package is cheap: nothing heavy (torch, transformers, jieba) is imported or built here.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
