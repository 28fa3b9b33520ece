"""NYUD2-DIR (paper Tables 1, 2, 4): the Hu et al. depth network, its data and its training."""
