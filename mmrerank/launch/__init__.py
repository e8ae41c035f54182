"""Start and supervise tritonserver on this model repository (no torch)."""
