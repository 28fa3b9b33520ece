import sys

from experiments.nyud2_dir.main import main

if __name__ == "__main__":  # grain worker processes re-import __main__ (--loader-workers)
  sys.exit(main())
