import sys

from shelfml.cli import main

sys.exit(main())
