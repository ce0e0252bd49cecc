"""Readers and writers of class-average files: MRC stacks, STAR tables, RELION and cryoSPARC
2D classification jobs, one reader for any format, and the harvest of labelled past
selections."""
