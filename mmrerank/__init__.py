"""Server-side library for the mmBERT 2D-Matryoshka reranker: loading, scoring, batching, validation."""

from mmrerank.checkpoint import CheckpointError, MatryoshkaSpec, load_checkpoint
from mmrerank.model import MatryoshkaReranker

__all__ = ["CheckpointError", "MatryoshkaReranker", "MatryoshkaSpec", "load_checkpoint"]
