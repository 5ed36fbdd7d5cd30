"""``python -m bench`` (``make bench``): run the benchmarks, print their figures, write docs/benchmarks.md."""

import sys

from loguru import logger

from bench import barge_in, density, reply_delay


def main() -> None:
    """Run every benchmark, print a table for each, and write ``docs/benchmarks.md``."""
    logger.remove()
    logger.add(sys.stderr, level="ERROR")  # the callers' logs would drown the figures (and cost CPU)
    sections = [reply_delay.report(reply_delay.run())]
    print(sections[-1], flush=True)
    print()
    sections.append(barge_in.report(barge_in.run()))
    print(sections[-1], flush=True)
    print()
    results, leaks = density.run()
    print(density.report(results, leaks), flush=True)
    print(f"\nwritten: {density.write_docs(results, leaks, sections)}")


if __name__ == "__main__":
    main()
