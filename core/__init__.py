"""cryodiscovery.core: the shared model library (data model, readers and writers,
synthetic data, preprocessing, networks, training, scoring). It imports no RELION,
cryoSPARC or Flower adapter code."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cryodiscovery")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
