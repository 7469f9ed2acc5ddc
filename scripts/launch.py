"""`python -m ms_gpt4image` as a script path, for launchers that take a file (msrun)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ms_gpt4image.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
