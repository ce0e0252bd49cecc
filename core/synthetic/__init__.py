"""Synthetic RELION/cryoSPARC Class2D jobs: realistic good and junk class averages with ground truth."""
