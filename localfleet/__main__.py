import sys

from localfleet.cli import main

sys.exit(main())
