"""The ``wmhkeras`` command line (installed as the package ``wmhkeras.cli``)."""
