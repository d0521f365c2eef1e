import sys

from pyserving.server.cli import main

sys.exit(main())
