"""loratune: LoRA fine-tuning for text classification, tuned by diagnosis."""

__version__ = "0.1.0"
