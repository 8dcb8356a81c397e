r"""Ships a workdir's encoder into coughjax/encoders (or $COUGHJAX_ENCODERS).

  python -m coughjax.encoders --workdir=runs/transformer_m50_real \
      --name=transformer_m50_real --card=card.md
"""

import pathlib

from absl import app
from absl import flags

from coughjax import cli
from coughjax import encoders


@cli.user_errors
def main(argv):
  cli.quiet_logging()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  card = pathlib.Path(flags.FLAGS.card)
  if not card.is_file():
    raise app.UsageError(f"--card={card}: not found")
  path = encoders.ship(flags.FLAGS.workdir, flags.FLAGS.name, card.read_text(),
                       branch=flags.FLAGS.branch, folder=flags.FLAGS.folder)
  print(f"shipped {flags.FLAGS.name}: {path.with_suffix('.msgpack')}, {path}, "
        f"{path.with_suffix('.md')}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "the workdir whose encoder to ship", required=True)
  flags.DEFINE_string("name", None, "shipped name", required=True)
  flags.DEFINE_string("card", None, "a text/markdown file: the card's own text",
                      required=True)
  flags.DEFINE_integer("branch", 0, "downstream ensembles: which encoder")
  flags.DEFINE_string("folder", None, "where to write (default coughjax/encoders)")
  app.run(main)
