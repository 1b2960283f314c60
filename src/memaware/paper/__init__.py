"""The experiments of the MAS authors' own code, runnable as ``memaware paper ...``."""
