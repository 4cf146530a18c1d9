import sys

from asr_workbench.cli import main

sys.exit(main())
