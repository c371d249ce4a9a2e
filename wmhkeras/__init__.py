"""wmhkeras: white matter hyperintensity segmentation with the Siamese content loss.

Importing the package is cheap: TensorFlow is imported lazily by the modules that need it
(models, losses, training, segmentation, export), never by configuration, NIfTI I/O or metrics.
"""

__version__ = "0.1.0"

#: Package name under which every custom Keras object is registered for serialisation.
KERAS_PACKAGE = "wmhkeras"
