"""``i2s`` command line: thin wrappers over the library.

Each area is a typer sub-app or command in its own module, registered here; commands parse
arguments, call one library function and format the result. No logic lives here. The flows'
commands (``i2s reconstruct``, ``i2s demo``, ...) are added by :mod:`i2score.flows.cli`.
"""

from __future__ import annotations

import typer

from i2score.cli.align import align_cmd
from i2score.cli.bench import bench_app
from i2score.cli.cache import cache_app
from i2score.cli.manifest import manifest_app
from i2score.cli.models import models_app
from i2score.cli.report import report_cmd
from i2score.cli.runs import runs_app
from i2score.cli.train import train_cmd
from i2score.cli.train_encoder import train_encoder_cmd
from i2score.cli.validate import validate_cmd
from i2score.data.redact import install_log_redaction

app = typer.Typer(
    name="i2s",
    help="Batch image embedding and editing on a pretrained StyleGAN2 (Image2StyleGAN++).",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(models_app, name="models")
app.command("validate")(validate_cmd)
app.add_typer(manifest_app, name="manifest")
app.command("align")(align_cmd)
app.command("report")(report_cmd)
app.command("train")(train_cmd)
app.command("train-encoder")(train_encoder_cmd)
app.add_typer(cache_app, name="cache")
app.add_typer(runs_app, name="runs")
app.add_typer(bench_app, name="bench")
# Whatever a command logs (storage retries, Prefect's records) is redacted.
install_log_redaction()

if __name__ == "__main__":
    app()
