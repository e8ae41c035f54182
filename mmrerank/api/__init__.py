"""The rerank API front: Cohere/Jina and TEI rerank routes over the `rerank` ensemble's gRPC endpoint (no torch)."""
