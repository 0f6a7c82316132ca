"""Writes the procedural world (the embedded default data set).

  python -m must.world.generate --output_dir out/world \
      [--config_file configs/world/default.yaml] [--params_override sizes.corpus=100]

See `must.world.writer` for what is written where.
"""
import json

from absl import flags

from must import cli
from must import configs
from must.world import writer

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write the world.", required=True)
_CONFIG_FILE = flags.DEFINE_string("config_file", None, "YAML WorldConfig (strict keys).")
_PARAMS_OVERRIDE = flags.DEFINE_string(
    "params_override", None, "Overrides applied after the file, e.g. 'seed=3,sizes.eval=100'.")


def main(argv):
  del argv
  config = configs.load(writer.WorldConfig(), _CONFIG_FILE.value, _PARAMS_OVERRIDE.value)
  metadata = writer.write_world(config, _OUTPUT_DIR.value)
  counts = {name: split["count"] for name, split in metadata["splits"].items()}
  print(json.dumps({"output_dir": _OUTPUT_DIR.value, "counts": counts,
                    "scenes_per_second": metadata["scenes_per_second"]}, indent=2))


def run_cli():
  cli.run_absl(main)


if __name__ == "__main__":
  run_cli()
