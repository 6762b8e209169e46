"""`ray job submit --working-dir . -- python jobs/tune.py --dataset DIR [options]`

The uploaded working directory is this repository; its package is put on the path, so the job
runs the code that was submitted even where handray is not installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
