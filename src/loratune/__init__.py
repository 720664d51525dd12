"""loratune: LoRA fine-tuning for text classification, tuned by diagnosis."""

import sys as _sys

from loratune import openmp as _openmp

# How OpenMP threads wait (openmp.py: spin on a quiet machine, sleep beside other jobs). It takes effect only when
# chosen before torch loads its OpenMP runtime (the CLI imports loratune first); `applied` says whether it did.
if not _openmp.CHOICE:
    _openmp.CHOICE.update(_openmp.choose(), applied="torch" not in _sys.modules)

__version__ = "0.1.0"
