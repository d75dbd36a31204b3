"""``python -m im_operator``: run the operator against the current kubeconfig or in-cluster account."""

import sys

from im_operator.main import main

sys.exit(main())
