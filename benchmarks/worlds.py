"""Worlds the benchmarks write to a temporary folder."""
from must import configs
from must.world import writer


def eval_split(output_dir: str, scenes: int, size: int | None = None) -> str:
  """Writes a world holding only its eval split (every task labeled), at
  `size` x `size` pixels (the world's default if None); returns its pattern."""
  sizes = {name: 0 for name in writer.WorldConfig().sizes.as_dict()}
  override = {"preview_scenes": 0, "sizes": {**sizes, "eval": scenes}}
  if size:
    override["render"] = {"height": size, "width": size}
  writer.write_world(configs.load(writer.WorldConfig(), params_override=override), output_dir,
                     progress=lambda line: None)
  return f"{output_dir}/eval/*.tfrecord"
