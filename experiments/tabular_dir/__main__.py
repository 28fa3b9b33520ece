import sys

from experiments.tabular_dir.main import main

sys.exit(main())
