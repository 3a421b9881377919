"""Recipes: whole runs made of ``dm-lightning`` steps (the two-stage pipeline, ablation
sweeps, the CPU demo)."""
