"""`python -m prorank_edge.train stage1|stage2 --config FILE` (also under `accelerate launch -m`)."""

import sys

import click

from ..commands.train_cmd import train_group
from ..errors import ProrankError


def main() -> int:
    try:
        train_group.main(standalone_mode=False, prog_name="python -m prorank_edge.train")
    except ProrankError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
