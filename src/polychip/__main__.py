import sys

from polychip.cli import main

sys.exit(main())
