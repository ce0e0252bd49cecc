"""RELION External job: automated 2D class selection with the outputs of RELION Select."""
