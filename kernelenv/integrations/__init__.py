"""kernelenv in other frameworks' shapes: Gymnasium, TRL, EnvTorch-style factories and
transforms."""
