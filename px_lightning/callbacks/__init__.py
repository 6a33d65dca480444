"""Lightning callbacks: the pruning callback and diagnostics logging."""
