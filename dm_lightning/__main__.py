import sys

from dm_lightning.cli import main

sys.exit(main())
