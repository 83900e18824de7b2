"""``python -m scaleplan`` runs the ``scaleplan`` command."""

import sys

from scaleplan.cli import main

sys.exit(main())
