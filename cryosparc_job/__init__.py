"""cryoSPARC custom job: automated 2D class selection through cryosparc-tools."""
