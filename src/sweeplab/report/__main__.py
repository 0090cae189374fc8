"""python -m sweeplab.report: see sweeplab.report for usage."""

from sweeplab.report.cli import main

if __name__ == "__main__":
    main()
