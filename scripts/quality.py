"""Validation loss per training minute, jaxrnn and PyTorch side by side:
python scripts/quality.py --data PATH [--runs jaxrnn:default,torch:lstm-2x256] [--minutes 8].

See `benchmarks.quality` (or --help) and docs/QUALITY.md.
"""

from benchmarks.quality import main

if __name__ == "__main__":
    main()
