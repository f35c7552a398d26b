"""Command-line tools: parity check against the original implementation, checkpoint conversion."""
