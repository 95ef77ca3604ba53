import sys

from agman.cli import main

sys.exit(main())
