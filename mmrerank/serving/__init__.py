"""What the Triton models run: the request contract, pair tokenizer, both steps, planner, settings, metrics.

Only `reranker_step` imports torch (through `mmrerank.model`); the tokenizer process never does.
"""
