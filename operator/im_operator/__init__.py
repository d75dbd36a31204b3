"""The Courier operator: reconciles IMCluster resources into a running Courier (``python -m im_operator``)."""
