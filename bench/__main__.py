"""``python -m bench`` (``make bench``): run the benchmarks and print their figures."""

from loguru import logger

from bench import barge_in, reply_delay


def main() -> None:
    """Run every benchmark and print a table for each."""
    logger.remove()
    logger.add(lambda m: None)  # the callers' logs would drown the figures
    print(reply_delay.report(reply_delay.run()), flush=True)
    print()
    print(barge_in.report(barge_in.run()))


if __name__ == "__main__":
    main()
