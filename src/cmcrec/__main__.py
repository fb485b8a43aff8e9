import sys

from cmcrec.cli import main

sys.exit(main())
