"""serlib: a tested reproduction of Tripathi et al. (2019), focal-loss ResNet for speech emotion
recognition.

The pipeline, one module per step::

    corpus tree / manifest --(serlib.corpora)--> selection table
        --(serlib.features)--> feature store --(serlib.training)--> run folder
        --(serlib.results)--> the paper's tables

Every step is also a ``serlib`` command (``serlib --help``).
"""

from serlib.errors import SerlibError
from serlib.labels import PAPER_CLASSES

__version__ = "0.1.0"

__all__ = ["PAPER_CLASSES", "SerlibError", "__version__"]
