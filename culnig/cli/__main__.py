"""``python -m culnig.cli``: the same as the ``culnig`` script."""

import sys

from culnig.cli import main

sys.exit(main())
