"""Training helpers: step-exact backup and resume."""
