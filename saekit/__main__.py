import sys

from saekit.cli import main

sys.exit(main())
