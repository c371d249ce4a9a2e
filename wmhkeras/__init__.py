"""wmhkeras: white matter hyperintensity segmentation with the Siamese content loss.

Importing the package is cheap: TensorFlow is imported lazily by the modules that need it
(models, losses, training, segmentation, export), never by configuration, NIfTI I/O or metrics.

The Python API (:mod:`wmhkeras.api`) is reached from here on first use (PEP 562), so ``import wmhkeras``
loads nothing more: ``wmhkeras.segment_image``, ``wmhkeras.load_model``, ``wmhkeras.evaluate_images``.
"""

__version__ = "0.1.0"

#: Package name under which every custom Keras object is registered for serialisation.
KERAS_PACKAGE = "wmhkeras"

#: The names of :mod:`wmhkeras.api` served lazily by :func:`__getattr__`.
API_NAMES = ("segment_image", "load_model", "evaluate_images")

__all__ = ["__version__", "KERAS_PACKAGE", *API_NAMES]


def __getattr__(name: str):
    if name in API_NAMES:
        from wmhkeras import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API_NAMES})
