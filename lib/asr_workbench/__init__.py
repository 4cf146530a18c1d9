"""ASR Workbench: notebooks over FunASR / ModelScope for inference, fine-tuning and evaluation."""

__version__ = "0.1.0"
