"""`sparsecut sweep`: the paper's pattern and fusion ablations as one plan of variants."""
