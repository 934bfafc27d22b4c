"""``python -m console``: the console as a process of its own (see console.service)."""

import sys

from console.service import main

sys.exit(main())
