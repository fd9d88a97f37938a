"""Command-line helpers shared by the scripts: flags, quiet TensorFlow start-up."""
