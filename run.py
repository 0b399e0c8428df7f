#!/usr/bin/env python
"""Entry point: `python run.py --dataset mnist --arch lenet5 --strategy magnitude_rewind` (see --help)."""

import sys

from lottery_keras.cli import main

if __name__ == "__main__":
    sys.exit(main())
