import sys

from bigearth.cli import main

sys.exit(main())
