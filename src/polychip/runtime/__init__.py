"""The only layer that imports torch: executes a Plan with torch.distributed."""
