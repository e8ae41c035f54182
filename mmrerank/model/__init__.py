"""The reranker process's model: weights, encoder with early exit, heads, attention kernels (imports torch)."""

from mmrerank.model.in_process import Matryoshka2DReranker
from mmrerank.model.reranker import MatryoshkaReranker

__all__ = ["Matryoshka2DReranker", "MatryoshkaReranker"]
