"""Training methods: loss weightings (UW, GradNorm) and gradient combiners (PCGrad)."""
