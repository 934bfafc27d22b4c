import sys

from emfence.run.cli import main

raise SystemExit(main(sys.argv[1:]))
