"""Server-side library for the mmBERT 2D-Matryoshka reranker: loading, scoring, batching, validation.

Import the submodules you need; the package itself imports nothing heavy, so the tokenizer
process never loads torch.
"""

__version__ = "0.1.0"
