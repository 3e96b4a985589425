"""`python -m target_pinterest_audiences.emulator`: run the emulator as a program."""

import sys

from target_pinterest_audiences.emulator.cli import main

sys.exit(main())
