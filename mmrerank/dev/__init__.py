"""Developer tools: demo checkpoints, a multilingual corpus, a server in the background for tests."""
