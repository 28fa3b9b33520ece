import sys

from experiments.agedb_dir.main import main

if __name__ == "__main__":  # grain worker processes re-import __main__ (--loader-workers)
  sys.exit(main())
