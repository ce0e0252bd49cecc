"""The model: preprocessing, augmentation, networks, training, the boosted ensemble,
threshold calibration, the scorer and its checksummed model files."""
