"""Federated learning: Flower ClientApp (facility sidecar), ServerApp and model registry."""
