"""wtal: weakly-supervised temporal action localization.

Layers (data flows one way): ``data`` -> ``models`` -> ``localize`` -> ``pseudo`` -> ``engine``;
``evaluation`` and ``viz`` consume ``data`` and detections; ``cli`` only parses and calls.
"""

from wtal.errors import WtalInputError

__all__ = ["WtalInputError", "__version__"]
__version__ = "0.1.0"
