"""python -m mta.queue --config DIR: run the queue manager alone, without listeners.

For tests, benchmarks and hosts where the receiving side runs elsewhere; postroom-mta
runs the same service next to its listeners.
"""

from __future__ import annotations

from common.runner import run

from . import make_queue_service


def build(cfg, parent, reactor) -> None:
    make_queue_service(cfg, reactor).setServiceParent(parent)


def main(argv: list[str] | None = None) -> None:
    run("mta", build, argv, description="postroom queue manager (no listeners)")


if __name__ == "__main__":
    main()
