"""The training room: train or fine-tune a checkpoint in the published layout.

It imports torch; no serving process imports it.
"""
