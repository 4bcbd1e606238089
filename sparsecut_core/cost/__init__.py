"""What a setup costs: parameters and FLOPs, measured and by formula, against token concatenation."""
