"""Pipeline replicas: weak machines that together hold one replica as contiguous layer slices,
with subspace-compressed activations at the stage boundaries (docs/pipeline.md)."""
