"""How one kernel runs a cell (kernel, outputs) and where kernels come from (pool, ray)."""
